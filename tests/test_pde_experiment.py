"""The PDE experiment through the CLI at tiny size, and the PDE tutorial script."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from script_runs import run_script

from neuralode.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "2", "--train-ics", "1", "--test-ics", "2", "--refine", "2"]
TINY += ["--no-progress", "--window", "2"]


@pytest.mark.parametrize(
    "equation, size",
    [
        ("burgers", ["--grid", "16", "--horizon", "0.2"]),
        ("reaction-diffusion", ["--grid", "6", "--horizon", "0.2"]),
    ],
)
def test_experiment_writes_metrics_and_plots(
    tmp_path, capsys, equation: str, size: list[str]
) -> None:
    pytest.importorskip("matplotlib")
    code = main(["experiment", "pde", "--equation", equation, "--out", str(tmp_path)] + TINY + size)
    assert code == 0
    assert "forecast relative L2" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("forecast_rel_l2", "forecast_rel_l2_2x", "baseline_forecast_rel_l2_2x"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0
    assert len(metrics["forecast_rel_l2_2x_per_ic"]) == 2
    # the baseline's parameter count is matched to the learned term's
    assert (
        abs(metrics["baseline_parameters"] - metrics["parameters"]) <= 0.05 * metrics["parameters"]
    )
    solvers = metrics["solvers"]
    assert set(solvers) == {"dopri5", "radau_krylov", "kencarp4_imex"} and all(
        s["nfe"] > 0 for s in solvers.values()
    )
    assert solvers["radau_krylov"]["newton"]["newton_iterations"] > 0
    # the three solvers agree on the trained model's forecast (to the forecast tolerance)
    for name in ("radau_krylov", "kencarp4_imex"):
        assert (
            abs(solvers["dopri5"]["forecast_rel_l2_2x"] - solvers[name]["forecast_rel_l2_2x"])
            < 1e-3
        )
    png = "spacetime.png" if equation == "burgers" else "fields.png"
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_bad_arguments_are_one_line_errors(tmp_path, capsys) -> None:
    code = main(["experiment", "pde", "--out", str(tmp_path), "--horizon", "0.25", "--dt", "0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--horizon must be a multiple of --dt" in err
    code = main(["experiment", "pde", "--out", str(tmp_path), "--window", "21"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--window (21) is longer than the 20 saved steps" in err
    with pytest.raises(SystemExit) as stopped:  # refused by the option's type, as it parses
        main(["experiment", "pde", "--out", str(tmp_path), "--grid", "3"])
    assert stopped.value.code == 2
    assert "argument --grid: must be an integer >= 5, got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", "pde", "--out", str(tmp_path), "--viscosity", "nan"])
    assert stopped.value.code == 2
    assert "argument --viscosity" in capsys.readouterr().err


def test_tutorial_script_runs_at_small_size(tmp_path) -> None:
    script = ROOT / "docs" / "tutorials" / "pde.py"
    args = ["--iterations", "2", "--grid", "16", "--train-ics", "1"]
    done = run_script(script, args, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "relative L2 forecast error at 2T" in done.stdout
    assert "learned term vs -u u_x" in done.stdout
