"""``--ema`` (weight average evaluated instead of the trained weights) and
``--label-smoothing`` of ``neuralode train``: the arithmetic, exact resume, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import TINY, _assert_identical, _deterministic, sigint_at
from test_train import _params as _state
from torch import nn

from neuralode.training import INTERRUPTED, CheckpointError, TrainConfig, evaluate, train
from neuralode.training.ema import WeightAverage
from neuralode.training.runtime import Runtime

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")


def test_weight_average_follows_the_recurrence_with_its_warm_up() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    model.register_buffer("count", torch.zeros(()))
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.count += 1
        d = min(0.9, (1 + n) / (10 + n))  # 0.1, 0.18, ...: still warming up (0.9 from n = 80)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        average.update(model)
    for e, a in zip(expected, average.model.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert average.model.count.item() == 30  # buffers are copied, not averaged
    assert all(not p.requires_grad for p in average.model.parameters())
    # the next update would keep 31/40 of the average
    assert average.current_decay() == pytest.approx(31 / 40)
    with pytest.raises(ValueError, match="decay must lie in \\(0, 1\\), got 1.0"):
        WeightAverage(model, decay=1.0)


def test_training_evaluates_the_average_and_reports_the_trained_weights_once(tmp_path) -> None:
    config = TrainConfig(model="odenet", epochs=2, ema=0.9, out=str(tmp_path), **TINY)
    result = train(config)
    assert result.average is not None and result.evaluated is result.average
    last = result.history[-1]
    assert "test_error_raw" in last and "test_error_raw" not in result.history[0]
    from neuralode.training.loop import load_data

    data = load_data(config)
    runtime = Runtime()
    test = evaluate(result.average, data.test_x, data.test_y, 32, runtime)
    raw = evaluate(result.model, data.test_x, data.test_y, 32, runtime)
    assert last["test_error"] == pytest.approx(1 - test["accuracy"])
    assert last["test_error_raw"] == pytest.approx(1 - raw["accuracy"])
    assert last["test_loss"] == pytest.approx(test["loss"])
    differ = [not torch.equal(a, b) for a, b in zip(result.average.parameters(),
                                                    result.model.parameters())]  # fmt: skip
    assert any(differ)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    _assert_identical(saved["ema"]["model"], _state(result.average))
    assert saved["ema"]["updates"] == 2 * 4  # 64 images in batches of 16, two epochs
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_error"] == last["test_error"]


def test_label_smoothing_changes_the_training_loss_only(tmp_path) -> None:
    plain = train(TrainConfig(model="resnet", epochs=1, out=str(tmp_path / "a"), **TINY))
    smooth = train(
        TrainConfig(model="resnet", epochs=1, label_smoothing=0.2, out=str(tmp_path / "b"), **TINY)
    )
    assert smooth.history[0]["train_loss"] != plain.history[0]["train_loss"]
    from neuralode.training.loop import load_data

    data = load_data(TrainConfig(**TINY))
    test = evaluate(smooth.model, data.test_x, data.test_y, 32, Runtime())
    assert smooth.history[0]["test_loss"] == pytest.approx(test["loss"])  # plain cross-entropy
    with pytest.raises(ValueError, match="label_smoothing must lie in \\[0, 1\\), got 1.5"):
        TrainConfig(label_smoothing=1.5)
    with pytest.raises(ValueError, match="ema must lie in \\[0, 1\\), got -0.1"):
        TrainConfig(ema=-0.1)


def test_ctrl_c_and_resume_keep_the_average_bit_for_bit(tmp_path) -> None:
    common = dict(model="odenet", epochs=2, ema=0.8, label_smoothing=0.1, **TINY)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **common))

    stopped = train(TrainConfig(out=str(tmp_path / "b"), **common), on_batch=sigint_at(1, 1))
    assert stopped.status == INTERRUPTED
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    assert resumed.status == 0
    _assert_identical(_state(straight.model), _state(resumed.model))
    _assert_identical(_state(straight.average), _state(resumed.average))
    assert _deterministic(straight.history) == _deterministic(resumed.history)
    with pytest.raises(CheckpointError, match="--ema was 0.8, now 0.0"):
        train(TrainConfig(out=str(tmp_path / "b"), resume=True, **{**common, "ema": 0.0}))


def test_checkpoints_without_the_new_options_still_resume(tmp_path) -> None:
    """A checkpoint written before --ema and --label-smoothing existed resumes with their
    defaults (the missing keys are not read as a different run)."""
    common = dict(model="resnet", **TINY)
    train(TrainConfig(epochs=1, out=str(tmp_path), **common))
    path = tmp_path / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    for key in ("ema", "label_smoothing"):
        del saved["config"][key]
    torch.save(saved, path)
    assert train(TrainConfig(epochs=2, out=str(tmp_path), resume=True, **common)).status == 0
