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


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "dopri8", "kvaerno5", "radau"])
@pytest.mark.parametrize("gradient", [no.Direct(), no.Backsolve(params=())])
def test_the_solvers_own_arithmetic_stays_in_the_state_dtype(method, gradient):
    """f = -A y by a matrix product, which autocast runs in bfloat16, against the same f
    computing in bfloat16 by itself outside autocast: equal (the implicit methods to f's
    rounding, at which their Newton iterations stop under autocast), so no interpolation,
    stage sum, Newton solve or adjoint of the solver ran in 16 bits (tsit5's interpolant did:
    0.18 off at an output inside a step)."""
    a = torch.tensor([[1.0, 0.5], [-0.5, 1.0]])

    def under_autocast(t, y):
        return -(y @ a.T)

    def by_itself(t, y):
        return -(y.bfloat16() @ a.T.bfloat16()).float()

    results = []
    for field, context in ((under_autocast, autocast), (by_itself, torch.autocast)):
        y0 = Y0.clone().requires_grad_(True)
        enabled = dict(device_type="cpu", enabled=False) if field is by_itself else {}
        with context(**enabled):
            sol = no.solve(
                field,
                y0,
                torch.linspace(0.0, 1.0, 4),
                solver=no.solvers.METHODS[method](),
                gradient=gradient,
                **TOLERANCES,
            )
            (grad,) = torch.autograd.grad(sol.ys.square().sum(), y0)
        results.append((sol.ys, grad))
    if method in ("kvaerno5", "radau"):  # (Newton stops at f's rounding under autocast)
        torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=2e-3)
    else:
        assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize("method", ["implicit_euler", "trapezoid", "gl4", "radauIIA5"])
def test_newton_converges_to_the_rounding_of_f_under_autocast(method):
    # (to the state's rounding, 4 eps, Newton on fixed steps did not converge: "diverging,
    # contraction rate 1" against f's bfloat16 rounding)
    field, grid = Field(), dict(controller=no.FixedGrid(step_size=0.05))
    solver = no.solvers.METHODS[method]
    with autocast():
        ys = no.solve(field, Y0, TS, solver=solver(), **grid).ys
    exact = no.solve(field, Y0, TS, solver=solver(), **grid).ys
    assert (ys - exact).abs().max() < 3e-2
