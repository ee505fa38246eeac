"""The per-call cost of a warm ``no.solve(..., compile=True)`` on ``bench_engine.py``'s MLP
(2-64-64-2 tanh, float32, seed 0, t in [0, 1], dopri5 rtol 1e-6 atol 1e-8) under
``torch.no_grad()``, one thread.

Per batch (``--batches``, default ``1,16``): the minimum over 7 rounds of the mean of 200
warm calls (us), the first call (compilation, s) and the steps, printed as JSON. With
``--as-diffrax`` the controller takes diffrax's steps (``PIController(first_step=0.01,
shrink_after_accept=False)``: 4 at batch 1 and 16, as diffrax). With ``--parts`` (at the
first of ``--batches``): thread time per call of the whole solve, of the compiled graph's
call (``_compile.Direct``'s guard check, AOTAutograd's and inductor's wrappers, the C++
loop), of its guard check alone (``guard_manager.check`` on the call's inputs), of
``integrate_whole`` around the graph (the plan, the output times, the one read after the
graph) and of ``solve`` around ``integrate_whole`` (a warm call's key and the checks of its
values, ``_warm``; the output check, the ``Solution``). Compare two versions by running it
with each one's ``src`` first on ``PYTHONPATH``, alternately (the breakdown needs
``_whole_plan``). Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 env
OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_whole_calls.py [--parts]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import ATOL, RTOL, mlp  # noqa: E402

import neuralode as no  # noqa: E402
from neuralode._cli_types import widths  # noqa: E402


def calls(batches: list[int], as_diffrax: bool = False) -> dict[int, list[float]]:
    out = {}
    for batch in batches:
        f, y0, ts = mlp(batch)
        if as_diffrax:  # diffrax's steps (BENCHMARKS.md, "Steps against diffrax")
            controller = no.PIController(
                rtol=RTOL, atol=ATOL, first_step=0.01, shrink_after_accept=False
            )
        else:
            controller = no.PIController(rtol=RTOL, atol=ATOL)
        with torch.no_grad():
            start = time.perf_counter()
            steps = no.solve(f, y0, ts, controller=controller, compile=True).stats.n_steps
            first = time.perf_counter() - start
            for _ in range(100):
                no.solve(f, y0, ts, controller=controller, compile=True)
            best = float("inf")
            for _ in range(7):
                start = time.perf_counter_ns()
                for _ in range(200):
                    no.solve(f, y0, ts, controller=controller, compile=True)
                best = min(best, (time.perf_counter_ns() - start) / 200 / 1e3)
        out[batch] = [round(best, 1), round(first, 1), steps]
    return out


def parts(batch: int = 1, n: int = 3000) -> str:
    from neuralode import _whole_solve

    f, y0, ts = mlp(batch)
    controller = no.PIController(rtol=RTOL, atol=ATOL)
    clock = time.thread_time_ns
    spent = {"integrate_whole": 0, "graph": 0}
    inputs: dict = {}
    direct: dict = {}
    integrate_whole, planned = _whole_solve.integrate_whole, _whole_solve.planned

    def timed_integrate(*args):
        start = clock()
        result = integrate_whole(*args)
        spent["integrate_whole"] += clock() - start
        return result

    def timed_planned(*args):
        plan, co, run = planned(*args)
        direct["run"] = run  # (the plan's ``_compile.Direct``)

        def timed_run(plan, y, times):
            inputs.update(plan=plan, y0=y, ts=times)
            start = clock()
            result = run(plan, y, times)
            spent["graph"] += clock() - start
            return result

        return plan, co, timed_run

    _whole_solve.integrate_whole, _whole_solve.planned = timed_integrate, timed_planned
    with torch.no_grad():
        for _ in range(100):
            no.solve(f, y0, ts, controller=controller, compile=True)
        spent.update(integrate_whole=0, graph=0)
        start = clock()
        for _ in range(n):
            no.solve(f, y0, ts, controller=controller, compile=True)
        total = (clock() - start) / n / 1e3
        # (inside no_grad: the guards check the grad mode)
        code = direct["run"].code
        guards = torch._dynamo.eval_frame._debug_get_cache_entry_list(code)[0].guard_manager
        assert guards.check(inputs)
        start = time.perf_counter_ns()
        for _ in range(20000):
            guards.check(inputs)
        check = (time.perf_counter_ns() - start) / 20000 / 1e3
    whole, graph = spent["integrate_whole"] / n / 1e3, spent["graph"] / n / 1e3
    return (
        f"solve {total:.1f} us: graph call {graph:.1f} (guard check {check:.1f}), "
        f"integrate_whole around it {whole - graph:.1f}, solve around integrate_whole "
        f"{total - whole:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--batches", type=widths, default="1,16", help="comma-separated batch sizes"
    )
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--as-diffrax", action="store_true", help="diffrax's step rule")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.parts:
        print(parts(int(args.batches.split(",")[0])))
    else:
        print(json.dumps(calls([int(b) for b in args.batches.split(",")], args.as_diffrax)))


if __name__ == "__main__":
    main()
