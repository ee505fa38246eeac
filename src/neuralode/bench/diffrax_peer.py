"""neuralode against diffrax (JAX): the same weights, problems and tolerances.

diffrax runs in its own process (``diffrax_worker.py``) under an interpreter that has jax and
diffrax, on the cores this process runs on (the child inherits the CPU affinity, so a bench
started under ``taskset -c 1`` keeps both on core 1) with one-threaded XLA
(``XLA_FLAGS``), everything jitted and the compile time reported apart. jax and diffrax are
never imported here, and neither is a dependency of neuralode: the interpreter is
``--diffrax-python``, else ``$NEURALODE_DIFFRAX_PYTHON``, else this one if it has them;
without one the section says so and nothing runs.

Problems (dopri5, rtol 1e-6, atol 1e-8, outputs at t0 and t1; diffrax with
``PIDController`` and ``dt0=None``, its times in the state's dtype as neuralode's ts are):

- the MLP 2-64-64-2 tanh of ``core`` (float32, t in [0, 1]) at each batch size, forward;
- Van der Pol with mu in [1, 25] across batch 256 (float64, t in [0, 10]) as one system, and
  per sample (neuralode ``per_sample=True``, diffrax ``jax.vmap(diffeqsolve)``);
- forward + backward of ``sum(y(t1))`` with respect to the MLP's weights at batch 16:
  neuralode ``Backsolve()`` (seminorm) against diffrax's ``BacksolveAdjoint`` with
  ``adjoint_rms_seminorm``, and neuralode ``Direct()`` against diffrax's default
  ``RecursiveCheckpointAdjoint`` (both differentiate the discrete solve).

neuralode runs eagerly and compiled (``compile=True`` where ``solve`` has it, else
``compile_step=True``), the compile cache reset before each case; a compiled row's compile
time is its first call (inductor's on-disk cache, when warm, shortens it).

On a GPU (``device="cuda"``, ``neuralode bench --parts diffrax --device cuda``) both run
there: jax on the GPU (``JAX_PLATFORMS=cuda``, without preallocating its memory, so that
torch has the rest), neuralode's tensors on the same device, its timed blocks ending with
``torch.cuda.synchronize()`` as diffrax's end with ``block_until_ready``, and one more
neuralode row: each step attempt replayed as a CUDA graph (``compile="cuda_graph"``; for
the gradient only Backsolve, whose forward solve records no graph).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

import neuralode

from . import core, per_sample
from .diffrax_worker import block_size, time_block

ENV_VAR = "NEURALODE_DIFFRAX_PYTHON"
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WORKER = Path(__file__).with_name("diffrax_worker.py")
GRAD_BATCH, VDP_BATCH = 16, 256
MAX_STEPS = 100_000


def find_python(given: str | None = None) -> tuple[str | None, str]:
    """The interpreter that runs diffrax, and how it was found (or why there is none).

    Arguments:
        given: ``--diffrax-python``; ``None`` falls back to ``$NEURALODE_DIFFRAX_PYTHON`` and
            then to this interpreter if it has jax and diffrax.

    Returns:
        ``(path, versions)`` where ``versions`` names jax's and diffrax's; ``(None, note)``
        when no interpreter was named and this one lacks them.

    Raises:
        ValueError: a named interpreter does not exist or cannot import jax and diffrax.
    """
    for source, path in (("--diffrax-python", given), (ENV_VAR, os.environ.get(ENV_VAR))):
        if path:
            return path, check_python(path, source)
    if all(importlib.util.find_spec(name) for name in ("jax", "diffrax")):
        return sys.executable, check_python(sys.executable, "this interpreter")
    return None, (
        "diffrax was not run: no interpreter with jax and diffrax (this one lacks them). "
        f"Name one with --diffrax-python PATH or {ENV_VAR}=PATH, e.g. after "
        "`python3 -m venv /opt/venv-jax && /opt/venv-jax/bin/pip install jax diffrax`."
    )


def check_python(path: str, source: str, modules: tuple[str, ...] = ("jax", "diffrax")) -> str:
    """Checks that the interpreter ``path`` runs and imports ``modules``.

    Arguments:
        path: the interpreter.
        source: where it was named (an option such as ``--diffrax-python``), for the message.
        modules: the modules it must import.

    Returns:
        Their versions, as "jax 0.4.30, diffrax 0.7.2".

    Raises:
        ValueError: ``path`` cannot be run, or cannot import one of ``modules`` (the message
            names the pip command that installs them there).
    """
    names = ", ".join(modules)
    versions = ", ".join(f"{m} {{{m}.__version__}}" for m in modules)
    code = f"import {names}; print(f'{versions}')"
    try:
        done = subprocess.run([path, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    except OSError as error:
        raise ValueError(f"{source} {path!r} cannot be run: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        wanted = " and ".join(modules)
        raise ValueError(
            f"{source} {path!r} cannot import {wanted} ({last}); install them there "
            f"with `{path} -m pip install {' '.join(modules)}`"
        )
    return done.stdout.strip()


def export_problems(path: Path, mlp_batches: tuple[int, ...]) -> None:
    """Write the MLP's weights, its initial states per batch size and Van der Pol's mu and
    initial state to ``path`` (npz) for the worker."""
    net = core.mlp_net()
    arrays = {}
    for i, layer in enumerate(net[::2]):
        arrays[f"w{i}"] = layer.weight.detach().numpy()
        arrays[f"b{i}"] = layer.bias.detach().numpy()
    for batch in sorted({*mlp_batches, GRAD_BATCH}):
        arrays[f"mlp_y0_{batch}"] = core.mlp_problem(batch).y0.numpy()
    vdp = core.vdp_problem(VDP_BATCH)
    arrays["vdp_mu"] = core.vdp_mu(VDP_BATCH).numpy()
    arrays["vdp_y0"] = vdp.y0.numpy()
    np.savez(path, **arrays)


class Worker:
    """The diffrax process: started with the exported problems, one-threaded XLA and this
    process's CPU affinity; ``ask`` sends one request and returns the answer."""

    def __init__(self, python: str, mlp_batches: tuple[int, ...], device: str = "cpu"):
        spec = {
            "rtol": core.RTOL,
            "atol": core.ATOL,
            "mlp_batches": list(mlp_batches),
            "grad_batch": GRAD_BATCH,
            "vdp_t1": per_sample.T1,
            "max_steps": MAX_STEPS,
        }
        self._tmp = tempfile.TemporaryDirectory()
        problems, spec_path = Path(self._tmp.name) / "p.npz", Path(self._tmp.name) / "s.json"
        export_problems(problems, mlp_batches)
        spec_path.write_text(json.dumps(spec))
        if device == "cpu":
            env = {**os.environ, "XLA_FLAGS": XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
        else:  # jax allocates as it goes: by default it takes 75% of the GPU's memory
            env = {**os.environ, "JAX_PLATFORMS": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        args = [python, "-I", str(WORKER), str(problems), str(spec_path)]
        self._process = subprocess.Popen(
            args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, op: str, **request: object) -> dict:
        process = self._process
        process.stdin.write(json.dumps({"op": op, **request}) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the diffrax worker ended (status {process.wait()}) on {op} {request}; "
                "its error output is above"
            )
        return json.loads(line)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self._process.stdin.close()
            self._process.wait(timeout=60)
        self._tmp.cleanup()


@dataclass
class Row:
    case: str
    library: str
    best: float  # seconds per solve, min over the blocks
    median: float
    compile_seconds: float | None
    steps: str  # accepted / rejected (per sample: max and mean accepted)
    error: float  # forward: max |y(t1) - SciPy|; gradient: max |grad - reference| / max |ref|


def _compile_option(target: Callable) -> dict[str, bool]:
    """``compile=True`` where ``target`` takes it, else ``compile_step=True``."""
    params = inspect.signature(target).parameters
    return {"compile": True} if "compile" in params else {"compile_step": True}


def _steps(stats: neuralode.SolveStats) -> str:
    if stats.sample_steps is not None:
        accepted = stats.sample_accepted.double()
        return f"max {int(accepted.max())}, mean {float(accepted.mean()):.1f}"
    return f"{stats.n_accepted} / {stats.n_rejected}"


def _diffrax_steps(record: dict) -> str:
    accepted, rejected = np.asarray(record["accepted"]), np.asarray(record["rejected"])
    if accepted.ndim:
        return f"max {int(accepted.max())}, mean {float(accepted.mean()):.1f}"
    return f"{int(accepted)} / {int(rejected)}"


class _Field(torch.nn.Module):
    """f(t, y) = net(y) as an ``nn.Module``, whose parameters ``Backsolve`` differentiates."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


VARIANTS = {"neuralode": "eager", "neuralode compiled": "compiled"}
GPU_VARIANTS = {**VARIANTS, "neuralode cuda_graph": "cuda_graph"}


def _ours(
    case: str, variant: str, device: str = "cpu"
) -> Callable[[], tuple[torch.Tensor, str]] | None:
    """A call that solves ``case`` with neuralode on ``device`` and returns (y(t1) or the
    flat gradient, steps); ``variant``: ``"eager"``, ``"compiled"`` or ``"cuda_graph"``
    (``None``: the case has no such run, Direct's gradient under a CUDA graph)."""
    options = {
        "eager": {},
        "compiled": _compile_option(neuralode.solve),
        "cuda_graph": {"compile": "cuda_graph"},
    }[variant]
    if case.startswith("mlp gradient"):
        if variant == "cuda_graph" and not case.endswith("backsolve"):
            return None
        net = _Field(core.mlp_net()).to(device)
        y0 = core.mlp_problem(GRAD_BATCH, device).y0
        ts = torch.tensor([0.0, 1.0], device=device)
        if case.endswith("backsolve"):
            compiled = variant == "compiled"
            kwargs = _compile_option(neuralode.Backsolve) if compiled else {}
            gradient = neuralode.Backsolve(**kwargs)
        else:
            gradient = neuralode.Direct()

        def grad() -> tuple[torch.Tensor, str]:
            sol = neuralode.solve(net, y0, ts, solver=neuralode.Dopri5(),
                                  controller=neuralode.PIController(core.RTOL, core.ATOL),
                                  gradient=gradient, **options)  # fmt: skip
            grads = torch.autograd.grad(sol.ys[-1].sum(), list(net.parameters()))
            return torch.cat([g.reshape(-1) for g in grads]), _steps(sol.stats)

        return grad
    if case == "vdp per sample":
        f, y0 = per_sample.vdp(VDP_BATCH, device)
        ts = torch.tensor([0.0, per_sample.T1], dtype=torch.float64, device=device)
        per_sample_options = {"per_sample": True, **options}
    else:
        problem = _problem(case, device)
        f, y0 = problem.f, problem.y0
        ts = torch.tensor([problem.t0, problem.t1], dtype=y0.dtype, device=device)
        per_sample_options = options

    def forward() -> tuple[torch.Tensor, str]:
        with torch.no_grad():
            sol = neuralode.solve(f, y0, ts, solver=neuralode.Dopri5(),
                                  controller=neuralode.PIController(core.RTOL, core.ATOL),
                                  **per_sample_options)  # fmt: skip
        return sol.ys[-1], _steps(sol.stats)

    return forward


def _problem(case: str, device: str = "cpu") -> core.Problem:
    """The forward case's problem: Van der Pol (one system or per sample: the same ODEs) or
    the MLP at the batch size that ends the case's name."""
    if case.startswith("vdp"):
        return core.vdp_problem(VDP_BATCH, device)
    return core.mlp_problem(int(case.rsplit(" ", 1)[1]), device)


def _synchronized(call: Callable[[], tuple], device: str) -> Callable[[], tuple]:
    """``call``, ending when the device has finished its work (timed as diffrax's blocks,
    which wait for their results)."""
    if device == "cpu":
        return call

    def synchronized() -> tuple:
        result = call()
        torch.cuda.synchronize(device)
        return result

    return synchronized


def _flat(grads: list) -> np.ndarray:
    return np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])


def run(
    python: str,
    mlp_batches: tuple[int, ...] = (1, 16, 256),
    repeats: int = 5,
    block_seconds: float = 0.05,
    compiled: bool = True,
    device: str = "cpu",
) -> tuple[list[Row], dict]:
    """diffrax in its worker, then neuralode eager (and compiled) on the same cases, with one
    torch thread.

    Arguments:
        python: an interpreter with jax and diffrax (``find_python``).
        mlp_batches: the MLP's batch sizes (the gradient cases use batch 16).
        repeats: timed blocks per case and library.
        block_seconds: about how long one block of consecutive solves runs.
        compiled: also time neuralode compiled (on a GPU, also with CUDA graphs).
        device: ``"cpu"``, or a CUDA device (both libraries run there).

    Returns:
        The rows (per case: neuralode, neuralode compiled, diffrax) and the worker's results
        (its versions under ``"versions"``).

    Raises:
        RuntimeError: the worker ended early (its error output goes to this stderr).
        ValueError: ``device`` is not the CPU or an available CUDA device.
    """
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(
            f"the diffrax part runs on 'cpu' or an available CUDA device, got {device!r}"
            + ("" if torch.cuda.is_available() else " (torch sees no CUDA device here)")
        )
    worker = Worker(python, mlp_batches, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as XLA's
    try:
        listing = worker.ask("cases")
        theirs = {"versions": listing["versions"]}
        for case in listing["cases"]:
            theirs[case] = worker.ask("prepare", case=case, block_seconds=block_seconds)
        rows = _interleaved(worker, theirs, repeats, block_seconds, compiled, device)
    finally:
        torch.set_num_threads(threads)
        worker.close()
    return rows, theirs


def _interleaved(
    worker: Worker,
    theirs: dict,
    repeats: int,
    block_seconds: float,
    compiled: bool,
    device: str = "cpu",
) -> list[Row]:
    """Per case: neuralode's runs prepared (the compiled one's first call compiles), then
    ``repeats`` rounds of one timed block per library, the order rotated each round."""
    cases = [k for k in theirs if k != "versions"]
    grad_reference = _flat(theirs["mlp gradient recursive checkpoint"]["grads"])
    rows = []
    for case in cases:
        record = theirs[case]
        is_grad = case.startswith("mlp gradient")
        reference = grad_reference if is_grad else core.reference(_problem(case))

        def error(value: np.ndarray, reference: np.ndarray = reference, is_grad=is_grad) -> float:
            value = np.asarray(value, dtype=np.float64).reshape(reference.shape)
            diff = float(np.abs(value - reference).max())
            return diff / float(np.abs(reference).max()) if is_grad else diff

        label = case.replace("recursive checkpoint", "direct / recursive checkpoint")
        ours = {}
        for name, variant in (VARIANTS if device == "cpu" else GPU_VARIANTS).items():
            if variant != "eager" and not compiled:
                continue
            if variant == "compiled":
                torch._dynamo.reset()  # each case compiles afresh, as a user's first solve
            call = _ours(case, variant, device)
            if call is None:
                continue
            call = _synchronized(call, device)
            start = time.perf_counter()
            value, steps = call()
            first = time.perf_counter() - start
            compile_seconds = first if variant != "eager" else None
            ours[name] = (call, block_size(call, block_seconds), compile_seconds)
            ours[name] += (steps, error(value.detach().cpu().numpy()))
        times: dict[str, list[float]] = {name: [] for name in (*ours, "diffrax")}
        names = list(times)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if name == "diffrax":
                    times[name].append(worker.ask("time", case=case)["seconds"])
                else:
                    times[name].append(time_block(*ours[name][:2]))
        for name, (_, _, compile_seconds, steps, err) in ours.items():
            rows.append(Row(label, name, min(times[name]), statistics.median(times[name]),
                            compile_seconds, steps, err))  # fmt: skip
        value = _flat(record["grads"]) if is_grad else np.asarray(record["y1"])
        rows.append(Row(label, "diffrax", min(times["diffrax"]),
                        statistics.median(times["diffrax"]), record["compile_seconds"],
                        _diffrax_steps(record), error(value)))  # fmt: skip
        print(table([r for r in rows if r.case == label]).split("\n", 2)[2], flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| problem | library | time min (ms) | time median (ms) | time / diffrax's (min) "
        "| compile (s) | steps accepted / rejected | error |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        base = next(x for x in rows if x.case == r.case and x.library == "diffrax")
        compile_seconds = "" if r.compile_seconds is None else f"{r.compile_seconds:.1f}"
        lines.append(
            f"| {r.case} | {r.library} | {r.best * 1e3:.3f} | {r.median * 1e3:.3f} "
            f"| {r.best / base.best:.2f}x | {compile_seconds} | {r.steps} | {r.error:.1e} |"
        )
    return "\n".join(lines)


def section(
    python: str | None,
    note: str,
    mlp_batches: tuple[int, ...],
    repeats: int,
    block_seconds: float = 0.05,
    device: str = "cpu",
) -> str:
    """The bench report's diffrax section: the table, or the note why there is none.

    Arguments:
        python: the interpreter from ``find_python``, or ``None``.
        note: ``find_python``'s versions (or why there is no interpreter).
        mlp_batches: the MLP's batch sizes.
        repeats: timed blocks per case and library.
        block_seconds: about how long one block of consecutive solves runs.
        device: ``"cpu"``, or a CUDA device (``run``).

    Returns:
        Markdown: a title, how it was measured and the table.

    Raises:
        ValueError: ``device`` is not the CPU or an available CUDA device.
    """
    title = "### neuralode vs diffrax: same weights, problems and tolerances, dopri5"
    if python is None:
        return f"{title}\n\n{note}"
    rows, _ = run(python, mlp_batches, repeats, block_seconds, device=device)
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    if device == "cpu":
        where = f"own process on cores {cores} (as this one), XLA_FLAGS={XLA_FLAGS!r}"
    else:
        where = (
            f"own process, both on {torch.cuda.get_device_name(device)} (jax with "
            "JAX_PLATFORMS=cuda, no preallocation; neuralode's blocks end with "
            "torch.cuda.synchronize(); cuda_graph: compile='cuda_graph', whose every solve "
            "captures its step attempt afresh, that capture included in its time)"
        )
    return (
        f"{title}\n\n{note} under {python}, {where}, "
        f"jitted; neuralode with one torch thread. Times per solve from "
        "blocks of consecutive calls (min and median over the blocks), the blocks of the rows "
        "interleaved across the two processes; time / diffrax's: our min over diffrax's min. "
        "Error: forward, max |y(t1) - SciPy DOP853 at rtol 1e-12|; gradient, max |grad - diffrax "
        "RecursiveCheckpointAdjoint's| / max |that|. Per sample: accepted steps of the "
        "slowest sample and their mean.\n\n" + table(rows)
    )
