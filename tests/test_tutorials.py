"""Every tutorial script runs at a small size, prints its results and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_runs import run_script

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"

# script -> (what its output must contain, the figures it writes)
EXPECTED = {
    "numerical_solvers.py": (
        ["order (measured)", "rk4                     4              4.0", "rtol       NFE"],
        ["solvers_convergence.png", "solvers_stability.png", "solvers_adaptive.png"],
    ),
    "resnets.py": (
        ["ResNet (4 blocks)", "augmented ODE-Net", "steps K   euler"],
        ["resnets_trajectories.png", "resnets_depth.png"],
    ),
    "normalising_flows.py": (
        ["change of variables", "CNF, exact trace", "Hutchinson minus exact"],
        ["flows_change_of_variables.png", "flows_densities.png"],
    ),
    "adjoint.py": (
        [
            "library, Backsolve (adjoint)  relative difference",
            "library, Reversible           relative difference",
            "gradient descent: g from",
            "1e-02   reversible",
        ],
        ["adjoint.png"],
    ),
    "paper.py": (
        ["ODE-Net on digits: test accuracy", "spirals, 30 observations", "FFJORD on 8gaussians"],
        ["paper_spirals.png", "paper_ffjord.png"],
    ),
    "batching.py": (
        ["giant ODE:", "per sample:", "skip_finished", "8/8 samples", "vmap: max difference"],
        ["batching.png"],
    ),
    "cde.py": (
        [
            "linear CDE dz = a z dX",
            "hermite 0.0e+00, linear 0.0e+00",
            "hermite  test accuracy",
            "log-ode depth 3, window 20",
        ],
        ["cde_interpolations.png", "cde_training.png", "cde_long_series.png"],
    ),
    "hamiltonian.py": (
        ["true pendulum from q = 2", "separable, leapfrog", "hnn       train MSE", "lnn, rk4"],
        ["hamiltonian_solvers.png", "hamiltonian_rollouts.png"],
    ),
    "second_order.py": (
        ["turning back: sin(t)   first-order", "crossing: +-cos(t)     SONODE"],
        ["second_order_fits.png"],
    ),
    "multiple_shooting.py": (
        ["whole-trajectory MSE", "single shooting   ", "multiple shooting  "],
        ["multiple_shooting.png"],
    ),
    "delay.py": (
        ["neural ODE  MSE", "neural DDE  MSE", "learned delay"],
        ["delay.png"],
    ),
}


def test_every_tutorial_script_is_tested() -> None:
    scripts = {p.name for p in TUTORIALS.glob("*.py")} - {"pde.py"}  # pde: test_pde_experiment
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_at_small_size(script: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    done = run_script(TUTORIALS / script, ["--small", "--out", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed, figures = EXPECTED[script]
    for text in printed:
        assert text in done.stdout, (text, done.stdout)
    for name in figures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_script_runner_reports_what_python_would(tmp_path: Path) -> None:
    """run_script passes the arguments, returns the output and the exit status of a
    failing, exiting or hanging script (which it kills), as ``python script.py`` would."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, time\n"
        "print('args', sys.argv[1:], __name__)\n"
        "if sys.argv[1] == 'raise':\n"
        "    raise ValueError('bad probe')\n"
        "if sys.argv[1] == 'hang':\n"
        "    time.sleep(60)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    done = run_script(script, ["0"], tmp_path)
    assert (done.returncode, done.stdout) == (0, "args ['0'] __main__\n")
    assert run_script(script, ["3"], tmp_path).returncode == 3
    done = run_script(script, ["raise"], tmp_path)
    assert done.returncode == 1
    assert "args ['raise']" in done.stdout and "ValueError: bad probe" in done.stderr
    assert run_script(script, ["hang"], tmp_path, timeout=0.5).returncode == -9
