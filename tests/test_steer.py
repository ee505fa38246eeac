"""STEER: ``ODEBlock(end_time=RandomEndTime(b))`` solves each training forward pass to a random
end time uniform in [t1 - b, t1 + b) (one per batch, or one per sample), eval mode to t1; the
draws come from torch's RNG; ``neuralode train --steer B`` reaches the block and resumes
exactly. Solutions and gradients are checked against dy/dt = -k y, y(t) = y0 exp(-k t)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

from neuralode.models import (
    DataControlledMLP,
    KineticEnergy,
    MLPDynamics,
    ODEBlock,
    RandomEndTime,
)

GRADIENTS = ("direct", "adjoint", "checkpointed", "reversible")
TIGHT = dict(rtol=1e-10, atol=1e-10)


class Decay(nn.Module):
    """dy/dt = -k y with a learnable k: y(t) = y0 exp(-k (t - t0))."""

    def __init__(self, k: float = 0.7):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.k * y


def _drawn(seed: int, spread: float, t1: float = 1.0, batch: int | None = None) -> torch.Tensor:
    """The end times a block draws after ``torch.manual_seed(seed)``: t1 + b (2u - 1)."""
    torch.manual_seed(seed)
    u = torch.rand(() if batch is None else (batch,), dtype=torch.float64)
    return t1 + spread * (2 * u - 1)


def test_draws_are_uniform_on_the_interval() -> None:
    torch.manual_seed(0)
    draws = RandomEndTime(0.5).draw(1.0, batch=7)
    assert draws.shape == () and draws.dtype == torch.float64  # one per batch
    many = RandomEndTime(0.5, per_sample=True).draw(1.0, batch=20000)
    assert many.shape == (20000,)
    assert 0.5 <= many.min() < 0.51 and 1.49 < many.max() < 1.5
    # U(0.5, 1.5): mean 1, variance b^2 / 3 = 1/12 (standard errors 0.002 and 0.0006)
    assert many.mean().item() == pytest.approx(1.0, abs=0.01)
    assert many.var().item() == pytest.approx(1 / 12, abs=0.003)
    assert torch.equal(RandomEndTime(0.0, per_sample=True).draw(2.0, 3), torch.full((3,), 2.0))


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_training_solves_to_the_drawn_end_time_with_exact_gradients(gradient: str) -> None:
    """Each draw moves the output along the flow: y0 exp(-k t1') at the drawn t1', and the
    gradients are those of the solve to t1' (the end time itself gets none)."""
    block = ODEBlock(Decay(), gradient=gradient, end_time=RandomEndTime(0.5), **TIGHT)
    outputs = []
    for seed in (0, 1, 2):
        end = _drawn(seed, 0.5)
        assert 0.5 <= end < 1.5
        x = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
        torch.manual_seed(seed)
        y = block(x)
        decay = torch.exp(-0.7 * end)
        torch.testing.assert_close(y, x.detach() * decay, rtol=1e-8, atol=0)
        y.sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, decay.item()), rtol=1e-7, atol=0)
        # d/dk of sum(y0) exp(-k t1') = -t1' sum(y0) exp(-k t1')
        expected_k = -end * x.detach().sum() * decay
        torch.testing.assert_close(block.dynamics.k.grad, expected_k, rtol=1e-6, atol=0)
        block.dynamics.k.grad = None
        outputs.append(y.detach())
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


def test_eval_mode_and_given_times_solve_exactly_the_nominal_problem() -> None:
    torch.manual_seed(0)
    dynamics = MLPDynamics(3, 8)
    plain = ODEBlock(dynamics)
    steered = ODEBlock(dynamics, end_time=RandomEndTime(0.9))
    x = torch.randn(5, 3)
    steered.eval()
    state = torch.get_rng_state()
    assert torch.equal(steered(x), plain(x))
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn in eval mode
    steered.train()
    ts = torch.linspace(0, 1, 4)
    assert torch.equal(steered(x, ts), plain(x, ts))  # the caller's times, as given
    assert not torch.allclose(steered(x), plain(x))  # training: another end time


def test_seeded_runs_repeat_and_backward_time_works() -> None:
    torch.manual_seed(0)
    block = ODEBlock(MLPDynamics(2, 8), t0=1.0, t1=-1.0, end_time=RandomEndTime(1.5))
    x = torch.randn(4, 2)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([block(x) for _ in range(3)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[0][1])
    # backward in time, t1 = -1: the end time -1 + 1.5 (2u - 1) stays below t0 = 1
    reference = ODEBlock(block.dynamics, t0=1.0, t1=_drawn(4, 1.5, t1=-1.0).item()).eval()
    torch.manual_seed(4)
    torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_per_sample_end_times_equal_each_sample_solved_alone(gradient: str) -> None:
    torch.manual_seed(0)
    dynamics = MLPDynamics(2, 16).double()  # uses t: each sample gets its own times
    block = ODEBlock(dynamics, gradient=gradient, end_time=RandomEndTime(0.5, per_sample=True))
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    ends = _drawn(7, 0.5, batch=6)
    torch.manual_seed(7)
    y = block(x)
    y.pow(2).sum().backward()
    for i, end in enumerate(ends.tolist()):
        alone = ODEBlock(dynamics, t1=end, gradient=gradient)
        xi = x.detach()[i : i + 1].requires_grad_(True)
        yi = alone(xi)
        yi.pow(2).sum().backward()
        torch.testing.assert_close(y[i : i + 1].detach(), yi.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad[i : i + 1], xi.grad, rtol=1e-6, atol=1e-9)
    # the linear decay: each sample exactly y0_i exp(-k t1_i)
    decay = ODEBlock(Decay(), end_time=RandomEndTime(0.5, per_sample=True), **TIGHT)
    torch.manual_seed(7)
    z = decay(x.detach())
    torch.testing.assert_close(z, x.detach() * torch.exp(-0.7 * ends)[:, None], rtol=1e-8, atol=0)


def test_steer_with_regularisers_integrates_them_to_the_drawn_end() -> None:
    """The kinetic energy of dy/dt = -k y is k^2 y0^2 (1 - exp(-2 k t1')) / (2 k)."""
    block = ODEBlock(Decay(), end_time=RandomEndTime(0.5), regularisers=[KineticEnergy()], **TIGHT)
    x = torch.tensor([[2.0]], dtype=torch.float64)
    end = _drawn(5, 0.5)
    torch.manual_seed(5)
    block(x)
    k = 0.7
    expected = k**2 * 4.0 * (1 - math.exp(-2 * k * end.item())) / (2 * k)
    assert block.regularisation_terms["kinetic"].item() == pytest.approx(expected, rel=1e-7)


def test_bad_end_times_are_refused_with_the_fix() -> None:
    for bad in (-0.1, math.nan, math.inf, "0.5", True):
        with pytest.raises(ValueError, match="spread must be a finite non-negative number"):
            RandomEndTime(bad)
    with pytest.raises(TypeError, match="per_sample must be True or False"):
        RandomEndTime(0.5, per_sample="yes")
    f = MLPDynamics(2, 8)
    with pytest.raises(ValueError, match=r"below \|t1 - t0\| = 1.0.*got 1.0; use a smaller"):
        ODEBlock(f, end_time=RandomEndTime(1.0))
    with pytest.raises(ValueError, match=r"below \|t1 - t0\| = 0.5"):
        ODEBlock(f, t0=1.0, t1=0.5, end_time=RandomEndTime(0.7))
    with pytest.raises(TypeError, match=r"pass end_time=RandomEndTime\(b\)"):
        ODEBlock(f, end_time=0.5)
    per_sample = RandomEndTime(0.5, per_sample=True)
    with pytest.raises(ValueError, match="does not take regularisers.*per_sample=False"):
        ODEBlock(f, end_time=per_sample, regularisers=[KineticEnergy()])
    with pytest.raises(ValueError, match="does not take a DataControlled field"):
        ODEBlock(DataControlledMLP(2, 8), end_time=per_sample)
    for gradient in ("checkpointed", "reversible"):
        with pytest.raises(ValueError, match=f"does not take gradient='{gradient}'"):
            ODEBlock(f, gradient=gradient, end_time=per_sample)
    with pytest.raises(ValueError, match=r"needs states of shape \(batch, ...\), got \(\)"):
        ODEBlock(Decay(), end_time=per_sample)(torch.tensor(1.0, dtype=torch.float64))
    assert "end_time=RandomEndTime(spread=0.5, per_sample=True)" in repr(
        ODEBlock(f, end_time=per_sample)
    )


def test_the_steer_flag_reaches_the_block_and_is_checked(capsys) -> None:
    from neuralode.cli import main
    from neuralode.training import TrainConfig, add_train_arguments, build_model

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert "STEER" in parser.format_help()
    for model in ("odenet", "rknet"):
        config = TrainConfig.from_namespace(parser.parse_args([model, "--steer", "0.25"]))
        end_time = build_model(config).ode.end_time
        assert isinstance(end_time, RandomEndTime) and end_time.spread == 0.25
        assert not end_time.per_sample
    assert build_model(TrainConfig()).ode.end_time is None  # off by default
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="steer must lie in"):
            TrainConfig(steer=bad)
    with pytest.raises(ValueError, match="resnet has none"):
        TrainConfig(model="resnet", steer=0.5)
    with pytest.raises(ValueError, match="--steer regularise an ODE block; a deq"):
        TrainConfig(model="deq", steer=0.5)
    with pytest.raises(SystemExit):
        main(["train", "odenet", "--steer", "1.5", "--out", "unused"])
    assert "argument --steer: must be a number in [0, 1), got 1.5" in capsys.readouterr().err


def test_an_interrupted_steer_run_resumes_exactly(tmp_path) -> None:
    """The end times come from torch's RNG, which the checkpoint saves: an interrupted and
    resumed run equals a straight one, and differs from a run without STEER."""
    pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")
    from test_train import TINY, sigint_at

    from neuralode.training import INTERRUPTED, CheckpointError, TrainConfig, train

    common = dict(model="rknet", epochs=1, steer=0.5, **TINY)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **common))
    stopped = train(TrainConfig(out=str(tmp_path / "b"), **common), on_batch=sigint_at(0, 1))
    assert stopped.status == INTERRUPTED
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    plain = train(TrainConfig(out=str(tmp_path / "c"), **{**common, "steer": 0.0}))
    a, b, c = (r.model.state_dict() for r in (straight, resumed, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(CheckpointError, match="--steer was 0.5, now 0.25"):
        train(TrainConfig(out=str(tmp_path / "a"), resume=True, **{**common, "steer": 0.25}))
