"""The scripts in ``benchmarks/``: a count out of range (0, a negative number, a bad list)
stops the parse with argparse's one-line error, before anything is timed or imported."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# (script, argv, the error's text): each script's count options, one bad value each
BAD_COUNTS = [
    ("bench_cnf_rnode", ["--iters", "0"], "--iters: must be a positive integer, got 0"),
    ("bench_cnf_rnode", ["--batch", "-1"], "--batch: must be a positive integer, got -1"),
    ("bench_cnf_rnode", ["--tol", "0"], "--tol: must be a positive number, got 0"),
    ("bench_cde", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_checkpointed_rows", ["--rounds", "0"], "--rounds: must be a positive integer, got 0"),
    ("bench_checkpointed_rows", ["--batch", "-1"], "--batch: must be a positive integer, got -1"),
    ("bench_core", ["--threads", "0"], "--threads: must be a positive integer, got 0"),
    ("bench_dense", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_dde", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_eager_base", ["base", "--repeats", "0"], "--repeats: must be a positive integer"),
    ("bench_engine", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_engine", ["--batches", "1,0"], "--batches: must be comma-separated positive"),
    ("bench_gpu", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_gradients", ["--threads", "0"], "--threads: must be a positive integer, got 0"),
    ("bench_gradients", ["--steps", "10", "0"], "--steps: must be a positive integer, got 0"),
    ("bench_gradients", ["--memory-case", "backsolve", "0"], "STEPS: must be a positive integer"),
    ("bench_linear", ["--rounds", "0"], "--rounds: must be a positive integer, got 0"),
    ("bench_linear", ["--rows", "256,-1"], "--rows: must be comma-separated positive integers"),
    ("bench_pde", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_regularisers", ["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    ("bench_regularisers", ["--batch", "0"], "--batch: must be a positive integer, got 0"),
    ("bench_regularisers", ["--seed", "-1"], "--seed: must be an integer in [0, 2**32 - 1]"),
    ("bench_regularisers", ["--steer", "1"], "--steer: must be a number in [0, 1), got 1"),
    ("bench_sde", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_sde_compile", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_sde_per_sample", ["--batch", "0"], "--batch: must be a positive integer, got 0"),
    ("bench_steps_diffrax", ["--rows", "0"], "--rows: must be a positive integer, got 0"),
    ("bench_stiff", ["--max-steps", "0"], "--max-steps: must be a positive integer, got 0"),
    ("bench_stiff", ["--diffrax-python", "/nonexistent/python"], "cannot be run"),
    ("bench_tanh", ["--rounds", "-2"], "--rounds: must be a positive integer, got -2"),
    ("bench_whole_calls", ["--batches", "0"], "--batches: must be comma-separated positive"),
    ("bench_whole_graph", ["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    ("bench_whole_graph", ["--batches", "1,x"], "--batches: must be comma-separated positive"),
    ("hypersolver_odenet", ["--fit-steps", "0"], "--fit-steps: must be a positive integer, got 0"),
    ("hypersolver_odenet", ["--hyper-steps", "1", "0"], "--hyper-steps: must be a positive"),
]


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    """``benchmarks/NAME.py`` as a module (its ``__main__`` block does not run); a script
    whose reference library is not installed is skipped."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        pytest.skip(f"{name} needs {error.name}")
    return module


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    BAD_COUNTS,
    ids=[f"{n}{next(o for o in a if o[:2] == '--')}" for n, a, _ in BAD_COUNTS],
)
def test_a_bad_count_stops_the_parse_with_a_one_line_error(
    name: str, argv: list[str], message: str, monkeypatch, capsys
) -> None:
    script = _load(name, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_script_with_options_is_checked() -> None:
    with_options = {
        path.stem
        for path in BENCHMARKS.glob("*.py")
        if "ArgumentParser" in path.read_text() or "import main" in path.read_text()
    }
    assert with_options == {name for name, _, _ in BAD_COUNTS}


def test_hypersolver_odenet_small_run_writes_its_table_and_plot(monkeypatch, tmp_path) -> None:
    # trains a tiny ODE-Net, fits HyperEuler at 1, 2 and 4 steps, and measures every solver
    pytest.importorskip("matplotlib")
    script = _load("hypersolver_odenet", monkeypatch)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (leave pytest's as it is)
    script.main(["--small", "--out", str(tmp_path)])
    assert (tmp_path / "train" / "checkpoint.pt").is_file()
    assert (tmp_path / "accuracy_vs_nfe.png").stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["steps"]): r for r in results["rows"]}
    expected = {("dopri5", None)} | {("hyper_euler", n) for n in (1, 2, 4)}
    expected |= {(m, n) for m in ("euler", "midpoint", "rk4") for n in (1, 2, 4, 8)}
    assert set(rows) == expected
    stages = {"euler": 1, "midpoint": 2, "rk4": 4, "hyper_euler": 1}
    for (method, steps), row in rows.items():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1
        if steps is not None:  # a fixed grid: the stages times the steps, one g call a step
            assert row["nfe"] == stages[method] * steps
            assert row["correction_calls"] == (steps if method == "hyper_euler" else 0)
    assert rows[("dopri5", None)]["agreement"] == 1
    # more steps of rk4 converge to the trained (dopri5) model's predictions
    assert rows[("rk4", 8)]["agreement"] >= 0.95
    table = (tmp_path / "results.md").read_text()
    assert "| HyperEuler | 4 | 4 | 4 |" in table and "| dopri5 | adaptive |" in table
    # a second run loads the trained checkpoint instead of training again
    stamp = (tmp_path / "train" / "checkpoint.pt").stat().st_mtime_ns
    script.main(["--small", "--out", str(tmp_path), "--hyper-steps", "1", "--base-steps", "1"])
    assert (tmp_path / "train" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_every_test_that_needs_cuda_is_marked_so_the_gpu_session_runs_it() -> None:
    """``gpu_session.sh`` runs ``pytest -m cuda``: a test that skips itself without CUDA by
    another means (``skipif(not torch.cuda.is_available())``, a device list built from it)
    would never run there."""
    session = (BENCHMARKS / "gpu_session.sh").read_text()
    assert "-m cuda" in session
    unmarked = [
        f"{path.name}:{number}"
        for path in sorted(BENCHMARKS.parent.joinpath("tests").glob("test_*.py"))
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "not torch.cuda.is_available()" in line or "if torch.cuda.is_available() else" in line
    ]
    assert not unmarked, f"mark these tests @pytest.mark.cuda instead: {unmarked}"
