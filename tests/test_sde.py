"""neuralode.sde against mathematics: strong and weak orders on SDEs with known solutions,
Itô-Stratonovich conversion, Brownian statistics, gradients (finite differences, adjoint vs
backprop), torchsde's API and error meanings, and agreement with torchsde when installed."""

from __future__ import annotations

import math

import pytest
import torch
from sde_problems import GBM, OU, GeneralLinear, ScalarGBM, slope

from neuralode import sde as nsde
from neuralode.sde import settings

F64 = torch.float64
TS = torch.tensor([0.0, 1.0], dtype=F64)


def bm_for(batch, m, levy="none", entropy=11, **kwargs):
    return nsde.BrownianInterval(
        0.0,
        1.0,
        size=(batch, m),
        dtype=F64,
        entropy=entropy,
        levy_area_approximation=levy,
        **kwargs,
    )


def noise_size(sde, d):
    if sde.noise_type == "scalar":
        return 1
    return sde.b.shape[1] if sde.noise_type == "general" else d


# (sde class, sde type, method, options, Lévy area, expected strong order)
STRONG = [
    (GBM, "ito", "euler", None, "none", 0.5),
    (GBM, "ito", "milstein", None, "none", 1.0),
    (GBM, "ito", "milstein", {"grad_free": True}, "none", 1.0),
    (GBM, "ito", "srk", None, "space-time", 1.5),
    (ScalarGBM, "ito", "euler", None, "none", 0.5),
    (ScalarGBM, "ito", "milstein", None, "none", 1.0),
    (ScalarGBM, "ito", "srk", None, "space-time", 1.5),
    (GeneralLinear, "ito", "euler", None, "none", 0.5),
    (GBM, "stratonovich", "midpoint", None, "none", 1.0),
    (GBM, "stratonovich", "heun", None, "none", 1.0),
    (GBM, "stratonovich", "euler_heun", None, "none", 1.0),
    (GBM, "stratonovich", "milstein", None, "none", 1.0),
    (GBM, "stratonovich", "milstein", {"grad_free": True}, "none", 1.0),
    (GBM, "stratonovich", "reversible_heun", None, "none", 1.0),
    (GBM, "stratonovich", "log_ode", None, "foster", 1.0),
    (ScalarGBM, "stratonovich", "midpoint", None, "none", 1.0),
    # commuting diffusion matrices: the Stratonovich methods reach order 1 on general noise
    (GeneralLinear, "stratonovich", "midpoint", None, "none", 1.0),
    (GeneralLinear, "stratonovich", "heun", None, "none", 1.0),
    (GeneralLinear, "stratonovich", "euler_heun", None, "none", 1.0),
    (GeneralLinear, "stratonovich", "reversible_heun", None, "none", 1.0),
    (GeneralLinear, "stratonovich", "log_ode", None, "davie", 1.0),
]


@pytest.mark.parametrize("cls, sde_type, method, options, levy, order", STRONG)
def test_strong_order_on_known_solutions(cls, sde_type, method, options, levy, order):
    sde, batch, d = cls(sde_type), 256, 2
    bm = bm_for(batch, noise_size(sde, d), levy)
    y0 = torch.ones(batch, d, dtype=F64)
    dts = [2.0**-k for k in range(3, 8)]
    with torch.no_grad():
        exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
        errors = [
            (nsde.sdeint(sde, y0, TS, bm=bm, method=method, dt=dt, options=options)[-1] - exact)
            .abs()
            .mean()
            .item()
            for dt in dts
        ]
    assert slope(dts, errors) == pytest.approx(order, abs=0.15)


@pytest.mark.parametrize(
    "method, levy, order", [("euler", "none", 1.0), ("srk", "space-time", 2.0)]
)
def test_strong_order_additive_noise(method, levy, order):
    # Ornstein-Uhlenbeck with a time-dependent forcing; reference: srk at dt = 2^-9 (its error
    # 64 times below the finest step's; the slopes are those against 2^-11 to 0.01). SRA1 on
    # this linear additive-noise SDE converges at order 2 (the 2.0-type behaviour of SRA schemes)
    sde, batch = OU(), 128
    bm = bm_for(batch, 2, "space-time")
    y0 = torch.ones(batch, 2, dtype=F64)
    with torch.no_grad():
        reference = nsde.sdeint(sde, y0, TS, bm=bm, method="srk", dt=2.0**-9)[-1]
        dts = [2.0**-k for k in range(2, 7)]
        errors = [
            (nsde.sdeint(sde, y0, TS, bm=bm, method=method, dt=dt)[-1] - reference).abs().mean()
            for dt in dts
        ]
    assert slope(dts, [e.item() for e in errors]) == pytest.approx(order, abs=0.2)


@pytest.mark.parametrize(
    "sde_type, method, levy",
    [
        ("ito", "euler", "none"),
        ("ito", "milstein", "none"),
        ("ito", "srk", "space-time"),
        ("stratonovich", "midpoint", "none"),
        ("stratonovich", "heun", "none"),
        ("stratonovich", "euler_heun", "none"),
        ("stratonovich", "milstein", "none"),
        ("stratonovich", "reversible_heun", "none"),
        ("stratonovich", "log_ode", "foster"),
    ],
)
def test_weak_order_gbm(sde_type, method, levy):
    """The bias of E[Y_T], estimated on the same paths as the exact solution (low variance)."""
    sde, batch = GBM(sde_type, mu=1.0, sigma=0.5), 20000
    bm = bm_for(batch, 1, levy, entropy=5)
    y0 = torch.ones(batch, 1, dtype=F64)
    dts = [2.0**-k for k in range(2, 6)]
    with torch.no_grad():
        exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
        bias = [
            (nsde.sdeint(sde, y0, TS, bm=bm, method=method, dt=dt)[-1] - exact).mean().abs().item()
            for dt in dts
        ]
    if method == "srk":  # weak order 1.5 for srk; its bias is at the Monte Carlo noise level
        assert max(bias) < 1e-2
    else:
        assert slope(dts, bias) > 0.8
        assert bias[-1] < 0.1


def test_ito_stratonovich_conversion():
    """The Itô SDE (f, g) and the Stratonovich SDE (f - g g'/2, g) have the same solution."""

    class Ito(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.sin(y) - 0.5 * y

        def g(self, t, y):
            return 0.5 * torch.cos(y)

    class Strat(Ito):
        sde_type = "stratonovich"

        def f(self, t, y):  # g g' = 0.5 cos(y) * (-0.5 sin(y))
            return super().f(t, y) + 0.125 * torch.cos(y) * torch.sin(y)

    bm = bm_for(64, 3)
    y0 = torch.linspace(-1, 1, 64 * 3, dtype=F64).reshape(64, 3)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    with torch.no_grad():  # steps of 2^-8: 1.5e-3 apart (0.11 without the conversion)
        ito = nsde.sdeint(Ito(), y0, ts, bm=bm, method="milstein", dt=2**-8)
        strat = nsde.sdeint(Strat(), y0, ts, bm=bm, method="midpoint", dt=2**-8)
        plain = nsde.sdeint(Ito(), y0, ts, bm=bm, method="milstein", dt=2**-8)
    assert (ito - strat).abs().max() < 5e-3
    assert (ito - plain).abs().max() == 0  # the same Brownian queries give the same path


# ---------------------------------------------------------------------------------------------
# Brownian motion


def test_brownian_increments_and_bridge_statistics():
    n = 40000
    bm = nsde.BrownianInterval(0.0, 2.0, size=(n,), dtype=F64, entropy=3)
    w1, w2 = bm(0.0, 1.5), bm(1.5, 2.0)
    inside = bm(0.3, 0.8)
    for x, var in ((w1, 1.5), (w2, 0.5), (inside, 0.5)):
        assert abs(x.mean().item()) < 4 * math.sqrt(var / n)
        assert x.var().item() == pytest.approx(var, rel=0.04)
    assert abs(torch.corrcoef(torch.stack([w1, w2]))[0, 1].item()) < 0.03  # independent
    # bridge: W(0, s) given W(0, 2) has mean s/2 W(0,2) and variance s (2 - s) / 2
    total = bm(0.0, 2.0)
    assert torch.allclose(total, w1 + w2, atol=1e-12)
    residual = bm(0.0, 0.3) - 0.15 * total
    assert residual.var().item() == pytest.approx(0.3 * 1.7 / 2, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([residual, total]))[0, 1].item()) < 0.03


def test_brownian_space_time_levy_area_statistics():
    n = 40000
    bm = nsde.BrownianInterval(
        0.0, 1.0, size=(n,), dtype=F64, entropy=4, levy_area_approximation="space-time"
    )
    w, u = bm(0.2, 0.7, return_U=True)
    h = u / 0.5 - 0.5 * w  # U = h (W / 2 + H)
    assert h.var().item() == pytest.approx(0.5 / 12, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([w, h]))[0, 1].item()) < 0.03
    w_a, a = nsde.BrownianInterval(
        0.0, 1.0, size=(8, 3), dtype=F64, entropy=4, levy_area_approximation="foster"
    )(0.0, 0.5, return_A=True)
    assert a.shape == (8, 3, 3) and torch.allclose(a, -a.transpose(-1, -2))


@pytest.mark.parametrize("levy", ["davie", "foster"])
@pytest.mark.parametrize("kind", ["interval", "virtual"])
def test_levy_area_approximations_have_the_levy_areas_variance(levy, kind):
    """A_12 = 1/2 int (W_1 dW_2 - W_2 dW_1) over an interval of length h has variance h^2 / 4
    (a fine Monte Carlo of the integral confirms it). 40000 samples: the standard error of
    the variance is about 0.0023 h^2, the bound 0.01 h^2 (the over-dispersed approximations of
    torchsde give 0.33 h^2 (Davie) and 0.22 h^2 (Foster))."""
    n, h = 40000, 0.5
    cls = nsde.BrownianInterval if kind == "interval" else nsde.VirtualBrownianTree
    bm = cls(0.0, 1.0, size=(n, 2), dtype=F64, entropy=7, levy_area_approximation=levy)
    if kind == "interval":
        bm(0.0, 0.3)  # [0.1, 0.6] is then [0.1, 0.3] and [0.3, 0.6] concatenated
    _, a = bm(0.1, 0.1 + h, return_A=True)
    assert a[:, 0, 1].var().item() / h**2 == pytest.approx(0.25, abs=0.01)


def test_fosters_levy_area_has_the_conditional_variance_given_h():
    """Given W and H, A_12 has mean H_1 W_2 - W_1 H_2 and variance h^2 / 20 + h (H_1^2 + H_2^2)
    / 5 (Foster 2020; a least-squares fit on a fine Monte Carlo of the integral gives 0.0497
    and 0.199). Over 10 seeds the fitted coefficients vary by 0.0011 and 0.008: the bounds are
    5 of those (torchsde's approximation has the intercept 0.02)."""
    n, h = 40000, 0.5
    bm = nsde.BrownianInterval(
        0.0, h, size=(n, 2), dtype=F64, entropy=0, levy_area_approximation="foster"
    )
    w, u, a = bm(0.0, h, return_U=True, return_A=True)
    big_h = u / h - 0.5 * w
    residual = a[:, 0, 1] - (big_h[:, 0] * w[:, 1] - w[:, 0] * big_h[:, 1])
    squares = big_h[:, 0] ** 2 + big_h[:, 1] ** 2
    design = torch.stack([torch.full_like(squares, h * h), h * squares], 1)
    intercept, slope_h = torch.linalg.lstsq(design, (residual**2)[:, None]).solution.ravel()
    assert intercept.item() == pytest.approx(0.05, abs=0.006)
    assert slope_h.item() == pytest.approx(0.2, abs=0.04)


def test_brownian_queries_are_reproducible_and_consistent():
    def fresh(**kwargs):
        return nsde.BrownianInterval(0.0, 1.0, size=(5, 2), dtype=F64, entropy=9, **kwargs)

    a, b = fresh(), fresh()
    queries = [(0.0, 0.1), (0.1, 0.35), (0.35, 1.0), (0.05, 0.6)]
    for ta, tb in queries:
        assert torch.equal(a(ta, tb), b(ta, tb))
    # one sample path: increments add up, however they were split
    assert torch.allclose(a(0.0, 0.1) + a(0.1, 0.35) + a(0.35, 1.0), a(0.0, 1.0), atol=1e-12)
    # a tiny cache recomputes evicted intervals from the seeds: the same values
    small = fresh(cache_size=2)
    first = [small(ta, tb) for ta, tb in queries]
    again = [small(ta, tb) for ta, tb in reversed(queries)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # BrownianTree does not depend on the order of the queries
    w0 = torch.zeros(5, 2, dtype=F64)
    t1, t2 = nsde.BrownianTree(0.0, w0, entropy=1), nsde.BrownianTree(0.0, w0, entropy=1)
    x = t1(0.3, 0.7)
    t2(0.9, 0.95)
    t2(0.1, 0.5)
    assert torch.allclose(t2(0.3, 0.7), x, atol=1e-12)
    # BrownianPath(t) is w0 + W(t0, t); ReverseBrownian flips the interval
    path = nsde.BrownianPath(0.0, torch.ones(3, dtype=F64))
    assert torch.allclose(path(0.5) - 1, path(0.0, 0.5))
    base = fresh()
    assert torch.equal(nsde.ReverseBrownian(base)(-0.6, -0.2), base(0.2, 0.6))
    like = nsde.brownian_interval_like(torch.zeros(4, 3), t1=2.0)
    assert like.shape == (4, 3) and like(0.0, 2.0).dtype == torch.float32


def test_brownian_bad_input():
    with pytest.raises(ValueError, match="less than terminal"):
        nsde.BrownianInterval(1.0, 0.0, size=(2,))
    with pytest.raises(ValueError, match="levy_area_approximation"):
        nsde.BrownianInterval(size=(2,), levy_area_approximation="exact")
    with pytest.raises(ValueError, match="tol"):
        nsde.BrownianInterval(size=(2,), halfway_tree=True)
    with pytest.raises(RuntimeError, match="ta <= tb"):
        nsde.BrownianInterval(size=(2,))(0.5, 0.2)
    with pytest.raises(ValueError, match="space-time"):
        nsde.BrownianInterval(size=(2,))(0.0, 0.5, return_U=True)


# ---------------------------------------------------------------------------------------------
# API, shapes and errors


def test_settings_hold_torchsdes_values():
    assert settings.METHODS.all() == sorted(
        [
            "euler",
            "milstein",
            "srk",
            "midpoint",
            "reversible_heun",
            "adjoint_reversible_heun",
            "heun",
            "log_ode",
            "euler_heun",
        ]
    )
    assert settings.NOISE_TYPES.all() == ["additive", "diagonal", "general", "scalar"]
    assert settings.SDE_TYPES.all() == ["ito", "stratonovich"]
    assert settings.LEVY_AREA_APPROXIMATIONS.all() == ["davie", "foster", "none", "space-time"]
    assert "grad_free" in settings.METHOD_OPTIONS and "euler" in settings.METHODS
    torchsde = pytest.importorskip("torchsde")
    for name in ("METHODS", "NOISE_TYPES", "SDE_TYPES", "LEVY_AREA_APPROXIMATIONS"):
        assert getattr(settings, name).all() == getattr(torchsde.settings, name).all()


def test_types_and_the_tree_display_are_torchsdes(capsys):
    torchsde = pytest.importorskip("torchsde")
    public = {name for name in vars(torchsde.types) if not name.startswith("_")} - {"torch"}
    assert public <= set(nsde.types.__all__)
    for name in public:
        assert getattr(nsde.types, name) == getattr(torchsde.types, name), name
    printed = []
    for library in (nsde, torchsde):
        bm = library.BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
        bm(0.2, 0.7)
        bm(0.5, 0.6)
        bm.display_binary_tree()
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    assert printed[0].splitlines()[:3] == ["(0.0, 1.0)", " (0.0, 0.2)", " (0.2, 1.0)"]


class Named(nsde.BaseSDE):
    def __init__(self, sde_type="ito"):
        super().__init__(noise_type="diagonal", sde_type=sde_type)

    def drift(self, t, y):
        return -y

    def diffusion(self, t, y):
        return 0.1 * torch.ones_like(y)

    def prior(self, t, y):
        return -2 * y


class Joint(torch.nn.Module):
    """A posterior drift f = 1 with a joint f_and_g, a prior drift h = -1, no noise."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return torch.ones_like(y)

    def h(self, t, y):
        return -torch.ones_like(y)

    def g(self, t, y):
        return torch.zeros_like(y)

    def f_and_g(self, t, y):
        return self.f(t, y), self.g(t, y)


@pytest.mark.parametrize("method", ["euler", "milstein", "srk"])
def test_a_renamed_drift_is_used_although_the_sde_has_a_joint_f_and_g(method):
    # (the joint method calls the drift the names replace; torchsde's euler goes on using it)
    y0 = torch.zeros(1, 1, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = nsde.sdeint(Joint(), y0, ts, dt=0.1, method=method, names={"drift": "h"})
    torch.testing.assert_close(ys[-1], -torch.ones_like(y0))


class Reversible(torch.nn.Module):
    noise_type, sde_type = "diagonal", "stratonovich"

    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def f(self, t, y):
        return -self.rate * y

    def g(self, t, y):
        return 0.1 * y


def test_reversible_heun_with_one_output_time_and_an_empty_extra_state():
    sde, ts = Reversible(), torch.tensor([0.0], dtype=torch.float64)
    y0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    ys = nsde.sdeint_adjoint(sde, y0, ts, method="reversible_heun", dt=0.1)
    ys.sum().backward()  # (no step: the extra state was (), read as the parameters' gradient)
    assert torch.equal(y0.grad, torch.ones_like(y0)) and sde.rate.grad == 0
    _, (f0, g0, z0) = nsde.sdeint(sde, y0, ts, method="reversible_heun", dt=0.1, extra=True)
    assert torch.equal(z0, y0) and torch.equal(f0, sde.f(0, y0)) and torch.equal(g0, sde.g(0, y0))
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    solves = [
        nsde.sdeint(
            sde,
            y0,
            ts,
            method="reversible_heun",
            dt=0.1,
            extra_solver_state=extra,
            bm=nsde.BrownianInterval(0.0, 0.5, size=(2, 3), dtype=torch.float64, entropy=3),
        )
        for extra in (None, ())  # () (what euler keeps) starts the method's own
    ]
    assert torch.equal(*solves)


class NonSymmetricScalar(torch.nn.Module):
    """dY = C Y o dW (or Ito), one Brownian motion, C non-symmetric: Y_1 = expm(C W_1) y0
    (Stratonovich) or expm(C W_1 - C^2 / 2) y0 (Ito)."""

    noise_type = "scalar"
    C = torch.tensor([[0.2, 0.9], [-0.4, 0.3]], dtype=torch.float64)

    def __init__(self, sde_type):
        super().__init__()
        self.sde_type = sde_type

    def f(self, t, y):
        return torch.zeros_like(y)

    def g(self, t, y):
        return (y @ self.C.T).unsqueeze(-1)


@pytest.mark.parametrize("sde_type", ["ito", "stratonovich"])
def test_scalar_milstein_uses_the_jacobian_of_g_not_its_transpose(sde_type):
    # torchsde's derivative-using Milstein (g^T-Jacobian) errs 2.6e-2 (Ito) and 0.4 (Stratonovich)
    sde, batch = NonSymmetricScalar(sde_type), 200
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64).expand(batch, 2)
    bm = nsde.BrownianInterval(0.0, 1.0, size=(batch, 1), dtype=torch.float64, entropy=5)
    w = bm(0.0, 1.0)[:, 0]
    drift = -0.5 * sde.C @ sde.C if sde_type == "ito" else torch.zeros_like(sde.C)
    exact = torch.stack([torch.linalg.matrix_exp(drift + sde.C * x) @ y0[0] for x in w])
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for options in (None, {"grad_free": True}):
        ys = nsde.sdeint(sde, y0, ts, bm=bm, method="milstein", dt=2**-8, options=options)
        assert (ys[-1] - exact).abs().mean() < 2e-3, options


def test_shapes_names_logqp_and_extra():
    y0 = torch.ones(4, 3)
    ts = torch.linspace(0, 1, 6)
    names = {"drift": "drift", "diffusion": "diffusion", "prior_drift": "prior"}
    ys = nsde.sdeint(Named(), y0, ts, names=names, dt=0.05)
    assert ys.shape == (6, 4, 3) and ys.dtype == torch.float32
    ys, logqp = nsde.sdeint(Named(), y0, ts, names=names, logqp=True, dt=0.05, method="euler")
    assert ys.shape == (6, 4, 3) and logqp.shape == (5, 4)
    # log-ratio increment: int 0.5 |(f - h) / g|^2 dt = int 0.5 * 3 * (y / 0.1)^2 dt > 0
    assert (logqp > 0).all()
    ys, state = nsde.sdeint(
        Named("stratonovich"),
        y0,
        ts,
        names=names,
        method="reversible_heun",
        extra=True,
        dt=0.05,
        bm=nsde.BrownianInterval(0, 1, size=(4, 3), entropy=0),
    )
    assert len(state) == 3 and state[2].shape == (4, 3)
    # restarting from the extra state continues the same solve
    ts2 = torch.linspace(1, 1.2, 2)
    ys2 = nsde.sdeint(
        Named("stratonovich"),
        ys[-1],
        ts2,
        names=names,
        method="reversible_heun",
        dt=0.05,
        extra_solver_state=state,
        bm=nsde.BrownianInterval(1, float(ts2[-1]), size=(4, 3), entropy=1),
    )
    assert ys2.shape == (2, 4, 3)

    # lists of floats as ts; an SDE with only f_and_g; g_prod with an explicit bm
    class FG(torch.nn.Module):
        noise_type, sde_type = "general", "ito"

        def f_and_g(self, t, y):
            return -y, torch.ones(*y.shape, 2)

    assert nsde.sdeint(FG(), y0, [0.0, 0.5, 1.0], dt=0.1).shape == (3, 4, 3)

    class GProd(torch.nn.Module):
        noise_type, sde_type = "general", "ito"

        def f(self, t, y):
            return -y

        def g_prod(self, t, y, v):
            return v.sum(-1, keepdim=True).expand_as(y)

    bm = nsde.BrownianInterval(0, 1, size=(4, 5))
    assert nsde.sdeint(GProd(), y0, [0.0, 1.0], bm=bm, dt=0.1).shape == (2, 4, 3)


def test_bad_input_has_torchsdes_meaning():
    gbm, y0, ts = GBM(), torch.ones(3, 2, dtype=F64), TS
    cases = [
        (dict(y0=torch.ones(3, dtype=F64)), "2-dimensional"),
        (dict(ts=torch.tensor([0.0, 1.0, 0.5], dtype=F64)), "strictly increasing"),
        (dict(ts="abc"), "1-D Tensor"),
        (dict(method="rk4"), "Expected method"),
        (dict(method="midpoint"), "ito"),
        (dict(method="log_ode"), "ito"),
        (dict(bm=nsde.BrownianInterval(0, 1, size=(5, 2))), "Batch sizes not consistent"),
        (dict(bm=nsde.BrownianInterval(0, 1, size=(3,))), "bm"),
        (dict(method="srk", bm=nsde.BrownianInterval(0, 1, size=(3, 2), dtype=F64)), "levy"),
        (dict(names={"drifft": "f"}), "names"),
    ]
    for kwargs, message in cases:
        args = dict(sde=gbm, y0=y0, ts=ts) | kwargs
        with pytest.raises(ValueError, match=message):
            nsde.sdeint(**args)
    with pytest.raises(ValueError, match="noise type"):
        nsde.SDEIto(noise_type="diag")
    with pytest.raises(ValueError, match="noise_type"):
        nsde.sdeint(torch.nn.Linear(2, 2), y0, ts)
    with pytest.raises(ValueError, match="general"):
        nsde.sdeint(GeneralLinear(), torch.ones(3, 2, dtype=F64), ts, method="milstein")
    with pytest.raises(ValueError, match="Scalar noise"):
        bad = ScalarGBM()
        bad.g = lambda t, y: torch.ones(*y.shape, 2, dtype=F64)
        nsde.sdeint(bad, y0, ts)
    with pytest.raises(ValueError, match="must not require gradient"):
        nsde.sdeint(gbm, y0, TS.clone().requires_grad_())
    with pytest.raises(ValueError, match="adjoint"):
        nsde.sdeint_adjoint(gbm, y0, ts, adjoint_method="srk")
    # torchsde's message: the adjoint of reversible Heun is no forward method
    stratonovich = GBM("stratonovich")
    for solve in (nsde.sdeint, nsde.sdeint_adjoint):
        with pytest.raises(ValueError, match="can only be used for adjoint_method"):
            solve(stratonovich, y0, ts, method="adjoint_reversible_heun")
    with pytest.raises(ValueError, match="nn.Module"):
        nsde.sdeint_adjoint(Named().__class__.__dict__, y0, ts)
    with pytest.warns(UserWarning, match="Unexpected arguments"):
        nsde.sdeint(gbm, y0, ts, dt=0.5, rtl=1e-3)


class _Meta(nsde.BaseBrownian):
    """A Brownian motion that says its increments are on the meta device."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        return self.inner(ta, tb, return_U=return_U, return_A=return_A)

    def __repr__(self):
        return "_Meta"

    dtype, device, shape = F64, torch.device("meta"), torch.Size((3, 2))
    levy_area_approximation = "none"


@pytest.mark.parametrize("solve", [nsde.sdeint, nsde.sdeint_adjoint])
def test_input_that_would_give_a_wrong_answer_is_refused(solve):
    """torchsde solves these: with float32 noise in a float64 solve, with no noise outside the
    Brownian motion's interval (a warning per step), or fails inside the loop (NaN, inf)."""
    gbm, y0 = GBM(), torch.ones(3, 2, dtype=F64)

    def interval(t0=0.0, t1=1.0, **kwargs):
        return nsde.BrownianInterval(t0, t1, size=(3, 2), **({"dtype": F64} | kwargs))

    cases = [
        (dict(bm=interval(dtype=torch.float32)), "dtype torch.float32 is not y0's"),
        (dict(bm=_Meta(interval())), "device meta is not y0's"),
        (dict(ts=torch.tensor([0.0, 2.0], dtype=F64)), r"covers \[0.0, 1.0\] but `ts` spans"),
        (dict(bm=interval(0.5, 1.0)), r"covers \[0.5, 1.0\]"),
        (dict(bm=nsde.BrownianPath(0.0, y0), ts=[0.0, 1.5]), r"covers \[0.0, 1.0\]"),
        (dict(ts=torch.tensor([0.0, math.nan, 1.0], dtype=F64)), "finite"),
        (dict(ts=torch.tensor([0.0, math.inf], dtype=F64)), "finite"),
        (dict(y0=torch.ones(3, 2, dtype=torch.long), bm=None), "floating point"),
    ]
    for kwargs, message in cases:
        args = dict(sde=gbm, y0=y0, ts=TS, bm=interval(), dt=0.1, method="euler") | kwargs
        with pytest.raises(ValueError, match=message):
            solve(**args)
    # output times in float32 may pass the Brownian motion's end by their round-off (the
    # query is clamped by that round-off, with the Brownian motion's warning)
    ts32 = torch.linspace(0, 0.3, 4)
    assert float(ts32[-1]) > 0.3
    bm32 = nsde.BrownianInterval(0.0, 0.3, size=(3, 2))
    with pytest.warns(UserWarning, match="clamped"):
        ys = solve(GBM().float(), y0.float(), ts32, bm=bm32, dt=0.1, method="euler")
    assert ys.shape == (4, 3, 2)


def test_adaptive_stepping_meets_the_tolerance_on_gbm():
    sde, batch = GBM(), 64
    bm = bm_for(batch, 2, "space-time")
    y0 = torch.ones(batch, 2, dtype=F64)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    with torch.no_grad():
        loose = nsde.sdeint(sde, y0, TS, bm=bm, method="srk", adaptive=True, rtol=1e-2, atol=1e-2)
        tight = nsde.sdeint(sde, y0, TS, bm=bm, method="srk", adaptive=True, rtol=1e-4, atol=1e-4)
    assert (tight[-1] - exact).abs().max() < (loose[-1] - exact).abs().max()
    assert (tight[-1] - exact).abs().max() < 1e-2


def _at_dt_min_by_sdeint(sde, y0, bm):
    return nsde.sdeint(sde, y0, TS, bm=bm, method="srk", adaptive=True, rtol=1e-9, atol=1e-9,
                       dt=0.01, dt_min=0.01)  # fmt: skip


def _at_dt_min_by_solve(sde, y0, bm):
    import neuralode as no

    controller = no.PIController(1e-9, 1e-9, first_step=0.01, min_step=0.01)
    solver = nsde.SDESolver("srk", step_doubling=True)
    return no.solve(nsde.SDETerm(sde, bm), y0, TS, solver=solver, controller=controller).ys


@pytest.mark.parametrize("solve", [_at_dt_min_by_sdeint, _at_dt_min_by_solve])
def test_steps_at_dt_min_warn_once_per_solve(solve):
    """Tolerances no step of dt_min meets: every step is accepted at dt_min, with one warning
    for the solve (not one per step, which torchsde gives), and one again for the next solve."""
    import warnings

    y0 = torch.ones(4, 2, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with torch.no_grad():
                ys = solve(GBM(), y0, bm_for(4, 2, "space-time"))
    assert torch.isfinite(ys).all()
    hits = [w for w in caught if "hitting the minimum step size" in str(w.message)]
    assert len(hits) == 2, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------------
# gradients


class Tanh(torch.nn.Module):
    """A small neural-ish SDE with diagonal noise whose g_i depends on y_i only."""

    def __init__(self, sde_type="ito", noise_type="diagonal", d=2):
        super().__init__()
        self.sde_type, self.noise_type = sde_type, noise_type
        gen = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(0.5 * torch.randn(d, d, generator=gen, dtype=F64))
        self.a = torch.nn.Parameter(0.5 * torch.randn(d, generator=gen, dtype=F64))
        self.b = torch.nn.Parameter(0.2 + 0.1 * torch.rand(d, generator=gen, dtype=F64))

    def f(self, t, y):
        return torch.tanh(y @ self.w) - 0.3 * y

    def g(self, t, y):
        g = self.b * torch.sigmoid(self.a * y)
        if self.noise_type == "diagonal":
            return g
        if self.noise_type == "scalar":
            return g.unsqueeze(-1)
        if self.noise_type == "additive":
            return self.b.expand(y.shape[0], -1).diag_embed()
        return torch.stack([g, 0.5 * g.flip(-1)], dim=-1)  # general, m = 2


@pytest.mark.parametrize(
    "sde_type, method, levy",
    [
        ("ito", "euler", "none"),
        ("ito", "milstein", "none"),
        ("ito", "srk", "space-time"),
        ("stratonovich", "midpoint", "none"),
        ("stratonovich", "reversible_heun", "none"),
        ("stratonovich", "log_ode", "davie"),
    ],
)
def test_gradients_match_finite_differences_with_a_fixed_brownian_motion(sde_type, method, levy):
    sde = Tanh(sde_type)
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.3, 0.6], dtype=F64)
    w = sde.w.detach().clone().requires_grad_(True)

    def func(y0, w):
        sde_local = Tanh(sde_type)
        del sde_local.w
        sde_local.w = w
        bm = nsde.BrownianInterval(
            0, 0.6, size=(2, 2), dtype=F64, entropy=0, levy_area_approximation=levy
        )
        return nsde.sdeint(sde_local, y0, ts, bm=bm, method=method, dt=0.05)

    assert torch.autograd.gradcheck(func, (y0, w), atol=1e-6, rtol=1e-5)


def _grads(solve, sde, y0):
    for p in [*sde.parameters(), y0]:
        p.grad = None
    ys = solve()
    (ys**2).sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in sde.parameters()]
    return torch.cat([y0.grad.flatten()] + [g.flatten() for g in grads])


@pytest.mark.parametrize(
    "sde_type, noise_type, method, adjoint_method",
    [
        ("ito", "diagonal", "euler", "euler"),
        ("ito", "diagonal", "milstein", "milstein"),
        ("ito", "diagonal", "srk", None),
        ("ito", "scalar", "euler", None),
        ("ito", "general", "euler", None),
        ("ito", "additive", "euler", None),
        ("stratonovich", "diagonal", "midpoint", None),
        ("stratonovich", "diagonal", "milstein", "milstein"),
        ("stratonovich", "general", "heun", "heun"),
        ("stratonovich", "scalar", "euler_heun", "euler_heun"),
    ],
)
def test_stochastic_adjoint_converges_to_backprop(sde_type, noise_type, method, adjoint_method):
    sde = Tanh(sde_type, noise_type)
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.2]], dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 1, 3, dtype=F64)
    m = {"scalar": 1, "general": 2}.get(noise_type, 2)
    levy = "space-time" if method == "srk" else "none"
    errors = []  # relative errors ~5e-3 at 2^-4 and ~1e-3 at 2^-6 (a wrong adjoint's are O(1))
    for dt in (2**-4, 2**-6):
        bm = nsde.BrownianInterval(
            0, 1, size=(3, m), dtype=F64, entropy=2, levy_area_approximation=levy
        )
        kwargs = dict(bm=bm, method=method, dt=dt)
        exact = _grads(lambda kw=kwargs: nsde.sdeint(sde, y0, ts, **kw), sde, y0)
        adjoint = _grads(
            lambda kw=kwargs: nsde.sdeint_adjoint(sde, y0, ts, adjoint_method=adjoint_method, **kw),
            sde,
            y0,
        )
        errors.append(((adjoint - exact).abs().max() / exact.abs().max()).item())
    assert errors[1] < 0.02 and errors[1] < errors[0]


@pytest.mark.parametrize(
    "sde, adjoint_method, message",
    [
        (ScalarGBM(), "milstein", "ito SDE with scalar noise.*use adjoint_method='euler'"),
        (OU(), "milstein", "ito SDE with additive noise.*use adjoint_method='euler'"),
        (
            OU("stratonovich"),
            "milstein",
            "stratonovich SDE with additive noise.*use adjoint_method='midpoint'",
        ),
        (GBM(), "srk", "'srk' cannot be used for adjoint SDEs"),  # not: "set the Lévy area"
        # (torchsde fails in backward())
        (GBM("stratonovich"), "reversible_heun", "needs the diffusion g itself.*'midpoint'"),
        # the user's method with other options: the message ends with the options' advice
        (GBM(), ("milstein", {"grad_free": True}), r"grad_free=False\)`\)\.$"),
    ],
)
def test_an_adjoint_method_that_cannot_solve_the_adjoint_sde_is_refused_before_the_solve(
    sde, adjoint_method, message
):
    """Refused when sdeint_adjoint is called (scalar noise with Milstein failed in backward()),
    naming the user's noise type (the augmented SDE of additive noise has general noise) and
    an adjoint method that fits."""
    y0 = torch.ones(3, 2, dtype=F64)
    method = "euler" if sde.sde_type == "ito" else "midpoint"
    adjoint_method, adjoint_options = (
        adjoint_method if isinstance(adjoint_method, tuple) else (adjoint_method, None)
    )
    with pytest.raises(ValueError, match=message):
        nsde.sdeint_adjoint(sde, y0, TS, method=method, adjoint_method=adjoint_method, dt=0.1,
                            adjoint_options=adjoint_options)  # fmt: skip


class _ConstantDiffusionOU(torch.nn.Module):
    """dY = -theta Y dt + 0.3 dW with diagonal noise: g depends on neither y nor theta."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        return torch.full_like(y, 0.3)


@pytest.mark.parametrize("adjoint_method", [None, "euler", "milstein"])
def test_adjoint_of_a_diffusion_constant_in_y_and_the_parameters(adjoint_method):
    """y0 without gradient, the parameters only in the drift: the adjoint's products with
    g's derivatives are zero (not an autograd error), its gradient backprop's."""
    y0, ts = torch.ones(16, 1, dtype=F64), torch.linspace(0, 1, 5, dtype=F64)
    bm = nsde.BrownianInterval(0, 1, size=(16, 1), dtype=F64, entropy=1)
    grads = []
    for solve in (nsde.sdeint, nsde.sdeint_adjoint):
        sde = _ConstantDiffusionOU()
        extra = {"adjoint_method": adjoint_method} if solve is nsde.sdeint_adjoint else {}
        ys = solve(sde, y0, ts, bm=bm, dt=2**-8, method="euler", **extra)
        ys[-1].mean().backward()
        grads.append(sde.theta.grad)
    assert abs(float(grads[1] - grads[0])) < 0.01 * abs(float(grads[0]))


@pytest.mark.parametrize(
    ("method", "adjoint_method"),
    [("euler", None), ("midpoint", None), ("reversible_heun", "adjoint_reversible_heun")],
)
def test_adjoint_params_through_a_graph_built_before_the_solve(method, adjoint_method):
    """The drift reads ``a = 2 w``, computed once before the solve (as torchsde's SDE-GAN
    discriminator reads the CDE path's coefficients computed from the data): each step's
    product traverses that graph again, and the gradient reaches ``w``."""
    w = torch.tensor([0.1, 0.2, 0.3], dtype=F64, requires_grad=True)
    a = 2 * w

    class Drift(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito" if method == "euler" else "stratonovich"

        def f(self, t, y):
            return -a * y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    y0, ts = torch.ones(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for adjoint in (False, True):
        bm = nsde.BrownianInterval(0, 1, size=(2, 3), dtype=F64, entropy=1)
        kwargs = dict(bm=bm, dt=2**-8, method=method)
        if adjoint:
            extra = {"adjoint_method": adjoint_method} if adjoint_method else {}
            ys = nsde.sdeint_adjoint(Drift(), y0, ts, adjoint_params=(w,), **kwargs, **extra)
        else:
            ys = nsde.sdeint(Drift(), y0, ts, **kwargs)
        (grad,) = torch.autograd.grad(ys[-1].sum(), w, retain_graph=True)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("noise_type", ["diagonal", "general", "additive"])
def test_reversible_heun_adjoint_equals_backprop(noise_type, adaptive):
    """Exact to round-off, also after adaptive steps (whose accepted steps are two half
    steps each: the backward pass walks the halves)."""
    sde = Tanh("stratonovich", noise_type)
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.25, 0.33, 1.0], dtype=F64)  # 0.33 is off the grid: interpolated
    m = 2
    bm = nsde.BrownianInterval(0, 1, size=(2, m), dtype=F64, entropy=3)
    kwargs = dict(bm=bm, method="reversible_heun", dt=2**-6)
    if adaptive:
        kwargs.update(adaptive=True, rtol=1e-3, atol=1e-4)
    exact = _grads(lambda: nsde.sdeint(sde, y0, ts, **kwargs), sde, y0)
    adjoint = _grads(lambda: nsde.sdeint_adjoint(sde, y0, ts, **kwargs), sde, y0)
    assert torch.allclose(adjoint, exact, rtol=1e-10, atol=1e-12)


def test_adjoint_with_logqp_and_adjoint_params():
    sde = Tanh("stratonovich")
    sde.h = lambda t, y: -y
    y0 = torch.tensor([[0.3, -0.2]], dtype=F64, requires_grad=True)
    # with logqp, diagonal noise has one more (zero) channel for the log-ratio, as in torchsde
    short = nsde.BrownianInterval(0, 1, size=(1, 2), dtype=F64)
    for solve in (nsde.sdeint, nsde.sdeint_adjoint):  # the refusal names the channel
        with pytest.raises(ValueError, match=r"logqp=True .* size=\(batch, 3\)"):
            solve(sde, y0, TS, bm=short, dt=2**-6, logqp=True)
    bm = nsde.BrownianInterval(0, 1, size=(1, 3), dtype=F64, entropy=3)
    ys, logqp = nsde.sdeint_adjoint(
        sde, y0, TS, bm=bm, dt=2**-6, logqp=True, adjoint_params=(sde.w,)
    )
    (ys.sum() + logqp.sum()).backward()
    assert sde.w.grad is not None and sde.a.grad is None and y0.grad is not None


# ---------------------------------------------------------------------------------------------
# agreement with torchsde (reference only; skipped when it is not installed)


@pytest.mark.parametrize(
    "sde_type, method, levy",
    [
        ("ito", "euler", "none"),
        ("ito", "milstein", "none"),
        ("ito", "srk", "space-time"),
        ("stratonovich", "midpoint", "none"),
        ("stratonovich", "heun", "none"),
        ("stratonovich", "euler_heun", "none"),
        ("stratonovich", "reversible_heun", "none"),
    ],
)
def test_same_brownian_motion_same_solution_as_torchsde(sde_type, method, levy):
    torchsde = pytest.importorskip("torchsde")
    sde = Tanh(sde_type)
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=F64)
    ts = torch.linspace(0, 1, 4, dtype=F64)
    bm = nsde.BrownianInterval(
        0, 1, size=(2, 2), dtype=F64, entropy=3, levy_area_approximation=levy
    )
    ours = nsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=2**-6)
    theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=2**-6)
    assert torch.allclose(ours, theirs, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# the adjoint's memory against the number of steps


def _live_tensors() -> int:
    import gc

    gc.collect()  # (garbage of earlier tests would count)
    kinds = (torch.Tensor, torch.nn.Parameter)
    return sum(1 for o in gc.get_objects() if type(o) in kinds)


@pytest.mark.parametrize("steps", [64, 256])
def test_adjoint_backward_holds_no_tensor_per_step(monkeypatch, steps):
    """The backward solve's live tensors and the Brownian cache stay the same from its first
    step to its last, whatever the number of steps."""
    sde = Tanh("ito", "diagonal")
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.2]], dtype=F64, requires_grad=True)
    bm = nsde.BrownianInterval(0, 1, size=(3, 2), dtype=F64, entropy=5)
    counts, cached = [], []
    query = nsde.ReverseBrownian.__call__
    every = steps // 2  # two counts (each scan of the heap is slow)

    def counting(self, *args, **kwargs):
        if len(cached) % every == 2:
            counts.append(_live_tensors())
        cached.append(len(bm._values.cache))
        return query(self, *args, **kwargs)

    ys = nsde.sdeint_adjoint(sde, y0, TS, bm=bm, method="euler", dt=1 / steps)
    monkeypatch.setattr(nsde.ReverseBrownian, "__call__", counting)
    ys[-1].square().sum().backward()
    assert len(cached) == steps
    assert max(counts) == min(counts), counts
    assert max(cached) <= bm.cache_size


def test_brownian_tree_costs_40_bytes_per_interval():
    """What a Brownian interval keeps per query point: its tree's two intervals, 40 bytes each
    (the tensors live in the LRU cache, at most ``cache_size`` of them)."""
    for steps in (100, 1000):
        bm = nsde.BrownianInterval(0, 1, size=(4, 3), dtype=F64, entropy=1)
        for k in range(steps):
            bm(k / steps, (k + 1) / steps)
        for k in reversed(range(steps)):
            bm(k / steps, (k + 1) / steps)
        tree = bm._tree
        assert tree.nbytes == 40 * len(tree)
        assert len(tree) <= 2 * steps + 2 * 64  # two per query point, plus the dependency tree
        assert len(bm._values.cache) <= bm.cache_size


def test_adjoint_records_the_forward_grid_in_8_bytes_a_step(monkeypatch):
    from array import array

    from neuralode.sde import _adjoint

    grids = []
    backward = _adjoint._stochastic_backward

    def spy(config, *args):
        grids.append(config.grid)
        return backward(config, *args)

    monkeypatch.setattr(_adjoint, "_stochastic_backward", spy)
    sde = Tanh("ito", "diagonal")
    y0 = torch.ones(2, 2, dtype=F64, requires_grad=True)
    nsde.sdeint_adjoint(sde, y0, TS, method="euler", dt=1 / 200)[-1].sum().backward()
    (grid,) = grids
    assert isinstance(grid, array) and grid.itemsize == 8 and len(grid) == 201


# ---------------------------------------------------------------------------------------------
# the core API: no.solve with an SDE term, the SDE methods as solvers of the one loop


def _core(sde, y0, ts, bm, method, **kwargs):
    import neuralode as no

    controller = kwargs.pop("controller", None) or no.FixedGrid(step_size=2**-5)
    solver = nsde.SDESolver(method, **kwargs)
    return no.solve(nsde.SDETerm(sde, bm), y0, ts, solver=solver, controller=controller)


@pytest.mark.parametrize(
    "sde_type, method, levy",
    [
        ("ito", "euler", "none"),
        ("ito", "milstein", "none"),
        ("ito", "srk", "space-time"),
        ("stratonovich", "midpoint", "none"),
        ("stratonovich", "reversible_heun", "none"),
        ("stratonovich", "log_ode", "davie"),
    ],
)
def test_solve_with_an_sde_term_equals_sdeint_bit_for_bit(sde_type, method, levy):
    """The same method on the same grid and Brownian motion: the same values bit for bit,
    the same gradients, and the loop's statistics filled in."""
    sde = Tanh(sde_type, "diagonal")
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.2]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    ys = nsde.sdeint(sde, y0, ts, bm=bm_for(3, 2, levy, entropy=4), method=method, dt=2**-5)
    grads = torch.autograd.grad(ys.square().sum(), [y0, *sde.parameters()])
    sol = _core(sde, y0, ts, bm_for(3, 2, levy, entropy=4), method)
    assert torch.equal(sol.ys, ys)
    core_grads = torch.autograd.grad(sol.ys.square().sum(), [y0, *sde.parameters()])
    # (the gradients' sums run in another order: equal to round-off)
    for a, b in zip(grads, core_grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), (a - b).abs().max()
    stats = sol.stats
    assert (stats.n_steps, stats.n_accepted, stats.n_rejected) == (32, 32, 0)
    assert stats.nfe >= 2 * 32  # at least a drift and a diffusion evaluation per step


def test_solve_with_an_sde_term_counts_each_evaluation():
    calls = []

    class Counted(GBM):
        def f(self, t, y):
            calls.append("f")
            return super().f(t, y)

        def g(self, t, y):
            calls.append("g")
            return super().g(t, y)

    y0 = torch.ones(4, 2, dtype=F64)
    sol = _core(Counted(), y0, TS, bm_for(4, 2), "euler")
    # f and g once per Euler step; the input checks evaluate each once more, uncounted
    assert sol.stats.nfe == len(calls) - 2 == 64


def test_solve_with_an_sde_term_adapts_with_the_pi_controller():
    """Step doubling as the error estimate of the PIController: tighter tolerances take more
    steps and land closer to the exact solution of geometric Brownian motion."""
    import neuralode as no

    sde, y0 = GBM(), torch.ones(64, 2, dtype=F64)
    exact = sde.exact(y0, bm_for(64, 2, "space-time")(0.0, 1.0), 1.0)
    errors, steps = [], []
    for tol in (1e-2, 1e-4):
        controller = no.PIController(tol, tol, first_step=0.01)
        with torch.no_grad():
            sol = _core(
                sde, y0, TS, bm_for(64, 2, "space-time"), "srk",
                step_doubling=True, controller=controller,
            )  # fmt: skip
        errors.append((sol.ys[-1] - exact).abs().max().item())
        steps.append(sol.stats.n_accepted)
        assert sol.stats.n_steps == sol.stats.n_accepted + sol.stats.n_rejected
    assert errors[1] < errors[0] / 4 and errors[1] < 1e-2
    assert steps[1] > steps[0]


def test_solve_with_an_sde_term_refuses_what_it_cannot_do():
    import neuralode as no

    term, y0 = nsde.SDETerm(GBM(), bm_for(4, 2)), torch.ones(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="needs an SDE solver"):
        no.solve(term, y0, TS)
    with pytest.raises(ValueError, match="solves SDEs"):
        no.solve(lambda t, y: -y, y0, TS, solver=nsde.SDESolver("euler"))
    with pytest.raises(ValueError, match="per_sample"):
        no.solve(term, y0, TS, solver=nsde.SDESolver("euler"), per_sample=True)
    with pytest.raises(ValueError, match="sdeint_adjoint"):
        no.solve(term, y0, TS, solver=nsde.SDESolver("euler"), gradient="backsolve")
    with pytest.raises(ValueError, match="output times"):
        ts = TS.clone().requires_grad_(True)
        no.solve(term, y0, ts, solver=nsde.SDESolver("euler"))
    with pytest.raises(ValueError, match="no error estimate"):
        no.solve(term, y0, TS, solver=nsde.SDESolver("euler"), controller=no.PIController())
    with pytest.raises(ValueError, match="requires one of"):  # srk needs the Lévy area
        no.solve(term, y0, TS, solver=nsde.SDESolver("srk"))
    with pytest.raises(ValueError, match="unknown SDE method"):
        nsde.SDESolver("rk4")
    with pytest.raises(ValueError, match="noise_type"):
        nsde.SDETerm(object(), bm_for(4, 2))


def _flat_diffusion(sde):
    sde.g = lambda t, y: torch.ones_like(y)  # (batch, d): not general noise's (batch, d, m)
    return sde


def _wide_scalar(sde):
    sde.g = lambda t, y: torch.ones(*y.shape, 2, dtype=F64)
    return sde


@pytest.mark.parametrize(
    "make_sde, bm, ts, message",
    [
        (GBM, dict(dtype=torch.float32), TS, "dtype torch.float32 is not y0's"),
        (GBM, "meta", TS, "device meta is not y0's"),
        (GBM, dict(t0=0.5), TS, r"covers \[0.5, 1.0\] but `ts` spans \[0.0, 1.0\]"),
        (GBM, dict(size=(4, 2)), TS, r"Batch sizes not consistent: \[3, 4, 3, 3\]"),
        (GBM, {}, TS.flip(0), "strictly increasing"),
        (lambda: _flat_diffusion(GeneralLinear(m=2)), {}, TS, "noise_channels"),
        (lambda: _wide_scalar(ScalarGBM()), dict(size=(3, 2)), TS, "Scalar noise"),
    ],
)
def test_solve_with_an_sde_term_refuses_what_sdeint_refuses(make_sde, bm, ts, message):
    """``no.solve(SDETerm(...))`` runs ``sdeint``'s input checks (one function for both):
    each input ``sdeint`` refuses is refused by the solve with the same message, before the
    solve would run on the wrong noise or fail inside the loop."""
    import neuralode as no

    y0 = torch.ones(3, 2, dtype=F64)
    if bm == "meta":
        bm = _Meta(nsde.BrownianInterval(0.0, 1.0, size=(3, 2), dtype=F64))
    else:
        kwargs = dict(t0=0.0, t1=1.0, size=(3, 2), dtype=F64) | bm
        bm = nsde.BrownianInterval(**kwargs)
    with pytest.raises(ValueError, match=message) as by_sdeint:
        nsde.sdeint(make_sde(), y0, ts, bm=bm, dt=0.1, method="euler")
    with pytest.raises(ValueError, match=message) as by_solve:
        controller = no.FixedGrid(step_size=0.1)
        no.solve(nsde.SDETerm(make_sde(), bm), y0, ts, solver=nsde.SDESolver("euler"),
                 controller=controller)  # fmt: skip
    assert str(by_solve.value) == str(by_sdeint.value)


def test_fixed_grid_takes_an_array_of_doubles_as_it_is():
    """The SDE passes give their step grids as ``array('d')`` (8 bytes a step): the same steps
    as the float64 tensor grid, not rounded through a float32 tensor."""
    from array import array

    import neuralode as no

    points = [0.0, 0.1, 0.30000000000000004, 0.7, 1.0]
    y0, ts = torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    solutions = [
        no.solve(lambda t, y: -y, y0, ts, solver="rk4", controller=no.FixedGrid(grid=grid))
        for grid in (array("d", points), torch.tensor(points, dtype=F64))
    ]
    assert torch.equal(solutions[0].ys, solutions[1].ys)
    assert solutions[0].stats.n_steps == 4


@pytest.mark.parametrize("method", ["milstein", "log_ode"])
def test_no_grad_solve_of_a_state_that_requires_grad(method):
    """Under ``torch.no_grad()`` the derivative terms (Milstein's, the log-ODE Lévy area
    term) are the same whether ``y0`` requires grad or not (the loop's flat view of such a
    ``y0`` must not swallow them)."""
    sde = Tanh("ito", "diagonal") if method == "milstein" else Tanh("stratonovich", "general")
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=F64, requires_grad=True)
    levy = "davie" if method == "log_ode" else "none"
    outs = []
    for y in (y0, y0.detach()):
        with torch.no_grad():
            bm = bm_for(2, 2, levy, entropy=9)
            outs.append(nsde.sdeint(sde, y, TS, bm=bm, method=method, dt=2**-4))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "ts, dt",
    [([0.0, 1e-8, 2e-8], 1e-10), ([1e6, 1e6 + 0.5, 1e6 + 1.0], 1e-3), ([0.0, 0.3, 1.0], 0.1)],
)
def test_the_dt_grid_lands_on_the_outputs_at_any_time_scale(ts, dt):
    """Grid points within round-off of an output time move onto it, and no others: tiny
    steps and large times keep a strictly increasing grid of steps dt."""
    from neuralode.sde._engine import fixed_grid

    grid = list(fixed_grid(ts, dt))
    steps = [b - a for a, b in zip(grid, grid[1:])]
    assert min(steps) > 0.5 * dt and max(steps) < 1.5 * dt
    assert set(ts) <= set(grid)
    y = nsde.sdeint(_ConstantDiffusionOU(), torch.ones(4, 1, dtype=F64),
                    torch.tensor(ts, dtype=F64), dt=dt, method="euler")  # fmt: skip
    assert y.shape == (3, 4, 1) and bool(torch.isfinite(y).all())


def test_float32_times_take_the_steps_of_dt_that_cover_them_and_no_sliver():
    """0.3 in float32 is 0.30000001: dt 0.1 takes 3 steps from 0, as in float64 and as
    torchsde, not 3 and one of 1e-8."""
    from neuralode.sde._engine import fixed_grid

    ts32 = torch.tensor([0.0, 0.3], dtype=torch.float32)
    assert len(fixed_grid(ts32.tolist(), 0.1, torch.finfo(torch.float32).eps)) == 4
    assert len(fixed_grid([0.0, 0.31], 0.1)) == 5  # (a remainder above round-off: a step)
    sde, calls = _ConstantDiffusionOU().float(), []
    drift = sde.f
    sde.f = lambda t, y: calls.append(t) or drift(t, y)
    nsde.sdeint(sde, torch.ones(2, 1), ts32, dt=0.1, method="euler")
    assert sorted({round(float(t), 6) for t in calls}) == [0.0, 0.1, 0.2]  # the steps' starts


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf])
def test_a_dt_that_is_not_positive_and_finite_is_refused(dt):
    with pytest.raises(ValueError, match="dt must be a positive finite number"):
        nsde.sdeint(_ConstantDiffusionOU(), torch.ones(2, 1, dtype=F64),
                    torch.tensor([0.0, 1.0], dtype=F64), dt=dt, method="euler")  # fmt: skip


def test_without_entropy_numpy_seeds_the_brownian_motion():
    """As torchsde: a Brownian motion made without entropy draws its seed from NumPy's global
    generator, so np.random.seed makes the solve reproducible."""
    np = pytest.importorskip("numpy")
    ys, y0, ts = [], torch.ones(3, 1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    for _ in range(2):
        np.random.seed(0)
        ys.append(nsde.sdeint(_ConstantDiffusionOU(), y0, ts, dt=0.1, method="euler"))
    assert torch.equal(ys[0], ys[1])
    np.random.seed(1)
    assert (
        nsde.BrownianInterval(0.0, 1.0, size=(3, 1)).entropy
        != nsde.BrownianInterval(0.0, 1.0, size=(3, 1)).entropy
    )


def test_adaptive_euler_with_non_additive_noise_warns_in_sdeint_and_solve():
    """torchsde's warning that adaptive Euler-Maruyama need not converge with non-additive
    noise, from sdeint and from no.solve with a step-doubling Euler, pointing at the caller;
    additive noise does not warn."""
    import warnings

    import neuralode as no

    y0, ts = torch.ones(2, 1, dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64)
    controller = no.PIController(rtol=1e-2, atol=1e-3, first_step=0.1)
    solver = nsde.SDESolver("euler", step_doubling=True)
    for sde, warns in ((GBM(), True), (OU(), False)):
        for entry in ("sdeint", "solve"):
            bm = nsde.BrownianInterval(0.0, 0.5, size=(2, 1), dtype=torch.float64, entropy=0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if entry == "sdeint":
                    nsde.sdeint(sde, y0, ts, bm=bm, method="euler", adaptive=True, dt=0.1)
                else:
                    term = nsde.SDETerm(sde, bm)
                    no.solve(term, y0, ts, solver=solver, controller=controller)
            found = [w for w in caught if "not guaranteed to converge" in str(w.message)]
            assert len(found) == int(warns), entry
            assert all(w.filename == __file__ for w in found), entry
