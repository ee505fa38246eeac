"""Solves under ``torch.autocast``: f computes in 16 bits, its outputs are cast to the state's
dtype (torchdiffeq's stage sums promote them), and the solver keeps the state, the stages,
the error estimates and the adjoint in the state's dtype."""

from __future__ import annotations

import warnings

import pytest
import torch

import neuralode as no


class Field(torch.nn.Module):
    def __init__(self, cast: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )
        self.cast = cast  # f casting its own output: what the solve does for it

    def forward(self, t, y):
        out = self.net(y)
        return out.float() if self.cast else out


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


Y0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
TS = torch.linspace(0.0, 1.0, 3)
TOLERANCES = dict(controller=no.PIController(rtol=1e-3, atol=1e-4))


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("gradient", [no.Direct(), no.Backsolve(), no.Checkpointed()])
def test_a_solve_under_autocast_is_the_solve_of_f_cast_to_the_state_dtype(gradient, per_sample):
    results = []
    for cast in (False, True):
        field = Field(cast)
        with autocast():
            sol = no.solve(field, Y0, TS, gradient=gradient, per_sample=per_sample, **TOLERANCES)
            loss = sol.ys[-1].square().sum()
        grads = torch.autograd.grad(loss, list(field.parameters()))
        results.append((sol.ys, sol.stats.nfe, grads))
    (ys, nfe, grads), (ys_cast, nfe_cast, grads_cast) = results
    assert ys.dtype == torch.float32
    assert torch.equal(ys, ys_cast) and nfe == nfe_cast
    for g, g_cast in zip(grads, grads_cast):
        assert torch.equal(g, g_cast)
    # f in bfloat16 (8 bits of mantissa) moves the solution by its rounding, no more
    exact = no.solve(Field(), Y0, TS, **TOLERANCES).ys
    assert (ys - exact).abs().max() < 3e-2


def test_odeint_and_nested_states_under_autocast():
    field = Field()
    with autocast():
        ys = no.odeint(field, Y0, TS, rtol=1e-3, atol=1e-4)
        pair = no.solve(lambda t, y: (field(t, y[0]), field(t, y[1])), (Y0, Y0), TS, **TOLERANCES)
    assert ys.dtype == torch.float32
    assert torch.equal(pair.ys[0], pair.ys[1])
    assert (ys - no.odeint(field, Y0, TS, rtol=1e-3, atol=1e-4)).abs().max() < 3e-2


def test_tolerances_below_the_autocast_resolution_warn_and_others_do_not():
    field = Field()
    with autocast(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        no.odeint(field, Y0, TS, rtol=1e-3, atol=1e-4)
        assert not caught
        no.odeint(field, Y0, TS)  # torchdiffeq's defaults, 1e-7 and 1e-9
    (warning,) = caught
    assert "below the resolution of torch.bfloat16" in str(warning.message)
    assert "torch.autocast" in str(warning.message)
    assert warning.filename == __file__  # the user's line, through odeint and solve


def test_outside_autocast_a_16_bit_output_is_still_refused():
    with pytest.raises(TypeError, match="returned dtype torch.bfloat16; the state has dtype"):
        no.solve(lambda t, y: y.bfloat16(), Y0, TS)


def test_compile_true_under_autocast_compiles_each_step_without_warnings():
    field = Field()
    solutions = []
    for compile in (True, "step"):
        with torch.no_grad(), autocast(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solutions.append(no.solve(field, Y0, TS, compile=compile, **TOLERANCES).ys)
        assert not [w for w in caught if "whole solve" in str(w.message)], compile
    assert solutions[0].dtype == torch.float32
    assert torch.equal(*solutions)
