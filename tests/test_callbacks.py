"""Step callbacks: ``on_step`` / ``on_accept`` / ``on_reject`` called as (t, y, dt)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    accuracy_factor,
    adaptive_tolerances,
    fixed_step,
    make_solver,
)
from problems import D1

import neuralode as no


class Recorder:
    """Keeps every call of every hook, in order: (hook, t, y, dt)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.Tensor, object, torch.Tensor]] = []

    def on_step(self, t, y, dt) -> None:
        self.calls.append(("step", t, y, dt))

    def on_accept(self, t, y, dt) -> None:
        self.calls.append(("accept", t, y, dt))

    def on_reject(self, t, y, dt) -> None:
        self.calls.append(("reject", t, y, dt))

    def of(self, hook: str) -> list[tuple]:
        return [call[1:] for call in self.calls if call[0] == hook]


def as_tree(y: torch.Tensor) -> dict:
    return {"position": (y[:2],), "velocity": y[2:]}


def from_tree(tree: dict) -> torch.Tensor:
    return torch.cat([tree["position"][0], tree["velocity"]])


def tree_field(t, tree):
    return as_tree(D1.f(t, from_tree(tree)))


def _controller(name: str, first_step: float | None = None):
    solver = make_solver(name)
    if solver.adaptive:
        rtol, atol = adaptive_tolerances(solver)
        return no.PIController(rtol=rtol, atol=atol, first_step=first_step)
    return no.FixedGrid(step_size=fixed_step(name, 0.1))


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_hooks_receive_the_state_structure_and_match_stats(name: str, backward: bool) -> None:
    """A first step far too large forces rejections in adaptive methods."""
    times = [2.0, 0.0] if backward else [0.0, 2.0]
    ts = torch.tensor(times, dtype=torch.float64)
    y0 = torch.from_numpy(D1.exact(ts[:1].numpy()))[0]
    recorder = Recorder()
    sol = no.solve(
        tree_field,
        as_tree(y0),
        ts,
        solver=make_solver(name),
        controller=_controller(name, first_step=1.5),
        callbacks=recorder,
    )
    stats = sol.stats
    assert len(recorder.of("step")) == stats.n_steps
    assert len(recorder.of("accept")) == stats.n_accepted
    assert len(recorder.of("reject")) == stats.n_rejected
    if make_solver(name).adaptive:
        assert stats.n_rejected >= 1
    direction = -1.0 if backward else 1.0
    for _, t, y, dt in recorder.calls:
        assert isinstance(y, dict) and isinstance(y["position"], tuple)
        assert y["position"][0].shape == (2,) and y["velocity"].shape == (2,)
        assert t.ndim == 0 and dt.ndim == 0
        assert float(dt) * direction > 0
    # every accept/reject answers the step just announced, with the same arguments
    for (hook, t, y, dt), (_, t_step, y_step, dt_step) in zip(
        recorder.calls[1::2], recorder.calls[0::2]
    ):
        assert hook in ("accept", "reject")
        assert float(t) == float(t_step) and float(dt) == float(dt_step)
        assert torch.equal(from_tree(y), from_tree(y_step))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_accepted_steps_chain_from_y0_to_the_end(name: str) -> None:
    """Accepted steps tile [t0, t1]: each starts where the previous ended, the first at
    (t0, y0); the states at their starts lie on the exact orbit."""
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    recorder = Recorder()
    no.solve(
        D1.f,
        D1.y0_tensor(),
        ts,
        solver=make_solver(name),
        controller=_controller(name),
        callbacks=recorder,
    )
    accepted = recorder.of("accept")
    assert float(accepted[0][0]) == 0.0 and torch.equal(accepted[0][1], D1.y0_tensor())
    for (t, _, dt), (t_next, _, _) in zip(accepted, accepted[1:]):
        assert math.isclose(float(t + dt), float(t_next), rel_tol=1e-15, abs_tol=1e-15)
    assert math.isclose(float(accepted[-1][0] + accepted[-1][2]), 2.0, rel_tol=1e-15)
    if make_solver(name).adaptive:
        starts = np.array([float(t) for t, _, _ in accepted])
        exact = torch.from_numpy(D1.exact(starts))
        states = torch.stack([y for _, y, _ in accepted])
        rtol, atol = adaptive_tolerances(make_solver(name))
        allowed = 1000 * (rtol + atol) * accuracy_factor(name)
        assert float((states - exact).abs().max()) <= allowed


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_retry_after_rejection_is_shorter(name: str) -> None:
    recorder = Recorder()
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    no.solve(
        D1.f,
        D1.y0_tensor(),
        ts,
        solver=make_solver(name),
        controller=_controller(name, first_step=1.5),
        callbacks=recorder,
    )
    hooks = [call[0] for call in recorder.calls]
    retries = [i for i, hook in enumerate(hooks) if hook == "reject"]
    assert retries
    for i in retries:
        _, t, y, dt = recorder.calls[i]
        _, t_next, y_next, dt_next = recorder.calls[i + 1]
        assert float(t_next) == float(t) and torch.equal(y_next, y)
        assert abs(float(dt_next)) < abs(float(dt))


def test_partial_callbacks_and_no_effect_on_the_solution() -> None:
    """An object may define any subset of the hooks; callbacks change nothing computed."""

    class OnlyAccept:
        def __init__(self) -> None:
            self.count = 0

        def on_accept(self, t, y, dt) -> None:
            self.count += 1

    ts = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    hook = OnlyAccept()
    controller = no.PIController(rtol=1e-8, atol=1e-10)
    with_hook = no.solve(D1.f, D1.y0_tensor(), ts, controller=controller, callbacks=hook)
    without = no.solve(D1.f, D1.y0_tensor(), ts, controller=controller)
    assert hook.count == with_hook.stats.n_accepted > 0
    assert torch.equal(with_hook.ys, without.ys)
    assert with_hook.stats == without.stats
