"""Multiple-shooting loss: groups, exactness against single shooting and lone solves, gradients,
and the continuity penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import neuralode as no
from neuralode.shooting import (
    MultipleShooting,
    multiple_shooting_loss,
    shooting_groups,
    single_shooting,
)

F64 = torch.float64
TIGHT = dict(controller=no.PIController(rtol=1e-11, atol=1e-13))


def lotka_volterra(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], -1)


def irregular_times(n: int, t1: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    gaps = 0.5 + torch.rand(n - 1, generator=gen, dtype=F64)
    return torch.cat([torch.zeros(1, dtype=F64), gaps.cumsum(0) * t1 / gaps.sum()])


def field_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).to(F64)


class Autonomous(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def test_groups_cover_the_observations_with_shared_boundaries() -> None:
    groups = shooting_groups(13, group_size=4)
    assert groups.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 10, 11, 12]]
    assert torch.equal(shooting_groups(13, segments=4), groups)
    for n, size in [(41, 7), (10, 4), (5, 5), (2, 2), (30, 3)]:
        groups = shooting_groups(n, group_size=size)
        assert groups.shape == (math.ceil((n - 1) / (size - 1)), size)
        assert groups[0, 0] == 0 and groups[-1, -1] == n - 1
        assert bool((groups[1:, 0] <= groups[:-1, -1]).all())  # neighbours overlap
    for n, segments in [(11, 6), (11, 10), (100, 7), (3, 1)]:
        groups = shooting_groups(n, segments=segments)
        assert groups.shape[0] == segments
        assert groups[-1, -1] == n - 1 and bool((groups[1:, 0] <= groups[:-1, -1]).all())


def test_true_field_gives_zero_loss_and_zero_penalty() -> None:
    ts = irregular_times(41, 10.0, seed=1)
    ys = no.solve(lotka_volterra, torch.tensor([1.0, 1.0], dtype=F64), ts, **TIGHT).ys
    result = multiple_shooting_loss(lotka_volterra, ts, ys, group_size=6, continuity=10.0, **TIGHT)
    assert result.predictions.shape == (6, 8, 2)
    assert result.misfit < 1e-18 and result.penalty < 1e-18 and result.loss < 1e-17
    # several trajectories, each at its own irregular times
    starts = torch.tensor([[1.0, 1.0], [2.0, 0.5], [0.7, 1.8]], dtype=F64)
    ts3 = torch.stack([irregular_times(21, 6.0, seed=s) for s in range(3)])
    ys3 = no.solve(lotka_volterra, starts, ts3, per_sample=True, **TIGHT).ys  # (21, 3, 2)
    result = multiple_shooting_loss(lotka_volterra, ts3, ys3, segments=5, **TIGHT)
    assert result.predictions.shape == (5, 5, 3, 2)
    assert result.loss < 1e-18
    # and a wrong field does not
    wrong = multiple_shooting_loss(lambda t, y: 1.1 * lotka_volterra(t, y), ts, ys, group_size=6)
    assert wrong.misfit > 1e-4 and wrong.penalty > 1e-4


@pytest.mark.parametrize("batched", [False, True])
def test_one_group_equals_the_single_shooting_loss_exactly(batched: bool) -> None:
    func = Autonomous(field_mlp())
    ts = irregular_times(15, 3.0, seed=2)
    ys = torch.randn(15, 3, 2, dtype=F64) if batched else torch.randn(15, 2, dtype=F64)
    result = multiple_shooting_loss(func, ts, ys, group_size=15, continuity=5.0)
    prediction = single_shooting(func, ts, ys[0])
    assert prediction.shape == ys.shape
    assert result.loss == (prediction - ys).pow(2).mean()
    assert result.penalty == 0
    assert torch.equal(result.predictions[:, 0], prediction)


def test_the_batched_solve_equals_each_group_solved_alone() -> None:
    func = Autonomous(field_mlp(3))
    ts = irregular_times(24, 4.0, seed=3)  # groups of 5 starting at 0, 4, 8, 11, 15, 19
    ys = torch.randn(24, 2, dtype=F64)
    y0s = torch.randn(6, 2, dtype=F64)
    result = multiple_shooting_loss(func, ts, ys, segments=6, y0s=y0s, continuity=2.0, **TIGHT)
    groups = result.groups
    assert groups[:, 0].tolist() == [0, 4, 8, 11, 15, 19]
    alone = torch.stack(
        [no.solve(func, y0s[k], ts[groups[k]], **TIGHT).ys for k in range(6)], 1
    )  # (L, K, 2)
    torch.testing.assert_close(result.predictions, alone, rtol=0, atol=1e-12)
    assert torch.equal(result.targets, ys[groups.T])
    at = groups[1:, 0] - groups[:-1, 0]
    mismatch = alone[at, torch.arange(5)] - y0s[1:]
    torch.testing.assert_close(result.penalty, mismatch.pow(2).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(result.loss, result.misfit + 2.0 * result.penalty)


def test_gradcheck_with_respect_to_parameters_and_free_states() -> None:
    ts = irregular_times(9, 2.0, seed=4)
    ys = torch.randn(9, 3, 2, dtype=F64)
    y0s = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    weight = torch.tensor([[0.3, -0.9], [0.8, 0.1]], dtype=F64, requires_grad=True)

    def run(weight: torch.Tensor, y0s: torch.Tensor) -> torch.Tensor:
        def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.tanh(y @ weight) * torch.cos(t)[:, None]

        return multiple_shooting_loss(
            field, ts, ys, group_size=3, y0s=y0s, continuity=3.0, **TIGHT
        ).loss

    assert torch.autograd.gradcheck(run, (weight, y0s), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backsolve_gradients_match_direct() -> None:
    func = Autonomous(field_mlp(5))
    ts = irregular_times(17, 3.0, seed=5)
    ys = torch.randn(17, 2, dtype=F64)
    grads = []
    for gradient in (no.Direct(), no.Backsolve()):
        shooting = MultipleShooting(func, ts, ys, group_size=5, gradient=gradient, **TIGHT)
        shooting().loss.backward()
        grads.append([p.grad.clone() for p in shooting.parameters()])
        func.zero_grad()
    assert len(grads[0]) == 5  # y0s and the MLP's weights and biases
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_the_continuity_penalty_joins_free_states_into_one_trajectory() -> None:
    # y' = A y, a rotation: group k ends at exp(A dt_k) y0s[k]. With the misfit switched off,
    # only the penalty moves the free states, and it must move them onto one trajectory.
    rotation = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ rotation.T

    ts = torch.linspace(0, 3, 13, dtype=F64)
    ys = torch.zeros(13, 2, dtype=F64)
    torch.manual_seed(0)
    shooting = MultipleShooting(
        field, ts, ys, group_size=4, continuity=1.0, loss=lambda p, y: (0 * p).sum(), **TIGHT
    )
    with torch.no_grad():
        shooting.y0s.copy_(torch.randn(4, 2, dtype=F64))
    start = shooting().penalty.item()
    optimiser = torch.optim.SGD(shooting.parameters(), lr=1.4)
    for _ in range(25):
        optimiser.zero_grad()
        shooting().loss.backward()
        optimiser.step()
    assert shooting().penalty < 1e-7 * start
    # the states now lie on one trajectory: y0s[k+1] = exp(A (t_{k+1} - t_k)) y0s[k]
    flow = torch.linalg.matrix_exp(rotation * (ts[3] - ts[0]))
    y0s = shooting.y0s.detach()
    torch.testing.assert_close(y0s[1:], y0s[:-1] @ flow.T, rtol=0, atol=1e-3)


def test_module_holds_free_states_and_predicts_by_single_shooting() -> None:
    func = Autonomous(field_mlp(6))
    ts = torch.linspace(0, 2, 11, dtype=F64)
    ys = torch.randn(11, 2, 2, dtype=F64)
    shooting = MultipleShooting(func, ts, ys, segments=6, continuity=0.5)
    assert shooting.y0s.shape == (6, 2, 2)
    assert torch.equal(shooting.y0s.detach(), ys[shooting_groups(11, segments=6)[:, 0]])
    expected = multiple_shooting_loss(func, ts, ys, segments=6, continuity=0.5)
    assert torch.equal(shooting().loss, expected.loss)  # free states start at the data
    assert torch.equal(shooting.predict(), single_shooting(func, ts, ys[0]))
    assert set(shooting.state_dict()) == {"y0s"} | {f"func.{k}" for k in func.state_dict()}
    fixed = MultipleShooting(func, ts, ys, segments=6, free_states=False)
    assert fixed.y0s is None and len(list(fixed.parameters())) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(group_size=1), "at least 2"),
        (dict(group_size=12), "more than the 11 observations"),
        (dict(segments=11), "use at most segments=10"),
        (dict(segments=0), "positive integer"),
        (dict(), "exactly one of group_size"),
        (dict(group_size=3, segments=2), "exactly one of group_size"),
        (dict(group_size=3, y0s=torch.zeros(4, 2, dtype=F64)), r"\(5, 2\)"),
        (dict(group_size=3, continuity=-1.0), ">= 0"),
        (dict(group_size=3, per_sample=False), "per_sample must be True"),
    ],
)
def test_bad_input_is_refused_naming_the_fix(kwargs: dict, match: str) -> None:
    ts = torch.linspace(0, 1, 11, dtype=F64)
    with pytest.raises(ValueError, match=match):
        multiple_shooting_loss(lotka_volterra, ts, torch.ones(11, 2, dtype=F64), **kwargs)


def test_numpy_integers_count_groups() -> None:
    ts = torch.linspace(0, 1, 11, dtype=F64)
    ys = torch.ones(11, 2, dtype=F64)
    for kwargs in (dict(group_size=3), dict(segments=5)):
        numpy = {key: np.int64(value) for key, value in kwargs.items()}
        assert torch.equal(
            multiple_shooting_loss(lotka_volterra, ts, ys, **numpy).predictions,
            multiple_shooting_loss(lotka_volterra, ts, ys, **kwargs).predictions,
        )


def test_mismatched_shapes_and_options_are_refused() -> None:
    ts = torch.linspace(0, 1, 11, dtype=F64)
    with pytest.raises(ValueError, match="does not match ys"):
        multiple_shooting_loss(lotka_volterra, ts[:-1], torch.ones(11, 2, dtype=F64), segments=2)
    with pytest.raises(ValueError, match=r"\(n, d\) \(one trajectory\)"):
        multiple_shooting_loss(lotka_volterra, ts, torch.ones(11), segments=2)
    with pytest.raises(ValueError, match="does not match ys"):  # (batch, n) of the wrong batch
        multiple_shooting_loss(lotka_volterra, ts.expand(2, 11), torch.ones(11, 3, 2), segments=2)
    with pytest.raises(TypeError, match="saveat"):
        multiple_shooting_loss(
            lotka_volterra, ts, torch.ones(11, 2), segments=2, saveat=no.SaveAt(t1=True)
        )
    with pytest.raises(ValueError, match="does not match y0"):
        single_shooting(lotka_volterra, ts.expand(2, 11), torch.ones(3, 2, dtype=F64))


def test_single_shooting_refuses_times_that_are_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="ts must be a tensor of times, got list"):
        single_shooting(lambda t, y: -y, [0.0, 1.0], torch.ones(2))
