"""compile=True on bench_engine.py's MLP with the backend's tanh and with inductor's decomposed one.

Each setting runs in its own process (``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH`` is read when
inductor generates code), alternated ``--rounds`` times; per batch the minimum of 21 solves
after 3 warm-ups, under ``torch.no_grad()``, one thread.

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_tanh.py``.

``--fit`` derives the coefficients of the whole-solve backend's rational tanh
(``neuralode._whole_tanh.tanh_rational``): P of degree 6 and Q of degree 3 (constant
term 1) in ``s = x^2`` with ``tanh(x) / x ~ P(s) / Q(s)`` on [0, 9], by Lawson's iteration
(least squares of the linearised relative error, reweighted by the error until the largest
one stops falling), and prints them with their largest relative error and their float32
error in ulp over every 7th float32 in [0, 20].

``--ulps`` checks the rational form over every float32 in [0, 20] (it is odd: -x gives the
negated value), evaluated eagerly (separate multiplies and adds) and compiled by the whole-solve
backend (fused multiply-adds): its largest error in ulp against float64 tanh, the mean, and
its largest value (at most 1: the form is not clamped to 1); and, for the form without its
clamp of x, its first value above 1 and the smallest float32 above 7.9 where it is exactly 1
in both evaluations (``RATIONAL_CLAMP``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from neuralode._cli_types import positive_int

BATCHES = (1, 16, 256, 1024)


def child() -> None:
    import torch

    import neuralode as no

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_engine import ATOL, RTOL, mlp

    torch.set_num_threads(1)
    controller = no.PIController(rtol=RTOL, atol=ATOL)
    for batch in BATCHES:
        f, y0, ts = mlp(batch)
        with torch.no_grad():
            for _ in range(3):
                no.solve(f, y0, ts, controller=controller, compile=True)
            best = float("inf")
            for _ in range(21):
                start = time.perf_counter()
                no.solve(f, y0, ts, controller=controller, compile=True)
                best = min(best, time.perf_counter() - start)
        print(batch, best * 1e3)


def fit(degree_p: int = 6, degree_q: int = 3, clamp: float = 9.0) -> tuple:
    """P and Q (lowest power first), the largest relative error of P / Q against
    tanh(x) / x on [0, clamp] (see the module)."""
    import numpy as np

    x = np.concatenate([np.linspace(1e-4, 1, 6000), np.linspace(1, clamp, 12000)])
    s = x * x
    target = np.tanh(x) / x
    scaled = s / s.max()  # (conditioning: powers of a number in [0, 1])
    vp = np.vander(scaled, degree_p + 1, increasing=True)
    vq = np.vander(scaled, degree_q + 1, increasing=True)
    weight, q_values, best = np.full_like(s, 1 / len(s)), np.ones_like(s), None
    for _ in range(300):
        # P - target Q = 0 (Q's constant term 1), divided by target Q: the relative error
        rows = np.hstack([vp, -target[:, None] * vq[:, 1:]]) / (target * q_values)[:, None]
        root = np.sqrt(weight)
        solution = np.linalg.lstsq(rows * root[:, None], root / q_values, rcond=None)[0]
        p, q = solution[: degree_p + 1], np.concatenate([[1.0], solution[degree_p + 1 :]])
        q_values = vq @ q
        error = np.abs((vp @ p) / q_values / target - 1)
        if best is None or error.max() < best[2]:
            best = p.copy(), q.copy(), error.max()
        weight = weight * error / (weight * error).sum()
    p, q, error = best
    return p / s.max() ** np.arange(degree_p + 1), q / s.max() ** np.arange(degree_q + 1), error


def show_fit() -> None:
    import numpy as np
    import torch

    from neuralode import _whole_tanh

    p, q, error = fit()
    print("RATIONAL_P =", tuple(float(c) for c in p[::-1]))
    print("RATIONAL_Q =", tuple(float(c) for c in q[::-1]))
    print(f"largest relative error {error:.2e}")
    x = torch.from_numpy(np.arange(0, 0x41A00000, 7, dtype=np.uint32).view(np.float32).copy())
    exact = torch.tanh(x.double())
    spacing = np.spacing(exact.float().numpy()).astype(np.float64)
    y = _whole_tanh.tanh_rational(x)
    ulps = (y.double() - exact).abs() / torch.from_numpy(spacing).clamp_min(2.0**-149)
    print(f"the backend's: largest error {ulps.max():.2f} ulp, mean {ulps.mean():.3f} ulp")


def ulps_of_every_float32() -> None:
    import numpy as np
    import torch

    from neuralode import _whole_backend as backend
    from neuralode import _whole_tanh

    torch.set_num_threads(1)
    compiled = torch.compile(
        _whole_tanh.tanh_rational, backend=backend.whole_solve_backend, dynamic=False
    )
    forms = {"eager": _whole_tanh.tanh_rational, "compiled": lambda x: compiled(x.reshape(-1, 64))}
    chunk = 1 << 24
    for name, form in forms.items():
        worst, worst_x, total, count, largest = 0.0, 0.0, 0.0, 0, 0.0
        for start in range(0, 0x41A00000, chunk):
            x = torch.from_numpy(np.arange(start, start + chunk, dtype=np.uint32).view(np.float32))
            y = form(x).reshape(-1)
            exact = torch.tanh(x.double())
            spacing = np.spacing(exact.float().numpy()).astype(np.float64)
            ulps = (y.double() - exact).abs() / torch.from_numpy(spacing)
            i = int(ulps.argmax())
            if ulps[i] > worst:
                worst, worst_x = float(ulps[i]), float(x[i])
            total, count = total + float(ulps.sum()), count + len(x)
            largest = max(largest, float(y.max()))
        print(
            f"{name}: largest error {worst:.2f} ulp (at x = {worst_x:.6g}), mean "
            f"{total / count:.3f} ulp, largest value {largest!r}"
        )
    # the form without its clamp of x, on [7.9, 9]
    clamp = _whole_tanh.RATIONAL_CLAMP
    try:
        _whole_tanh.RATIONAL_CLAMP = 1e30
        torch._dynamo.reset()
        low, high = np.float32(7.9).view(np.uint32), np.float32(9.0).view(np.uint32)
        x = torch.from_numpy(
            np.arange(low, high - (high - low) % 64, dtype=np.uint32).view(np.float32)
        )
        eager, fused = _whole_tanh.tanh_rational(x), compiled(x.reshape(-1, 64)).reshape(-1)
    finally:
        _whole_tanh.RATIONAL_CLAMP = clamp
        torch._dynamo.reset()
    for name, y in (("eager", eager), ("compiled", fused)):
        print(f"unclamped {name}: first value above 1 at x = {float(x[y > 1][0]):.6g}")
    one = x[(eager == 1) & (fused == 1)]
    print(f"smallest float32 above 7.9 where both are 1: {float(one[0])!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit", action="store_true", help="derive the rational tanh")
    parser.add_argument("--ulps", action="store_true", help="its error over every float32")
    args = parser.parse_args(argv)
    if args.fit:
        return show_fit()
    if args.ulps:
        return ulps_of_every_float32()
    if args.child:
        return child()
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for decompose in ("0", "1"):
            env = {**os.environ, "TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH": decompose}
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                check=True,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                batch, ms = line.split()
                key = (decompose, int(batch))
                best[key] = min(best.get(key, float("inf")), float(ms))
    print("| MLP batch | compile=True (ms) | with decomposed tanh (ms) |")
    print("|---:|---:|---:|")
    for batch in BATCHES:
        print(f"| {batch} | {best[('0', batch)]:.3f} | {best[('1', batch)]:.3f} |")


if __name__ == "__main__":
    main()
