"""``neuralode train --kinetic/--jacobian/--derivative``: the weights reach the ODE block,
change the training, are recorded in metrics and checkpoints, and resume exactly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from test_train import TINY, sigint_at

from neuralode.cli import main
from neuralode.models import DerivativePenalty, JacobianFrobenius, KineticEnergy
from neuralode.training import (
    INTERRUPTED,
    CheckpointError,
    TrainConfig,
    add_train_arguments,
    build_model,
    train,
)

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")


def _config(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return TrainConfig.from_namespace(parser.parse_args(argv))


def test_the_flags_reach_the_ode_block() -> None:
    config = _config(
        ["odenet", "--kinetic", "0.5", "--jacobian", "0.1", "--jacobian-noise", "rademacher"]
        + ["--derivative", "0.01", "--derivative-order", "3"]
    )
    assert (config.kinetic, config.jacobian, config.derivative) == (0.5, 0.1, 0.01)
    regularisers = build_model(config).ode.regularisers
    assert [type(r) for r in regularisers] == [KineticEnergy, JacobianFrobenius, DerivativePenalty]
    assert [r.weight for r in regularisers] == [0.5, 0.1, 0.01]
    assert regularisers[1].noise == "rademacher" and regularisers[2].order == 3
    rknet = build_model(_config(["rknet", "--kinetic", "0.2"]))
    assert [(type(r), r.weight) for r in rknet.ode.regularisers] == [(KineticEnergy, 0.2)]
    assert build_model(_config(["odenet"])).ode.regularisers == []  # off by default


def test_regularised_training_records_its_terms_and_differs(tmp_path) -> None:
    common = dict(model="odenet", epochs=1, **TINY)
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **common))
    regularised = train(TrainConfig(out=str(tmp_path / "reg"), kinetic=1.0, **common))
    assert plain.history[0]["regularisation"] is None
    terms = regularised.history[0]["regularisation"]
    assert set(terms) == {"total", "kinetic"}
    assert terms["kinetic"] > 0 and terms["total"] == pytest.approx(terms["kinetic"])
    # the penalty entered the loss: same seed, same data, different parameters
    a, b = plain.model.state_dict(), regularised.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    line = json.loads((tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["regularisation"]["kinetic"] == pytest.approx(terms["kinetic"])
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["kinetic"] == 1.0
    saved = torch.load(tmp_path / "reg" / "checkpoint.pt", weights_only=True)
    assert saved["config"]["kinetic"] == 1.0
    with pytest.raises(CheckpointError, match="--kinetic was 1.0, now 0.0"):
        train(TrainConfig(out=str(tmp_path / "reg"), resume=True, **{**common, "epochs": 2}))


def test_interrupted_regularised_run_resumes_exactly(tmp_path) -> None:
    """The Hutchinson noise comes from the saved RNG and the per-term sums from the
    checkpoint, so an interrupted and resumed run equals a straight one."""
    common = dict(model="rknet", epochs=2, kinetic=0.1, jacobian=0.1, **TINY)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **common))

    stopped = train(TrainConfig(out=str(tmp_path / "b"), **common), on_batch=sigint_at(1, 1))
    assert stopped.status == INTERRUPTED
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = straight.history[-1]["regularisation"]
    assert resumed.history[-1]["regularisation"] == last and set(last) == {
        "total",
        "kinetic",
        "jacobian",
    }


def test_regularisation_errors_are_clear(tmp_path, capsys) -> None:
    argv = ["train", "resnet", "--data", "digits", "--kinetic", "0.1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "resnet has none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jacobian must be non-negative, got -1"):
        TrainConfig(jacobian=-1.0)
    with pytest.raises(ValueError, match="derivative_order must be at least 2, got 1"):
        TrainConfig(derivative=0.1, derivative_order=1)
