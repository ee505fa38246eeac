"""The Hamiltonian neural network experiment through the CLI at tiny size."""

from __future__ import annotations

import json
import math

import pytest

from neuralode.cli import main

TINY = ["--steps", "20", "--hidden", "16", "--train", "4", "--test", "3", "--points", "20"]
TINY += ["--horizon", "10", "--rollouts", "2", "--no-progress", "--threads", "1"]


def test_experiment_writes_metrics_and_plots(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    assert main(["experiment", "hnn", "--out", str(tmp_path), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "hnn: derivative test MSE" in printed and "energy drift at t=10" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    models, rollouts = metrics["models"], metrics["rollouts"]
    assert set(models) == {"baseline", "hnn", "separable"}
    assert all(math.isfinite(m["derivative_test_mse"]) for m in models.values())
    assert set(rollouts) == {"baseline rk4", "hnn rk4", "separable rk4", "separable leapfrog"}
    for result in rollouts.values():
        for key in ("trajectory_mse", "energy_drift_final"):
            assert math.isfinite(result[key]) and result[key] > 0
        assert result["energy_drift_max"] >= result["energy_drift_mean"]
    # 10 time units in steps of 0.05: rk4 evaluates 4 times a step, leapfrog twice (the
    # drift and the closing kick, whose dp/dt opens the next step) and once at the start
    assert rollouts["hnn rk4"]["nfe"] == 4 * 200
    assert rollouts["separable leapfrog"]["nfe"] == 2 * 200 + 1
    # whatever H the Hamiltonian models learned, their rollouts conserve it to the solver's
    # error on a smooth field and float32 rounding, far below the energies (about 2 to 5)
    assert "learned_energy_drift_max" not in rollouts["baseline rk4"]
    for name in ("hnn rk4", "separable rk4", "separable leapfrog"):
        assert rollouts[name]["learned_energy_drift_max"] < 1e-3, name
    assert len(metrics["rollout_setting"]["initial_energy"]) == 2
    for png in ("hnn_phase.png", "hnn_energy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line)["job"] for line in lines} == {
        "train baseline",
        "train hnn",
        "train separable",
    }


def test_bad_options_are_one_line_errors(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["experiment", "hnn", "--out", str(out), "--horizon", "1", "--save-every", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--save-every (2) is longer than --horizon (1)" in err
    code = main(["experiment", "hnn", "--out", str(out), "--step-size", "0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--step-size (0.5) is longer than --save-every (0.1)" in err
    assert not out.exists()
    for option, value, message in (
        ("--method", "leapfrogg", "unknown method 'leapfrogg'"),
        ("--noise", "-0.1", "argument --noise"),
        ("--hidden", "0", "argument --hidden"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["experiment", "hnn", "--out", str(out), option, value])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_symplectic_rollouts_evaluate_one_half_of_a_separable_field_per_kick_or_drift() -> None:
    """The rollout hands the model itself to the solver: leapfrog calls the separable HNN's
    dq_dt for each drift and dp_dt for each kick (the kinetic network once a step, the
    potential once a step and once at the start), each counted as one evaluation."""
    import argparse

    import torch

    from neuralode.experiments.hnn import rollout
    from neuralode.models import EnergyMLP, SeparableHamiltonian

    torch.manual_seed(0)
    model = SeparableHamiltonian(EnergyMLP(1, 8), EnergyMLP(1, 8))
    runs = {"kinetic": 0, "potential": 0}
    model.kinetic.register_forward_hook(lambda *_: runs.update(kinetic=runs["kinetic"] + 1))
    model.potential.register_forward_hook(lambda *_: runs.update(potential=runs["potential"] + 1))
    ts = torch.arange(3, dtype=torch.float64) * 0.5  # 20 steps of 0.05
    args = argparse.Namespace(step_size=0.05, rtol=1e-6)
    result = rollout(model, "leapfrog", torch.randn(2, 2), ts, args)
    assert runs == {"kinetic": 20, "potential": 21} and result["nfe"] == 41
