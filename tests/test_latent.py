"""Latent ODEs, ODE-RNNs and baselines: batching on the union of times with masks gives each
series what it gets alone; ELBO terms, shapes, training and errors."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode.models import (
    ODERNN,
    RNNVAE,
    GapRNN,
    LatentODE,
    RNNBaseline,
    collate_irregular,
    extrapolation_masks,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spinning on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TIGHT = {"rtol": 1e-8, "atol": 1e-10}
CLOSE = {"rtol": 1e-6, "atol": 1e-7}


def _series() -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.tensor([0.1, 0.5, 0.9], dtype=F64), torch.randn(3, 2, generator=gen, dtype=F64)),
        (
            torch.tensor([0.2, 0.5, 1.3, 1.7], dtype=F64),
            torch.randn(4, 2, generator=gen, dtype=F64),
            torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1]], dtype=F64),
        ),
        (torch.tensor([0.3, 1.7], dtype=F64), torch.randn(2, 2, generator=gen, dtype=F64)),
    ]


def test_collate_puts_series_on_the_sorted_union_with_masks() -> None:
    series = _series()
    ts, values, mask = collate_irregular(series)
    assert ts.tolist() == [0.1, 0.2, 0.3, 0.5, 0.9, 1.3, 1.7]
    assert values.shape == mask.shape == (3, 7, 2)
    assert mask[0, :, 0].tolist() == [1, 0, 0, 1, 1, 0, 0]
    assert mask[1, :, 0].tolist() == [0, 1, 0, 1, 0, 0, 1]  # feature 0 missing at 1.3
    assert mask[1, :, 1].tolist() == [0, 0, 0, 1, 0, 1, 1]  # missing at 0.2
    assert torch.equal(values[2, [2, 6]], series[2][1])
    assert float(values[mask == 0].abs().sum()) == 0


@pytest.mark.parametrize(
    ("times", "word"), [([0.0, 0.5, 0.3], "unsorted"), ([0.0, 0.5, 0.5], "duplicate")]
)
def test_unsorted_or_duplicate_times_are_a_clear_error(times: list[float], word: str) -> None:
    ts = torch.tensor(times, dtype=F64)
    with pytest.raises(ValueError, match=f"series 0.*strictly increasing; {word}"):
        collate_irregular([(ts, torch.zeros(3, 1, dtype=F64))])
    model = LatentODE(1).to(F64)
    x = torch.zeros(1, 3, 1, dtype=F64)
    with pytest.raises(ValueError, match=f"strictly increasing; {word} times at positions 1"):
        model.elbo(ts, x, torch.ones_like(x))
    with pytest.raises(ValueError, match=word):
        ODERNN(1, 4)(ts, x, torch.ones_like(x))
    with pytest.raises(ValueError, match=word):
        model.decode(torch.zeros(2, 4, dtype=F64), ts)


def test_shape_errors_name_the_shapes() -> None:
    ts = torch.linspace(0, 1, 4)
    with pytest.raises(ValueError, match=r"values must have shape \(batch, len\(ts\)=4"):
        ODERNN(2, 4)(ts, torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="mask has shape"):
        GapRNN(2, 4)(ts, torch.zeros(2, 4, 2), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="before t0"):
        LatentODE(2, t0=0.5)(ts, torch.zeros(1, 4, 2), torch.ones(1, 4, 2), ts)
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(2, obs_std=0.0)
    with pytest.raises(ValueError, match="encoder"):
        LatentODE(2, encoder="lstm")


def test_a_wrong_number_of_features_is_named() -> None:
    """Values with another number of features than the model's fail with the shape named,
    not with a GRU's size error."""
    ts = torch.linspace(0, 1, 4)
    values, mask = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    for call in (
        lambda: ODERNN(2, 4)(ts, values, mask),
        lambda: GapRNN(2, 4)(ts, values, mask),
        lambda: RNNBaseline(2, 4)(ts, values, mask),
        lambda: LatentODE(2).elbo(ts, values, mask),
        lambda: LatentODE(2)(ts, values, mask, ts),
        lambda: RNNVAE(2).elbo(ts, values, mask),
    ):
        with pytest.raises(ValueError, match=r"takes 2 feature\(s\) per time.*\(2, 4, 3\)"):
            call()


def test_sizes_that_are_not_positive_integers_are_named() -> None:
    for kwargs, message in (
        (dict(latent_dim=0), "latent_dim must be an integer >= 1, got 0"),
        (dict(encoder_hidden=2.5), "encoder_hidden must be an integer >= 1, got 2.5"),
        (dict(dynamics_hidden=-1), "dynamics_hidden must be an integer >= 1, got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            LatentODE(2, **kwargs)
    with pytest.raises(ValueError, match="obs_dim must be an integer >= 1, got '2'"):
        RNNVAE("2")
    with pytest.raises(ValueError, match="rnn_hidden must be an integer >= 1, got 0"):
        RNNVAE(2, rnn_hidden=0)


@pytest.mark.parametrize("backwards", [False, True])
def test_odernn_in_a_batch_equals_each_series_alone(backwards: bool) -> None:
    torch.manual_seed(0)
    model = ODERNN(2, 6, backwards=backwards, **TIGHT).to(F64)
    series = _series()
    ts, values, mask = collate_irregular(series)
    before, after = model(ts, values, mask)
    assert before.shape == after.shape == (3, 7, 6)
    for i, item in enumerate(series):
        ts_i, values_i, mask_i = collate_irregular([item])
        before_i, after_i = model(ts_i, values_i, mask_i)
        at = torch.searchsorted(ts, ts_i)
        torch.testing.assert_close(after[i, at], after_i[0], **CLOSE)
        torch.testing.assert_close(before[i, at], before_i[0], **CLOSE)
    # zero before a series' first observation, and the update changes the state there
    # series 2 is observed at t=0.3 (index 2) and t=1.7 (index 6): zero before the first
    first, last = (6, 2) if backwards else (2, 6)
    norm = before.detach().abs().sum(-1)
    assert float(norm[2, first]) == 0 and float(norm[2, last]) > 0
    assert bool((after.detach()[2, [2, 6]].abs().sum(-1) > 0).all())


def test_odernn_hidden_state_follows_the_ode_between_observations() -> None:
    """With a linear vector field dh/dt = -h the state decays by exp(-dt) between updates."""

    class Decay(torch.nn.Module):
        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return -h

    model = ODERNN(1, 3, dynamics=Decay(), **TIGHT).to(F64)
    ts = torch.tensor([0.0, 0.7, 2.0], dtype=F64)
    values = torch.tensor([[[1.0], [0.0], [0.0]]], dtype=F64)
    mask = torch.tensor([[[1.0], [0.0], [0.0]]], dtype=F64)
    before, after = model(ts, values, mask)
    torch.testing.assert_close(after[0, 2], after[0, 0] * math.exp(-2.0), rtol=1e-8, atol=0)
    torch.testing.assert_close(before[0, 1], after[0, 0] * math.exp(-0.7), rtol=1e-8, atol=0)


@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_odernn_nfe_counts_every_interval_of_a_pass(gradient: str) -> None:
    """nfe_forward / nfe_backward sum over the pass's intervals: the calls of the field."""

    class Counted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(-torch.ones(3, dtype=F64))
            self.calls = 0

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.weight * h

    field = Counted()
    model = ODERNN(1, 3, dynamics=field, gradient=gradient, **TIGHT).to(F64)
    ts = torch.tensor([0.0, 0.7, 2.0, 2.5], dtype=F64)
    values = torch.ones(1, 4, 1, dtype=F64)
    model(ts, values, torch.ones_like(values))  # a pass before: not counted in the next
    field.calls = 0
    before, after = model(ts, values, torch.ones_like(values))
    forward_calls = field.calls
    assert model.nfe_forward == forward_calls > model.ode.nfe_forward > 0
    after.sum().backward()
    backward_calls = field.calls - forward_calls
    assert model.nfe_backward == (backward_calls if gradient == "adjoint" else 0)


def test_gap_rnn_in_a_batch_equals_each_series_alone() -> None:
    torch.manual_seed(0)
    model = GapRNN(2, 5, backwards=True).to(F64)
    series = _series()
    ts, values, mask = collate_irregular(series)
    states = model(ts, values, mask)
    for i, item in enumerate(series):
        ts_i, values_i, mask_i = collate_irregular([item])
        at = torch.searchsorted(ts, ts_i)
        torch.testing.assert_close(states[i, at], model(ts_i, values_i, mask_i)[0])


@pytest.mark.parametrize("encoder", ["rnn", "odernn"])
def test_latent_ode_elbo_in_a_batch_equals_each_series_alone(encoder: str) -> None:
    torch.manual_seed(0)
    small = {"encoder_hidden": 6, "dynamics_hidden": 8, "decoder_hidden": 8}
    model = LatentODE(2, encoder=encoder, encoder_options=TIGHT, **small, **TIGHT).to(F64)
    series = _series()
    ts, values, mask = collate_irregular(series)
    noise = torch.randn(3, 3, 4, dtype=F64)
    out = model.elbo(ts, values, mask, n_samples=3, noise=noise)
    assert out.predictions.shape == (3, 3, 7, 2)
    assert out.elbo.shape == out.kl.shape == out.log_likelihood.shape == (3,)
    assert out.n_observed.tolist() == [6, 6, 4]
    for i, item in enumerate(series):
        ts_i, values_i, mask_i = collate_irregular([item])
        alone = model.elbo(ts_i, values_i, mask_i, n_samples=3, noise=noise[:, i : i + 1])
        for name in ("elbo", "log_likelihood", "kl"):
            torch.testing.assert_close(getattr(out, name)[i], getattr(alone, name)[0], **CLOSE)
        at = torch.searchsorted(ts, ts_i)
        torch.testing.assert_close(out.predictions[:, i, at], alone.predictions[:, 0], **CLOSE)
    query = torch.linspace(0, 2.5, 6, dtype=F64)
    ts_2, values_2, mask_2 = collate_irregular(series[2:])
    torch.testing.assert_close(
        model(ts, values, mask, query)[2], model(ts_2, values_2, mask_2, query)[0], **CLOSE
    )


def test_masked_entries_do_not_matter() -> None:
    torch.manual_seed(0)
    model = LatentODE(2, encoder="odernn").to(F64)
    ts, values, mask = collate_irregular(_series())
    noise = torch.randn(1, 3, 4, dtype=F64)
    garbage = values + 100 * (1 - mask) * torch.randn_like(values)
    a = model.elbo(ts, values, mask, noise=noise)
    b = model.elbo(ts, garbage, mask, noise=noise)
    torch.testing.assert_close(a.elbo, b.elbo)
    rnn = RNNBaseline(2).to(F64)
    torch.testing.assert_close(rnn(ts, values, mask), rnn(ts, garbage, mask))


def test_elbo_terms_match_their_definitions() -> None:
    torch.manual_seed(0)
    model = LatentODE(2, obs_std=0.5).to(F64)
    ts, values, mask = collate_irregular(_series())
    noise = torch.randn(4, 3, 4, dtype=F64)
    mean_mode = model.elbo(ts, values, mask, n_samples=4, noise=noise)
    iwae = model.elbo(ts, values, mask, n_samples=4, noise=noise, iwae=True)
    # analytic KL of N(mu, s^2) to N(0, 1), from the encoder's outputs
    observed = mask.bool().any(-1).any(0)
    mu, std = model.encode(ts[observed], values[:, observed], mask[:, observed])
    kl = (0.5 * (mu**2 + std**2 - 1) - std.log()).sum(-1)
    torch.testing.assert_close(mean_mode.kl, kl)
    residual = (values - mean_mode.predictions) / 0.5
    log_p = (-0.5 * residual**2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)) * mask
    torch.testing.assert_close(mean_mode.log_likelihood, log_p.sum((-1, -2)).mean(0))
    torch.testing.assert_close(mean_mode.elbo, mean_mode.log_likelihood - kl)
    # the importance-weighted bound is at least the mean of its log weights (Jensen)
    z0 = mu + std * noise
    log_w = (
        log_p.sum((-1, -2)) - 0.5 * (z0**2).sum(-1) + 0.5 * (noise**2).sum(-1) + std.log().sum(-1)
    )
    torch.testing.assert_close(iwae.elbo, torch.logsumexp(log_w, 0) - math.log(4))
    assert bool((iwae.elbo >= log_w.mean(0) - 1e-9).all())


def test_learned_noise_and_shapes_of_every_model() -> None:
    torch.manual_seed(0)
    ts, values, mask = collate_irregular([(s[0].float(), s[1].float(), *s[2:]) for s in _series()])
    mask = mask.float()
    query = torch.linspace(0, 3, 5)
    learned = LatentODE(2, obs_std=None)
    assert learned.log_obs_std.requires_grad and learned.obs_std.shape == (2,)
    assert learned(ts, values, mask, query).shape == (3, 5, 2)
    assert learned(ts, values, mask, query, n_samples=4).shape == (4, 3, 5, 2)
    assert learned.sample_prior(6, query).shape == (6, 5, 2)
    vae = RNNVAE(2, encoder="odernn", encoder_options={"rtol": 1e-5, "atol": 1e-6})
    assert vae.encoder.ode.rtol == 1e-5
    assert vae(ts, values, mask, query).shape == (3, 5, 2)
    assert vae.elbo(ts, values, mask, n_samples=2, iwae=True).elbo.shape == (3,)
    assert RNNBaseline(2)(ts, values, mask).shape == (3, 7, 2)
    before, after = ODERNN(2, 7)(ts, values, mask)
    assert before.shape == after.shape == (3, 7, 7)
    encode, target = extrapolation_masks(ts, mask, 0.6)
    assert float(encode[:, ts >= 0.6].sum()) == 0 and float(target[:, ts < 0.6].sum()) == 0
    torch.testing.assert_close(encode + target, mask)
    out = learned.elbo(ts, values, encode, target_mask=target)
    assert out.n_observed.tolist() == target.sum((1, 2)).tolist()
    assert float(out.predictions.detach()[:, :, ts < 0.6].abs().sum()) == 0  # not queried


def test_elbo_improves_in_a_short_run() -> None:
    from neuralode.data import make_periodic

    torch.manual_seed(0)
    data = make_periodic(n=16, n_times=20, n_obs=10, seed=3)
    model = LatentODE(1, 3, encoder_hidden=12, obs_std=0.1, method="rk4", step_size=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    noise = torch.randn(1, 16, 3)

    def loss() -> torch.Tensor:
        return model.elbo(data.ts, data.values, data.mask, noise=noise).loss()

    with torch.no_grad():
        start = float(loss())
    for _ in range(20):
        opt.zero_grad()
        model.elbo(data.ts, data.values, data.mask).loss().backward()
        opt.step()
    with torch.no_grad():
        end = float(loss())
    assert end < start - 0.2 * abs(start), (start, end)


@pytest.mark.parametrize("tol, bound", [(1e-7, 1e-5), (1e-10, 1e-7)])
def test_latent_ode_adjoint_gradient_matches_direct(tol: float, bound: float) -> None:
    """The adjoint's gradients of the ELBO equal backprop's up to the solves' tolerances:
    the gap (largest difference / largest gradient) shrinks as the tolerances tighten."""
    torch.manual_seed(0)
    ts, values, mask = collate_irregular(_series())
    small = {"latent_dim": 2, "encoder_hidden": 6, "dynamics_hidden": 8}
    small.update(rtol=tol, atol=tol / 100)
    direct = LatentODE(2, gradient="direct", **small).to(F64)
    adjoint = LatentODE(2, gradient="adjoint", **small).to(F64)
    adjoint.load_state_dict(direct.state_dict())
    noise = torch.randn(1, 3, 2, dtype=F64)
    grads = []
    for model in (direct, adjoint):
        model.elbo(ts, values, mask, noise=noise).loss().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    gap = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
    assert gap < bound, gap


def test_rnn_baseline_feeds_back_its_predictions_where_nothing_is_observed() -> None:
    """Fully observed: feedback changes nothing. Past the last observation, the feedback RNN
    continues from its own predictions (each a change from the previous one), the plain one
    from zeros; up to the first time after the gap begins both agree."""
    torch.manual_seed(0)
    ts = torch.linspace(0, 2, 6, dtype=F64)
    values = torch.randn(2, 6, 2, dtype=F64)
    feedback = RNNBaseline(2).to(F64)
    plain = RNNBaseline(2, feedback=False).to(F64)
    plain.load_state_dict(feedback.state_dict())
    full = torch.ones_like(values)
    torch.testing.assert_close(feedback(ts, values, full), plain(ts, values, full))
    mask = full.clone()
    mask[:, 3:] = 0
    with_feedback, without = feedback(ts, values, mask), plain(ts, values, mask)
    torch.testing.assert_close(with_feedback[:, :4], without[:, :4])
    assert (with_feedback[:, 4:] - without[:, 4:]).abs().min() > 1e-3


@pytest.mark.parametrize("decoder_kind", ["linear+mlp", "linear"])
def test_linear_plus_mlp_latent_ode_represents_the_spirals_exactly(decoder_kind: str) -> None:
    """z = (cos s, sin s, s cos s, s sin s) solves the linear ODE of a rotation's Jordan block;
    with A that block (twice, and 0 for a constant latent) and the MLPs switched off, the
    decoded trajectories are the generator's spirals of both directions, extrapolation
    window included, whatever their radius."""
    from neuralode.data.spirals import make_spirals

    data = make_spirals(6, n_obs=30, noise_std=0.0, dtype=F64, seed=5)
    model = LatentODE(2, latent_dim=9, dynamics="linear+mlp", decoder=decoder_kind, **TIGHT)
    model = model.to(F64)
    jordan = torch.tensor([[0, -1, 0, 0], [1, 0, 0, 0], [1, 0, 0, -1], [0, 1, 1, 0]], dtype=F64)
    field, decoder, b = model.ode.dynamics.net, model.decoder, 0.3
    with torch.no_grad():
        field.linear.weight.zero_()
        field.linear.weight[:4, :4] = jordan
        field.linear.weight[4:8, 4:8] = jordan
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()
        if decoder_kind == "linear+mlp":
            decoder.mlp[-1].weight.zero_()
            decoder.mlp[-1].bias.zero_()
            decoder = decoder.linear
        decoder.bias.zero_()
        decoder.weight.zero_()
        decoder.weight[0, [2, 6, 8]] = torch.tensor([b, -b, 5.0], dtype=F64)
        decoder.weight[1, [3, 7]] = b
    centre = torch.where(data.clockwise, -5.0, 5.0).to(F64)
    start = data.trajectories[:, 0]
    s0 = torch.hypot(start[:, 0] - centre, start[:, 1]) / b  # the angle of the first point
    spiral = torch.stack([s0.cos(), s0.sin(), s0 * s0.cos(), s0 * s0.sin()], -1)
    z0 = torch.zeros(len(data), 9, dtype=F64)
    clockwise = data.clockwise[:, None]
    z0[:, :4] = torch.where(clockwise, 0.0, spiral)
    z0[:, 4:8] = torch.where(clockwise, spiral, 0.0)
    z0[:, 8] = torch.where(data.clockwise, -1.0, 1.0)
    decoded = model.decode(z0, data.ts)
    assert bool(data.clockwise.any()) and not bool(data.clockwise.all())
    torch.testing.assert_close(decoded, data.trajectories, rtol=0, atol=1e-6)


def test_linear_plus_mlp_options_shapes_and_errors() -> None:
    torch.manual_seed(0)
    ts, values, mask = collate_irregular([(s[0].float(), s[1].float(), *s[2:]) for s in _series()])
    model = LatentODE(2, latent_dim=6, dynamics="linear+mlp", decoder="linear+mlp")
    assert (
        float(model.ode.dynamics.net.linear.weight.detach().abs().sum()) == 0
    )  # starts as the MLP
    assert model.ode.dynamics.net.linear.bias is None  # no constant drift in the latent field
    query = torch.linspace(0, 3, 5)
    assert model(ts, values, mask.float(), query).shape == (3, 5, 2)
    out = model.elbo(ts, values, mask.float(), n_samples=3)
    assert out.predictions.shape == (3, 3, 7, 2)
    out.loss().backward()
    assert model.ode.dynamics.net.linear.weight.grad.abs().sum() > 0
    assert RNNVAE(2, decoder="linear+mlp")(ts, values, mask.float(), query).shape == (3, 5, 2)
    with pytest.raises(ValueError, match="dynamics must be one of .*'quadratic'"):
        LatentODE(2, dynamics="quadratic")
    with pytest.raises(ValueError, match="decoder must be one of .*'linear'"):
        LatentODE(2, decoder="quadratic")
    with pytest.raises(ValueError, match="dynamics must be one of"):
        LatentODE(2, dynamics="linear")  # a purely linear latent field trains badly: not offered
    linear = LatentODE(2, latent_dim=6, decoder="linear", dynamics="linear+mlp")
    assert isinstance(linear.decoder, torch.nn.Linear)  # x = W z + b, nothing else
    assert linear(ts, values, mask.float(), query).shape == (3, 5, 2)


@pytest.mark.parametrize("marker", [float("nan"), float("inf")])
def test_unobserved_nan_or_inf_change_nothing(marker: float) -> None:
    """NaN (or inf) is a common marker of a missing value: where the mask is 0 it must not
    reach the collated values, the encoders, the ELBO or its gradients (NaN * 0 is NaN)."""
    series = _series()
    ts_1, values_1, mask_1 = series[1]
    marked = torch.where(mask_1 > 0, values_1, torch.full_like(values_1, marker))
    ts, values, mask = collate_irregular(series)
    ts_m, values_m, mask_m = collate_irregular([series[0], (ts_1, marked, mask_1), series[2]])
    assert torch.equal(values_m, values) and torch.equal(mask_m, mask)
    garbage = torch.where(mask > 0, values, torch.full_like(values, marker))
    noise = torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    for encoder in ("rnn", "odernn"):
        torch.manual_seed(0)
        model = LatentODE(2, encoder=encoder, obs_std=None).to(F64)
        results = []
        for data in (values, garbage):
            model.zero_grad()
            out = model.elbo(ts, data, mask, n_samples=2, noise=noise, iwae=True)
            out.loss().backward()
            results.append((out.elbo.detach(), [p.grad.clone() for p in model.parameters()]))
        (clean, clean_grads), (dirty, dirty_grads) = results
        torch.testing.assert_close(dirty, clean)
        for a, b in zip(dirty_grads, clean_grads):
            torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    for net in (ODERNN(2, 5, **TIGHT).to(F64), GapRNN(2, 5).to(F64)):
        torch.testing.assert_close(net(ts, garbage, mask), net(ts, values, mask))


def test_collate_names_mismatched_masks_and_features() -> None:
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    values = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"series 0: the mask must have the shape of its values"):
        collate_irregular([(ts, values, torch.ones(2, 1, dtype=F64))])
    with pytest.raises(ValueError, match="series 1 has 3 features, series 0 has 2"):
        collate_irregular([(ts, values), (ts, torch.zeros(2, 3, dtype=F64))])


def test_forward_names_a_negative_sample_count_and_an_empty_mask() -> None:
    torch.manual_seed(0)
    model = LatentODE(2).to(F64)
    ts, values, mask = collate_irregular(_series())
    query = torch.linspace(0.0, 1.0, 3, dtype=F64)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 0, got -1"):
        model(ts, values, mask, query, n_samples=-1)
    with pytest.raises(ValueError, match="mask selects no observations"):
        model(ts, values, torch.zeros_like(mask), query)


def test_nothing_to_predict_gives_no_likelihood_and_n_samples_is_an_integer():
    torch.manual_seed(0)
    ts, values = torch.linspace(0.1, 2, 6), torch.randn(3, 6, 2)
    mask = torch.ones(3, 6, 2)
    model = LatentODE(2)
    encoder_mask, target = extrapolation_masks(ts, mask, t_split=5.0)  # nothing after 5
    noise = torch.randn(1, 3, model.latent_dim)
    out = model.elbo(ts, values, encoder_mask, target_mask=target, noise=noise)
    torch.testing.assert_close(out.elbo, -out.kl)
    assert model(ts, values, mask, ts[:0]).shape == (3, 0, 2)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1, got 2.0"):
        model.elbo(ts, values, mask, n_samples=2.0)


@pytest.mark.parametrize("bad", [math.nan, -1.0, 0.5])
def test_masks_hold_zeros_and_ones(bad: float) -> None:
    """The models read a mask as observed where positive, weigh the likelihood by it and
    count it, which disagree elsewhere: a NaN would give the solver's "y0 contains NaN" and
    NaN encoder states, a -1 would be observed with likelihood weight -1. Such masks are
    refused, naming the entry."""
    ts = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    values = torch.randn(2, 3, 2, dtype=F64)
    mask = torch.ones(2, 3, 2, dtype=F64)
    mask[0, 1, 0] = bad
    match = r"mask must hold 0 \(not observed\) and 1 \(observed\), or be a bool tensor"
    for encoder in ("rnn", "odernn"):
        with pytest.raises(ValueError, match=match):
            LatentODE(2, encoder=encoder).to(F64).elbo(ts, values, mask)
    with pytest.raises(ValueError, match=match):
        ODERNN(2, 4).to(F64)(ts, values, mask)
    with pytest.raises(ValueError, match="series 0: the mask must hold 0"):
        collate_irregular([(ts, values[0], mask[0])])


def test_extrapolation_masks_take_bool_masks() -> None:
    ts = torch.tensor([0.1, 0.5, 0.9, 1.3])
    mask = torch.ones(2, 4, 1, dtype=torch.bool)
    encoder, target = extrapolation_masks(ts, mask, 0.7)
    assert encoder.dtype == target.dtype == torch.bool
    assert encoder[0, :, 0].tolist() == [True, True, False, False]
    assert torch.equal(target, ~encoder)
    floats = extrapolation_masks(ts, mask.double(), 0.7)
    assert torch.equal(floats[0], encoder.double()) and torch.equal(floats[1], target.double())


def test_a_fixed_obs_std_is_exact_in_the_model_dtype() -> None:
    """A fixed obs_std's buffer made in float32 is set again to log(obs_std) in the new
    dtype on conversion (not float32's rounding, 1e-8 off, in a float64 model)."""
    model = LatentODE(2, obs_std=0.4).double()
    assert model.obs_std.dtype == F64
    assert model.log_obs_std.tolist() == [math.log(0.4)] * 2
    learned = LatentODE(2, obs_std=None).double()  # a learned one is left to its parameter
    assert learned.log_obs_std.dtype == F64 and learned.log_obs_std.requires_grad
    with pytest.raises(ValueError, match="obs_std must be positive and finite, got nan"):
        LatentODE(2, obs_std=math.nan)
