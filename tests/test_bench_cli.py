"""``neuralode bench``: the work-precision part writes its table and plot (smallest sweep)."""

from __future__ import annotations

import argparse
import sys

import pytest

from neuralode.bench import check_report_arguments
from neuralode.cli import build_parser, main


def test_bench_parser_lists_the_parts():
    args = build_parser().parse_args(["bench"])
    assert args.parts == ["core", "per-sample", "work-precision", "diffrax"] and not args.full
    assert build_parser().parse_args(["bench", "--parts", "compiled"]).parts == ["compiled"]


def test_bench_work_precision_writes_table_and_png(tmp_path):
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("torchode")
    pytest.importorskip("matplotlib")
    argv = ["bench", "--parts", "work-precision", "--repeats", "1", "--rtols", "1e-3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = (tmp_path / "bench.md").read_text()
    for name in ("neuralode | dopri5", "neuralode | tsit5", "neuralode | dopri8", "torchdiffeq"):
        assert name in report
    assert "scipy | DOP853" in report
    assert (tmp_path / "bench-work-precision.png").stat().st_size > 10_000


def test_nfe_at_error_interpolates_log_log():
    from neuralode.bench.per_sample import AccuracyRow, nfe_at_error

    # error = 1e4 / nfe**4 along the sweep: the interpolation is exact in log-log
    rows = [AccuracyRow(1e-6, "a", n, 1e4 / n**4) for n in (100.0, 200.0, 400.0)]
    assert nfe_at_error(rows, "a", 1e4 / 300.0**4) == pytest.approx(300.0, rel=1e-12)
    assert nfe_at_error(rows, "a", 1.0) is None  # outside the sweep: no extrapolation
    assert nfe_at_error(rows, "b", 1e-3) is None


def test_skip_finished_benchmark_saves_the_rows_of_finished_samples():
    pytest.importorskip("torchode")
    from neuralode.bench import per_sample

    rows = {r.library: r for r in per_sample.run_skip((6,), repeats=1)}
    full, skip = rows["neuralode per-sample"], rows["neuralode skip_finished"]
    assert (skip.max_steps, skip.mean_nfe) == (full.max_steps, full.mean_nfe)
    assert skip.rows == pytest.approx(skip.mean_nfe)  # each sample evaluated while it runs
    assert full.rows > skip.rows and full.rows == rows["torchode"].rows
    assert skip.diff < 1e-3 and "| 6 | neuralode skip_finished |" in per_sample.table(
        list(rows.values())
    )


def test_outputs_benchmark_compares_every_output_with_torchode():
    pytest.importorskip("torchode")
    from neuralode.bench import per_sample

    end_only = {r.library: r for r in per_sample.run((4,), repeats=1)}
    rows = {r.library: r for r in per_sample.run_outputs((4,), repeats=1, n_out=11)}
    assert set(rows) == {"neuralode per-sample", "torchode"}
    for name, row in rows.items():  # the outputs do not change the steps
        assert (row.max_steps, row.mean_nfe) == (end_only[name].max_steps, end_only[name].mean_nfe)
    assert 0 < rows["neuralode per-sample"].diff < 1e-4


@pytest.mark.slow
def test_compiled_benchmark_compares_both_libraries_compiled():
    pytest.importorskip("torchode")
    from neuralode.bench import per_sample

    rows = {r.library: r for r in per_sample.run_compiled((4,), repeats=1)}
    assert set(rows) == {
        "neuralode per-sample",
        "neuralode compile_step",
        "torchode",
        "torchode compiled",
    }
    eager, compiled = rows["neuralode per-sample"], rows["neuralode compile_step"]
    assert (compiled.max_steps, compiled.mean_nfe) == (eager.max_steps, eager.mean_nfe)
    assert rows["torchode compiled"].max_steps == rows["torchode"].max_steps
    assert max(r.diff for r in rows.values()) < 1e-6
    table = per_sample.table(list(rows.values()), reference="torchode compiled")
    assert "time / torchode compiled's (min)" in table and "| 4 | torchode compiled | " in table


@pytest.mark.slow
def test_standard_loop_compiled_benchmark_compares_with_eager_and_torchdiffeq():
    pytest.importorskip("torchode")
    from neuralode.bench import core

    rows = {r.library: r for r in core.run_compiled((3,), repeats=1)}
    assert set(rows) == {"neuralode", "neuralode compile_step", "torchdiffeq"}
    assert rows["neuralode compile_step"].nfe == rows["neuralode"].nfe == rows["torchdiffeq"].nfe
    assert rows["neuralode compile_step"].diff < 1e-5 and rows["neuralode"].diff == 0
    assert min(rows["neuralode"].f_eager) > 0 and min(rows["neuralode"].f_compiled) > 0
    assert "| 3 | neuralode compile_step |" in core.compiled_table(list(rows.values()))


def test_sde_benchmark_alternates_the_libraries_and_compares_the_gradients(monkeypatch):
    pytest.importorskip("torchsde")
    from neuralode.bench import sde

    monkeypatch.setattr(sde, "BATCH", 4)  # the comparison, not the speed: a small batch
    # and 16 steps of a dt exact in float32: torchsde's float32 times then land on t1 without
    # a last step of ~1e-6, whose Brownian query costs it seconds of tree building
    monkeypatch.setattr(sde, "DT", 2**-4)
    first = []
    run = sde._run

    def recording(library, *args):
        first.append(library is sde.nsde)
        return run(library, *args)

    monkeypatch.setattr(sde, "_run", recording)
    rows = sde.run(repeats=2, methods=("euler",))
    forward, backward = rows
    # per round (a warm-up and two timed) each library once, the first one alternating
    assert first[0:6:2] == [first[0], not first[0], first[0]]
    assert len(forward.ours) == len(backward.theirs) == 2
    assert forward.grad_diff is None and backward.grad_diff is not None
    assert backward.diff < 1e-4 and backward.grad_diff < 1e-5
    table = sde.table(rows)
    assert "max abs diff of the gradients" in table and "| euler | forward |" in table


def test_cde_benchmark_alternates_the_libraries_on_the_same_model(monkeypatch):
    torchcde = pytest.importorskip("torchcde")
    from neuralode.bench import cde

    monkeypatch.setattr(cde, "CASES", ((4, 6, 3, 8),))  # the comparison, not the speed
    monkeypatch.setattr(cde, "MODES", (cde.MODES[0], cde.MODES[3]))
    libraries = []
    timed = cde.timed

    def recording(run, library, *args):
        libraries.append(library)
        return timed(run, library, *args)

    monkeypatch.setattr(cde, "timed", recording)
    error, forward, adjoint = cde.run(repeats=2)
    # each timed round runs neuralode's cdeint, then torchcde's
    assert libraries == [cde.cde, torchcde] * 4
    assert error.error and 0 < error.ours < 1e-2 and 0 < error.theirs < 1e-2
    assert forward.mode == "forward" and adjoint.mode.endswith("(adjoint, seminorm)")
    assert min(forward.ours, forward.theirs, adjoint.ours, adjoint.theirs) > 0
    table = cde.table([error, forward, adjoint])
    assert "| 4 x 6, hidden 3 | forward |" in table and "z_T's error" in table


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cde_benchmark_runs_the_hermite_rows_with_jump_t(monkeypatch, compiled):
    torchcde = pytest.importorskip("torchcde")
    from neuralode.bench import cde

    shape = (4, 6, 3, 8)  # the rows, not the speed
    monkeypatch.setattr(cde, "CASES", (shape, (5, 6, 3, 8)))
    monkeypatch.setattr(cde, "HERMITE_CASES", (shape,))
    monkeypatch.setattr(cde, "MODES", cde.MODES[:1])
    if not compiled:  # the rows' plumbing without the compiles (a minute and a half)
        modes = [(*mode[:3], {"compile": False} if mode[3] else {}) for mode in cde.HERMITE_MODES]
        monkeypatch.setattr(cde, "HERMITE_MODES", tuple(modes))
    solves = []
    cdeint = torchcde.cdeint

    def recording(X, *args, **kwargs):
        solves.append(kwargs.get("options"))
        return cdeint(X, *args, **kwargs)

    monkeypatch.setattr(torchcde, "cdeint", recording)
    rows = cde.run(repeats=1)
    # each case's natural cubic rows, then the Hermite case's rows, every Hermite mode
    labels = ["4 x 6, hidden 3"] * 2 + ["5 x 6, hidden 3"] * 2 + ["4 x 6, hidden 3, Hermite"] * 6
    assert [row.case for row in rows] == labels
    hermite = rows[4:]
    assert [row.mode for row in hermite] == ["z_T's error"] + [m[0] for m in cde.HERMITE_MODES]
    assert 'forward, neuralode compile="step"' in [row.mode for row in hermite]
    assert hermite[0].error and 0 < hermite[0].ours < 1e-2 and 0 < hermite[0].theirs < 1e-2
    assert all(row.ours > 0 and row.theirs > 0 for row in hermite)
    assert [row.compile_s is not None for row in hermite[1:]] == [False, False, True, True, True]
    # torchcde's Hermite solves end steps at the knots, its natural cubic ones take no options
    assert solves[:4] == [None] * 4
    assert len(solves) == 4 + 1 + len(cde.HERMITE_MODES)
    assert all(set(options) == {"jump_t"} for options in solves[4:])
    table = cde.table(rows)
    assert '| 4 x 6, hidden 3, Hermite | forward, neuralode compile="step" (compile' in table
    assert "| 4 x 6, hidden 3, Hermite | forward + backward (adjoint) |" in table


def test_work_precision_warms_up_every_method_before_timing(monkeypatch):
    pytest.importorskip("torchdiffeq")
    import numpy as np

    from neuralode.bench import work_precision

    calls = []

    def runner(key):
        def run(rtol):
            calls.append((key, rtol))
            return np.zeros((work_precision.BATCH, 2)), 1

        return run

    keys = [("a", "m"), ("b", "m")]
    monkeypatch.setattr(work_precision, "_runners", lambda: {k: runner(k) for k in keys})
    monkeypatch.setattr(work_precision, "reference", lambda: np.zeros((work_precision.BATCH, 2)))
    points = work_precision.run((1e-3, 1e-4), repeats=1)
    assert calls[:2] == [(keys[0], 1e-3), (keys[1], 1e-3)]  # one untimed call each, first
    assert len(calls) == 2 + 2 * 2 and len(points) == 4


def test_pde_benchmark_warms_up_each_solver_and_needs_a_repeat(monkeypatch):
    from types import SimpleNamespace

    from neuralode.bench import pde

    problem = pde.heat1d()
    solved = []

    def fake_solve(func, y0, ts, solver, controller):
        solved.append((type(solver).__name__, controller.rtol))
        stats = SimpleNamespace(n_accepted=1, n_rejected=0, nfe=6)
        return SimpleNamespace(ys=problem.reference[None], stats=stats)

    monkeypatch.setattr(pde, "solve", fake_solve)
    rows = pde.run_problem(problem, 1)
    cases = pde.configs(problem)
    solvers = dict.fromkeys(case.solver for case in cases)
    # a warm-up solve per solver at its loosest tolerance, then one timed round
    assert len(solved) == len(solvers) + len(cases) and len(rows) == len(cases)
    assert solved[0] == ("Dopri5", max(pde.EXPLICIT_RTOLS))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        pde.run_problem(problem, 0)


@pytest.mark.parametrize(
    "script, option",
    [
        ("bench_sde.py", "--repeats"),
        ("bench_sde.py", "--memory-steps"),
        ("bench_pde.py", "--repeats"),
        ("bench_dense.py", "--repeats"),
    ],
)
def test_benchmark_scripts_refuse_a_count_below_one(script, option, monkeypatch, capsys):
    """Each script run as ``python SCRIPT OPTION 0`` (its ``__main__`` block, in this
    process: the refusal comes before any work) stops with argparse's one-line error."""
    import runpy
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    monkeypatch.setattr(sys, "argv", [str(path), option, "0"])
    monkeypatch.syspath_prepend(str(path.parent))  # as ``python SCRIPT`` does
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code == 2
    assert f"argument {option}: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("torchode", ["missing", "broken"])
def test_bench_skips_a_part_whose_peer_is_missing_with_a_note(
    tmp_path, monkeypatch, capsys, torchode
):
    if torchode == "missing":
        monkeypatch.setitem(sys.modules, "torchode", None)  # import torchode: ImportError
    else:  # installed, but its import fails (a broken or mismatched install)
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "torchode.py").write_text("raise RuntimeError('a broken install')\n")
        monkeypatch.delitem(sys.modules, "torchode", raising=False)
        monkeypatch.syspath_prepend(str(shim))
    tmp_path = tmp_path / "out"
    argv = ["bench", "--parts", "per-sample", "gpu", "--repeats", "1", "--out", str(tmp_path)]
    assert main(argv) == 0  # gpu runs without torchode, per-sample is skipped
    assert "skipping per-sample: needs torchode" in capsys.readouterr().out
    report = (tmp_path / "bench.md").read_text()
    assert "### per-sample: not run" in report and "pip install 'neuralode[bench]'" in report
    assert "### Time per step on CPU" in report and "Per-sample mode vs torchode" not in report
    argv = ["bench", "--parts", "per-sample", "--out", str(tmp_path / "none")]
    assert main(argv) == 1 and not (tmp_path / "none").exists()  # nothing could run


def test_a_run_of_one_part_keeps_the_other_parts_sections(tmp_path):
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("matplotlib")
    out = ["--out", str(tmp_path), "--repeats", "1"]
    assert main(["bench", "--parts", "work-precision", "--rtols", "1e-3", *out]) == 0
    assert main(["bench", "--parts", "gpu", *out]) == 0
    assert main(["bench", "--parts", "gpu", *out]) == 0  # replaces its own section
    report = (tmp_path / "bench.md").read_text()
    assert report.count("### Work-precision") == 1 and report.count("### Time per step") == 1
    assert report.count("Environment:") == 2  # each part with the machine it ran on
    assert report.index("### Work-precision") < report.index("### Time per step")  # PARTS order
    gpu_part = (tmp_path / "bench-gpu.md").read_text()
    assert gpu_part.startswith("Environment:") and "Work-precision" not in gpu_part


def test_bench_core_refuses_an_existing_out_file_before_timing_anything(tmp_path, capsys):
    pytest.importorskip("torchdiffeq")
    from neuralode.bench import core

    report = tmp_path / "BENCH.md"
    report.write_text("an earlier report\n")
    with pytest.raises(SystemExit) as exit_info:
        core.main(["--quick", "--out", str(report)])
    assert exit_info.value.code == 2
    assert "replace it with --overwrite, or choose another --out" in capsys.readouterr().err
    assert report.read_text() == "an earlier report\n"
    with pytest.raises(SystemExit, match="2"):
        core.main(["--quick", "--out", str(tmp_path)])  # a directory
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        core.main(["--quick", "--out", str(tmp_path / "missing" / "BENCH.md")])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # (no file can be created in /proc, even by root)
        core.main(["--quick", "--out", "/proc/neuralode-report.md"])
    assert "cannot write there" in capsys.readouterr().err
    new = tmp_path / "NEW.md"
    args = argparse.Namespace(out=str(new), overwrite=False)
    check_report_arguments(argparse.ArgumentParser(), args)
    assert not new.exists()  # the probe leaves no file behind


def test_bench_gpu_script_refuses_a_device_it_cannot_use(capsys):
    from neuralode.bench import gpu

    for device, fragment in [("cuda:7", "CUDA device"), ("nonsense", "is not a device")]:
        with pytest.raises(SystemExit, match="2"):
            gpu.main(["--device", device, "--quick"])
        assert fragment in capsys.readouterr().err


def test_report_out_is_written_when_new_or_with_overwrite(tmp_path):
    import argparse

    from neuralode.bench import add_report_arguments, check_report_arguments, write_report

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    report = tmp_path / "BENCH.md"
    for argv in (["--out", str(report)], ["--out", str(report), "--overwrite"]):
        args = parser.parse_args(argv)
        check_report_arguments(parser, args)  # a new file, then an existing one with --overwrite
        write_report(args, f"report {len(argv)}")
        assert report.read_text() == f"report {len(argv)}\n"
    args = parser.parse_args([])
    check_report_arguments(parser, args)
    write_report(args, "printed only")  # no --out: nothing written
    assert [path.name for path in tmp_path.iterdir()] == ["BENCH.md"]
