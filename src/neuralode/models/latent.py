"""Latent ODEs and ODE-RNNs for irregularly sampled time series (Chen et al. 2018, Rubanova
et al. 2019), with the RNN and RNN-VAE baselines.

A batch of series observed at different times is one tensor on the sorted union of their
times: ``ts`` (T,), ``values`` (B, T, D) and ``mask`` (B, T, D), 1 where a value was observed
(a series observed at a subset of the times, features missing independently). Build it with
``collate_irregular``. Every model runs over the union once and uses the masks; the encoders
(``ODERNN``, ``GapRNN``) and ``LatentODE`` give a series the same hidden states,
reconstruction and ELBO in a batch as alone (up to the solver's tolerance). The discrete-time
baselines do not: ``RNNBaseline`` and ``RNNVAE``'s latent GRU step through every union time,
so a series' results there depend on the other series' times, as for the baselines they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._args import count, positive_finite
from .._solution import SolveStats
from ..adjoint import GradientStrategy
from ._exact import apply_keeping_exact
from .dynamics import MLPDynamics, mlp
from .ode_block import ODEBlock


def check_times(ts: torch.Tensor, name: str = "ts") -> None:
    """Raise a ValueError unless ``ts`` is a 1-D strictly increasing tensor of finite times."""
    if not isinstance(ts, torch.Tensor) or ts.ndim != 1:
        shape = tuple(ts.shape) if isinstance(ts, torch.Tensor) else type(ts).__name__
        raise ValueError(f"{name} must be a 1-D tensor of times, got {shape}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} contains NaN or inf: {ts.tolist()}")
    diffs = ts[1:] - ts[:-1]
    if bool((diffs <= 0).any()):
        i = int((diffs <= 0).nonzero()[0])
        kind = "duplicate" if float(diffs[i]) == 0 else "unsorted"
        raise ValueError(
            f"{name} must be strictly increasing; {kind} times at positions {i} and {i + 1}: "
            f"{float(ts[i])!r}, {float(ts[i + 1])!r}"
        )


def _observed(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` is 1 and 0 elsewhere, whatever the values hold there (an
    unobserved NaN or inf stays out of the result and out of its gradient)."""
    return torch.where(mask > 0, values, torch.zeros_like(values))


def _check_batch(
    ts: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, features: int | None = None
) -> None:
    """A ValueError naming the problem unless ``ts`` are valid times, ``values`` is
    (batch, len(ts), features) (``features``: the model's, when given) and ``mask`` is shaped
    like ``values`` with entries 0 and 1 (``check_mask``)."""
    check_times(ts)
    if values.ndim != 3 or values.shape[1] != ts.shape[0]:
        raise ValueError(
            f"values must have shape (batch, len(ts)={ts.shape[0]}, features), "
            f"got {tuple(values.shape)}"
        )
    if features is not None and values.shape[2] != features:
        raise ValueError(
            f"the model takes {features} feature(s) per time (its input_dim/obs_dim), got "
            f"values of shape {tuple(values.shape)}"
        )
    if mask.shape != values.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; values {tuple(values.shape)}")
    check_mask(mask)


def check_mask(mask: torch.Tensor, what: str = "mask") -> None:
    """A ValueError unless ``mask`` is bool or holds only 0 and 1: the models read it as
    observed where it is positive, weigh the likelihood by it and count it, which disagree
    on other entries (a NaN or a -1)."""
    if mask.dtype == torch.bool:
        return
    other = (mask != 0) & (mask != 1)
    if bool(other.any()):
        bad = mask[other][0].item()
        raise ValueError(
            f"{what} must hold 0 (not observed) and 1 (observed), or be a bool tensor; "
            f"it holds {bad!r}"
        )


def collate_irregular(
    series: Sequence[tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put series ``(ts_i, values_i[, mask_i])`` on the sorted union of their times.

    Arguments:
        series: ``ts_i`` (n_i,) strictly increasing, ``values_i`` (n_i, D) and optionally
            ``mask_i`` (n_i, D) (default: all observed).

    Returns:
        ``ts`` (T,), ``values`` (B, T, D) with zeros where not observed (whatever the
            series held there, NaN included), and ``mask`` (B, T, D).

    Raises:
        ValueError: no series, times not 1-D, finite and strictly increasing, values not
            (n_i, D) with the same D for every series, or a mask not shaped like its values.
    """
    if not series:
        raise ValueError("collate_irregular needs at least one series")
    dim = series[0][1].shape[-1] if series[0][1].ndim else None
    for i, item in enumerate(series):
        check_times(item[0], f"the times of series {i}")
        if item[1].ndim != 2 or item[1].shape[0] != item[0].shape[0]:
            raise ValueError(
                f"series {i}: values must have shape ({item[0].shape[0]}, features), "
                f"got {tuple(item[1].shape)}"
            )
        if item[1].shape[1] != dim:
            raise ValueError(
                f"series {i} has {item[1].shape[1]} features, series 0 has {dim}: "
                "every series needs the same features"
            )
        if len(item) > 2 and item[2].shape != item[1].shape:
            raise ValueError(
                f"series {i}: the mask must have the shape of its values "
                f"{tuple(item[1].shape)}, got {tuple(item[2].shape)}"
            )
        if len(item) > 2:
            check_mask(item[2], f"series {i}: the mask")
    ts = torch.unique(torch.cat([item[0] for item in series]))  # sorted
    values = ts.new_zeros(len(series), ts.shape[0], dim, dtype=series[0][1].dtype)
    mask = torch.zeros_like(values)
    for i, item in enumerate(series):
        where = torch.searchsorted(ts, item[0])
        m = item[2].to(values.dtype) if len(item) > 2 else torch.ones_like(item[1])
        # where, not a product: an unobserved entry may hold NaN (a common "missing" marker)
        values[i, where] = torch.where(m > 0, item[1], torch.zeros_like(item[1]))
        mask[i, where] = m
    return ts, values, mask


class ODERNN(nn.Module):
    """A GRU updated at each observation; between observations the hidden state follows an
    ODE, dh/dt = dynamics(t, h) (Rubanova et al. 2019).

    ``forward(ts, values, mask)`` runs over the union ``ts`` forwards (or backwards in time with
    ``backwards=True``). A series' hidden state starts at zero at its first observation (in
    the direction of travel), so it does not depend on the other series of the batch. The GRU
    sees ``[values * mask, mask]``: features missing at an observation time are marked.
    Returns ``(before, after)``, each (B, T, H): the state at each time before and after the
    update there (equal where nothing was observed; zero before a series' first observation).
    ``evolve(h, t_from, t_to)`` continues a state through the ODE alone. ``nfe_forward`` /
    ``nfe_backward`` count the vector field's evaluations summed over every interval solved
    since the last ``forward`` began (its solves and any ``evolve`` after it), forward and
    backward (the adjoint's; 0 for backpropagation).

    Arguments:
        input_dim: the features per time (values and mask).
        hidden_dim: the hidden state's dimension.
        dynamics: the ODE of the hidden state between observations (default: an MLP).
        backwards: run from the last time to the first (an encoder).
        method: the solver's name.
        rtol: its relative tolerance.
        atol: its absolute tolerance.
        step_size: its step for fixed-step methods.
        gradient: its gradient strategy.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        dynamics: nn.Module | None = None,
        backwards: bool = False,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        step_size: float | None = None,
        gradient: str | GradientStrategy = "direct",
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.backwards = backwards
        self.gru = nn.GRUCell(2 * input_dim, hidden_dim)
        if dynamics is None:
            dynamics = MLPDynamics(hidden_dim, hidden_dim, activation="tanh", autonomous=True)
        self.ode = ODEBlock(
            dynamics,
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            gradient=gradient,
        )
        self._stats: list[SolveStats] = []  # one per interval solved since forward began

    @property
    def nfe_forward(self) -> int:
        """Evaluations of the vector field by the solves since the last ``forward`` began."""
        return sum(s.nfe for s in self._stats)

    @property
    def nfe_backward(self) -> int:
        """Evaluations by the backward passes of those solves (0 for backpropagation)."""
        return sum(s.nfe_backward for s in self._stats)

    def evolve(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        """The hidden state ``h`` at ``t_from`` carried by the ODE to ``t_to``.

        Arguments:
            h: the hidden states, (B, H).
            t_from: the start time, a 0-dim tensor.
            t_to: the end time, a 0-dim tensor.

        Returns:
            The hidden states at ``t_to``, (B, H).
        """
        out = self.ode(h, torch.stack([t_from, t_to]).to(h.dtype))[-1]
        self._stats.append(self.ode.last_stats)
        return out

    def forward(
        self, ts: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run over the observations, updating at each and evolving between them.

        Arguments:
            ts: the union of the batch's observation times, (T,), strictly increasing.
            values: the observations, (B, T, D).
            mask: 1 where a feature was observed, else 0, (B, T, D).

        Returns:
            ``(before, after)``, each (B, T, H): the state at each time before and after the
                update there.

        Raises:
            ValueError: ``ts`` not 1-D, finite and strictly increasing, or ``values`` and
                ``mask`` not of shape (B, len(ts), D).
        """
        _check_batch(ts, values, mask, self.gru.input_size // 2)
        self._stats = []
        batch, steps, _ = values.shape
        h = values.new_zeros(batch, self.hidden_dim)
        started = torch.zeros(batch, 1, dtype=torch.bool, device=values.device)
        order = range(steps - 1, -1, -1) if self.backwards else range(steps)
        before: list[torch.Tensor] = [h] * steps
        after: list[torch.Tensor] = [h] * steps
        previous = None
        for i in order:
            if previous is not None and bool(started.any()):
                h = torch.where(started, self.evolve(h, ts[previous], ts[i]), h)
            before[i] = h
            observed = mask[:, i].bool().any(-1, keepdim=True)
            if bool(observed.any()):
                update = self.gru(
                    torch.cat([_observed(values[:, i], mask[:, i]), mask[:, i]], -1), h
                )
                h = torch.where(observed, update, h)
                started = started | observed
            after[i] = h
            previous = i
        return torch.stack(before, 1), torch.stack(after, 1)


class GapRNN(nn.Module):
    """A GRU over a series' observations only, fed ``[values * mask, mask, time gap]`` where
    the gap is the time since the series' previous observation (0 at the first).

    The state does not depend on the other series of a batch. Returns the states after each
    time (B, T, H); run ``backwards=True`` for an encoder that ends at the first observation.

    Arguments:
        input_dim: the observations' dimension.
        hidden_dim: the GRU's hidden units.
        backwards: run from the last observation to the first (an encoder).
    """

    def __init__(self, input_dim: int, hidden_dim: int, backwards: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.backwards = backwards
        self.gru = nn.GRUCell(2 * input_dim + 1, hidden_dim)

    def forward(self, ts: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the GRU over each series' observations.

        Arguments:
            ts: the union of the batch's observation times, (T,), strictly increasing.
            values: the observations, (B, T, D).
            mask: 1 where a feature was observed, else 0, (B, T, D).

        Returns:
            The state after each time, (B, T, H) (unchanged where nothing was observed).

        Raises:
            ValueError: ``ts`` not 1-D, finite and strictly increasing, or ``values`` and
                ``mask`` not of shape (B, len(ts), D).
        """
        _check_batch(ts, values, mask, (self.gru.input_size - 1) // 2)
        batch, steps, _ = values.shape
        h = values.new_zeros(batch, self.hidden_dim)
        last_t = values.new_zeros(batch, 1)  # time of each series' previous observation
        seen = torch.zeros(batch, 1, dtype=torch.bool, device=values.device)
        order = range(steps - 1, -1, -1) if self.backwards else range(steps)
        states: list[torch.Tensor] = [h] * steps
        for i in order:
            observed = mask[:, i].bool().any(-1, keepdim=True)
            if bool(observed.any()):
                t = ts[i].to(values.dtype).expand(batch, 1)
                gap = torch.where(seen, (t - last_t).abs(), torch.zeros_like(t))
                inputs = torch.cat([_observed(values[:, i], mask[:, i]), mask[:, i], gap], -1)
                h = torch.where(observed, self.gru(inputs, h), h)
                last_t = torch.where(observed, t, last_t)
                seen = seen | observed
            states[i] = h
        return torch.stack(states, 1)


class RNNBaseline(nn.Module):
    """The RNN baseline: a GRU stepping over the union times, fed ``[x_prev, m_prev,
    t_i - t_(i-1)]`` (the previous time's values and mask, and the time gap) and predicting
    the values at t_i from its state, as a change from the last value it was fed (the values
    of a smooth series change little between neighbouring times; a GRU's bounded state
    cannot carry large values by itself).

    Where a feature is not observed (mask 0: a gap inside the window, or a query time for
    interpolation or extrapolation), ``feedback=True`` feeds the RNN's own prediction for it
    instead of a zero, so it learns to run freely through the gaps of its training windows
    and extrapolates autoregressively; the mask channel still tells it which inputs are
    observations.

    Arguments:
        input_dim: the observations' dimension.
        hidden_dim: the GRU's hidden units.
        out_hidden: the hidden units of the read-out MLP.
        feedback: feed its own predictions where a feature is not observed.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int = 25, out_hidden: int = 20, feedback: bool = True
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.feedback = feedback
        self.gru = nn.GRUCell(2 * input_dim + 1, hidden_dim)
        self.out = nn.Sequential(
            nn.Linear(hidden_dim, out_hidden), nn.Tanh(), nn.Linear(out_hidden, input_dim)
        )

    def forward(self, ts: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict the values at every time from what came before it.

        Arguments:
            ts: the union of the batch's observation times, (T,), strictly increasing.
            values: the observations, (B, T, D).
            mask: 1 where a feature was observed, else 0, (B, T, D).

        Returns:
            The predictions, (B, T, D).

        Raises:
            ValueError: ``ts`` not 1-D, finite and strictly increasing, or ``values`` and
                ``mask`` not of shape (B, len(ts), D).
        """
        _check_batch(ts, values, mask, (self.gru.input_size - 1) // 2)
        batch, steps, dim = values.shape
        h = values.new_zeros(batch, self.hidden_dim)
        x_prev = values.new_zeros(batch, 2 * dim)
        dts = torch.diff(ts, prepend=ts[:1]).to(values.dtype)
        outs = []
        for i in range(steps):
            h = self.gru(torch.cat([x_prev, dts[i].expand(batch, 1)], -1), h)
            prediction = x_prev[:, :dim] + self.out(h)
            outs.append(prediction)
            m = mask[:, i]
            unobserved = prediction if self.feedback else torch.zeros_like(prediction)
            x_prev = torch.cat([torch.where(m > 0, values[:, i], unobserved), m], -1)
        return torch.stack(outs, 1)


@dataclass
class ELBO:
    """Per-series terms of the evidence lower bound; ``predictions`` (K, B, T, D) are the
    decoder means for the K posterior samples.

    Attributes:
        elbo: the bound per series, (B,).
        log_likelihood: the mean over samples of log p(x | z), (B,).
        kl: KL(q(z0 | x) || N(0, I)), analytic, (B,).
        predictions: the decoder means, (K, B, T, D).
        n_observed: the observed target entries per series, (B,).
    """

    elbo: torch.Tensor  # (B,)
    log_likelihood: torch.Tensor  # (B,) mean over samples of log p(x | z)
    kl: torch.Tensor  # (B,) KL(q(z0 | x) || N(0, I)), analytic
    predictions: torch.Tensor
    n_observed: torch.Tensor  # (B,) observed target entries

    def loss(self) -> torch.Tensor:
        """-ELBO per observed entry, averaged over the batch: a scale-free training loss.

        Returns:
            ``-sum(elbo) / max(sum(n_observed), 1)``, a 0-dim tensor.
        """
        return -self.elbo.sum() / self.n_observed.sum().clamp(min=1)


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum over times and features of log N(x | mean, std^2) where mask is 1: (..., B).

    Arguments:
        x: the observations, (..., B, T, D); entries where ``mask`` is 0 are ignored, NaN
            included.
        mean: the predicted means, broadcastable against ``x``.
        std: the observation noise's standard deviations, broadcastable against ``x``.
        mask: 1 where ``x`` was observed, else 0, broadcastable against ``x``.

    Returns:
        The log-likelihood of the observed entries per series, (..., B).
    """
    # unobserved entries are replaced before the arithmetic: a NaN there would reach the
    # result (NaN * 0) and the gradient of ``mean`` even through a mask
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    log_p = -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return (log_p * mask).sum((-1, -2))


class LinearPlusMLP(nn.Module):
    """y = W x + MLP(x): a linear map with a nonlinear correction, from ``dim_in`` to
    ``dim_out`` features (``layers`` hidden layers of ``hidden`` units).

    As latent dynamics dz/dt = A z + MLP(z) and as a decoder x = W z + b + MLP(z), the linear
    path represents an Archimedean spiral exactly: z = (cos s, sin s, s cos s, s sin s) solves
    the linear ODE of a rotation's Jordan block and the spiral is a linear read-out of z, at
    any radius (an MLP alone is only accurate where it was trained). ``linear_init="zero"``
    starts the linear path at 0; ``mlp_init_scale`` scales the MLP's initial output layer
    (and zeros its bias), so that with a small scale the nonlinear correction starts small;
    ``bias`` puts a bias on the linear path (for decoders, not for autonomous dynamics).

    Arguments:
        dim_in: the input features.
        dim_out: the output features.
        hidden: the MLP's hidden units.
        activation: the MLP's activation.
        bias: a bias on the linear path.
        linear_init: ``"zero"`` starts the linear path at 0 (else PyTorch's default).
        layers: the MLP's hidden layers.
        mlp_init_scale: scales the MLP's initial output layer.

    Raises:
        ValueError: ``dim_in``, ``dim_out`` or ``hidden`` not an integer >= 1, ``layers`` not
            an integer >= 0, an unknown ``linear_init`` or an unknown activation.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        hidden: int,
        activation: str = "elu",
        bias: bool = True,
        linear_init: str = "zero",
        layers: int = 1,
        mlp_init_scale: float = 1.0,
    ):
        super().__init__()
        if linear_init not in ("zero", "default"):
            raise ValueError(f"linear_init must be 'zero' or 'default', got {linear_init!r}")
        dim_in, dim_out = count("dim_in", dim_in), count("dim_out", dim_out)
        self.linear = nn.Linear(dim_in, dim_out, bias=bias)
        if linear_init == "zero":
            nn.init.zeros_(self.linear.weight)
            if bias:
                nn.init.zeros_(self.linear.bias)
        self.mlp = mlp(dim_in, hidden, layers, activation, dim_out)
        with torch.no_grad():
            self.mlp[-1].weight.mul_(mlp_init_scale)
            self.mlp[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the map.

        Arguments:
            x: the input, (..., dim_in).

        Returns:
            W x (+ b) + MLP(x), (..., dim_out).
        """
        return self.linear(x) + self.mlp(x)


class _Autonomous(nn.Module):
    """f(t, z) = net(z): a time-invariant vector field for ``ODEBlock``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


DYNAMICS = ("mlp", "linear+mlp")
DECODERS = ("mlp", "linear", "linear+mlp")


def _check_part(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class _LatentVAE(nn.Module):
    """Encoder run backwards over the observations -> q(z0) -> latent trajectory -> decoder.

    Subclasses define ``latent_trajectory(z0, ts) -> (T, N, L)`` for z0 (N, L) at ``self.t0``.
    ``obs_std`` is the observation noise: a number (fixed) or ``None`` (learned per feature).
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        encoder: str,
        encoder_hidden: int,
        decoder_hidden: int,
        obs_std: float | None,
        t0: float,
        encoder_options: dict | None = None,
        decoder: str = "mlp",
    ):
        super().__init__()
        _check_part("decoder", decoder, DECODERS)
        for name, size in (
            ("obs_dim", obs_dim), ("latent_dim", latent_dim),
            ("encoder_hidden", encoder_hidden), ("decoder_hidden", decoder_hidden),
        ):  # fmt: skip
            count(name, size)
        if encoder not in ("rnn", "odernn"):
            raise ValueError(f"encoder must be 'rnn' or 'odernn', got {encoder!r}")
        if obs_std is not None:
            obs_std = positive_finite("obs_std", obs_std)  # (None: learned)
        self.obs_dim, self.latent_dim, self.t0 = obs_dim, latent_dim, float(t0)
        self.encoder_kind = encoder
        if encoder == "rnn":
            self.encoder: nn.Module = GapRNN(obs_dim, encoder_hidden, backwards=True)
        else:
            self.encoder = ODERNN(
                obs_dim, encoder_hidden, backwards=True, **(encoder_options or {})
            )
        self.to_posterior = nn.Linear(encoder_hidden, 2 * latent_dim)
        if decoder == "mlp":
            self.decoder: nn.Module = nn.Sequential(
                nn.Linear(latent_dim, decoder_hidden),
                nn.ReLU(),
                nn.Linear(decoder_hidden, obs_dim),
            )
        elif decoder == "linear":
            self.decoder = nn.Linear(latent_dim, obs_dim)
        else:
            self.decoder = LinearPlusMLP(
                latent_dim,
                obs_dim,
                decoder_hidden,
                activation="relu",
                linear_init="default",
                mlp_init_scale=0.1,
            )
        self._log_obs_std_value = None if obs_std is None else math.log(obs_std)
        if obs_std is None:
            self.log_obs_std = nn.Parameter(torch.zeros(obs_dim))
        else:
            self.register_buffer("log_obs_std", torch.full((obs_dim,), self._log_obs_std_value))

    def _apply(self, fn: Any, recurse: bool = True) -> _LatentVAE:
        """``nn.Module``'s conversion (``.double()``, ``.to(dtype)``, ...), with a fixed
        ``obs_std``'s buffer still at the constructor's value set to log(obs_std) rounded to
        its new dtype, not to the rounding of the old dtype's value (1e-8 off in float32)."""
        exact = getattr(self, "_log_obs_std_value", None)  # (None: learned, or unpickled)
        return apply_keeping_exact(
            self, "log_obs_std", exact, lambda: super(_LatentVAE, self)._apply(fn, recurse)
        )

    @property
    def obs_std(self) -> torch.Tensor:
        return self.log_obs_std.exp()

    def latent_trajectory(self, z0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The latent states at ``ts`` from ``z0``, ``(len(ts), *z0.shape)``."""
        raise NotImplementedError

    def encode(
        self, ts: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (B, L) of q(z0 | observations)."""
        if float(ts[0]) < self.t0:
            raise ValueError(f"observation times start at {float(ts[0])!r}, before t0={self.t0}")
        if self.encoder_kind == "rnn":
            h = self.encoder(ts, values, mask)[:, 0]
        else:
            h = self.encoder(ts, values, mask)[1][:, 0]
            if float(ts[0]) > self.t0:  # carry the state back to t0
                h = self.encoder.evolve(h, ts[0], ts.new_tensor(self.t0))
        mean, pre_std = self.to_posterior(h).chunk(2, -1)
        return mean, nn.functional.softplus(pre_std) + 1e-4

    def decode(self, z0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """Decoder means at ``ts`` for latent states z0 (..., L) at t0: (..., T, D)."""
        check_times(ts, "query times")
        if ts.numel() == 0:  # no query times: no means (a target mask selecting nothing)
            return z0.new_zeros(*z0.shape[:-1], 0, self.obs_dim)
        if float(ts[0]) < self.t0:
            raise ValueError(f"query times start at {float(ts[0])!r}, before t0={self.t0}")
        lead = z0.shape[:-1]
        z0 = z0.reshape(-1, self.latent_dim)
        start = float(ts[0]) > self.t0
        times = torch.cat([ts.new_tensor([self.t0]), ts]) if start else ts
        zs = self.latent_trajectory(z0, times)[1 if start else 0 :]  # (T, N, L)
        out = self.decoder(zs).transpose(0, 1)  # (N, T, D)
        return out.reshape(*lead, ts.shape[0], self.obs_dim)

    def elbo(
        self,
        ts: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        target_mask: torch.Tensor | None = None,
        n_samples: int = 1,
        iwae: bool = False,
        noise: torch.Tensor | None = None,
    ) -> ELBO:
        """The ELBO of the values where ``target_mask`` is 1, given those where ``mask`` is 1.

        Interpolation: ``target_mask`` None (the observed values themselves). Extrapolation:
        ``extrapolation_masks`` splits a mask at a time. ``n_samples`` posterior samples are
        averaged (``iwae=False``: mean log-likelihood minus the analytic KL) or combined into
        the importance-weighted bound (``iwae=True``, Burda et al. 2016). ``noise`` (K, B, L)
        fixes the standard normal draws of the reparameterisation (default: fresh draws).
        """
        _check_batch(ts, values, mask, self.obs_dim)
        target_mask = mask if target_mask is None else target_mask
        if target_mask.shape != values.shape:
            raise ValueError(
                f"target_mask has shape {tuple(target_mask.shape)}; values {tuple(values.shape)}"
            )
        n_samples = count("n_samples", n_samples)
        enc_times = mask.bool().flatten(2).any(-1).any(0)
        if not bool(enc_times.any()):
            raise ValueError("mask selects no observations for the encoder")
        mean, std = self.encode(ts[enc_times], values[:, enc_times], mask[:, enc_times])
        if noise is None:
            eps = torch.randn(n_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
        elif noise.shape != (n_samples, *mean.shape):
            raise ValueError(
                f"noise must have shape {(n_samples, *mean.shape)}, got {tuple(noise.shape)}"
            )
        else:
            eps = noise
        z0 = mean + std * eps  # (K, B, L)
        query = target_mask.bool().flatten(2).any(-1).any(0)
        predictions = values.new_zeros(n_samples, *values.shape)
        predictions[:, :, query] = self.decode(z0, ts[query])
        log_lik = gaussian_log_likelihood(values, predictions, self.obs_std, target_mask)
        kl = (0.5 * (mean**2 + std**2 - 1) - torch.log(std)).sum(-1)
        if iwae:
            log_q = (-0.5 * eps**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_prior = (-0.5 * z0**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_w = log_lik + log_prior - log_q
            bound = torch.logsumexp(log_w, 0) - math.log(n_samples)
        else:
            bound = log_lik.mean(0) - kl
        return ELBO(bound, log_lik.mean(0), kl, predictions, target_mask.sum((1, 2)))

    def forward(
        self,
        ts: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        query_ts: torch.Tensor,
        n_samples: int = 0,
    ) -> torch.Tensor:
        """Decoder means at ``query_ts`` from the observations: (B, Q, D) at the posterior
        mean (``n_samples=0``) or (K, B, Q, D) for K posterior samples.

        Arguments:
            ts: the union of the batch's observation times, (T,), strictly increasing.
            values: the observations, (B, T, D).
            mask: 1 where a feature was observed, else 0, (B, T, D).
            query_ts: the times to decode at, (Q,), strictly increasing, from ``t0`` on.
            n_samples: 0 for the posterior mean, else that many posterior samples.

        Returns:
            The decoder means, (B, Q, D), or (K, B, Q, D) with ``n_samples=K``.

        Raises:
            ValueError: a malformed batch or ``query_ts``, a mask that selects nothing, or a
                negative ``n_samples``.
        """
        _check_batch(ts, values, mask, self.obs_dim)
        n_samples = count("n_samples", n_samples, minimum=0)
        observed = mask.bool().flatten(2).any(-1).any(0)
        if not bool(observed.any()):
            raise ValueError("mask selects no observations for the encoder")
        mean, std = self.encode(ts[observed], values[:, observed], mask[:, observed])
        if n_samples == 0:
            return self.decode(mean, query_ts)
        z0 = mean + std * torch.randn(n_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
        return self.decode(z0, query_ts)

    def sample_prior(self, n: int, ts: torch.Tensor) -> torch.Tensor:
        """Decoder means (n, T, D) at ``ts`` for n draws of z0 from N(0, I)."""
        z0 = torch.randn(n, self.latent_dim, dtype=self.log_obs_std.dtype)
        return self.decode(z0.to(self.log_obs_std.device), ts)


class LatentODE(_LatentVAE):
    """The latent ODE VAE (Chen et al. 2018; Rubanova et al. 2019).

    q(z0) comes from an RNN or ODE-RNN encoder run backwards over the observations, z(t) is
    solved from a time-invariant dz/dt = f(z) at the query times, and a decoder maps it to the
    observation space. Defaults follow the Neural ODE paper's spirals model: latent 4, encoder
    25 hidden units, dynamics and decoder MLPs of 20.

    Arguments:
        obs_dim: the observations' dimension.
        latent_dim: the latent state's dimension.
        encoder: ``"rnn"`` (a GRU fed the time gaps between observations: q(z0) does not
            see how long after t0 a series' first observation comes) or ``"odernn"`` (its
            state carried back to t0 by its ODE: for series that start at different times
            whose values do not tell when).
        encoder_hidden: the encoder's hidden units.
        dynamics_hidden: the hidden units of the dynamics' MLP.
        decoder_hidden: the hidden units of the decoder's MLP.
        obs_std: the observation noise of the Gaussian likelihood (``None``: learned per feature).
        t0: the time of z0.
        method: the latent solve's method (see ``ODEBlock``).
        rtol: its relative tolerance.
        atol: its absolute tolerance.
        step_size: its step for fixed-step methods.
        gradient: its gradient strategy.
        encoder_options: go to the ``ODERNN`` encoder.
        dynamics: ``"mlp"``, or ``"linear+mlp"``: f(z) = A z + MLP(z) (A starts at 0; see
            ``LinearPlusMLP``).
        decoder: ``"mlp"``, ``"linear+mlp"`` (W z + b + MLP(z)) or ``"linear"`` (W z + b): linear
            parts extrapolate beyond the states seen in training, such as spirals growing past
            the radii of the training windows (both MLP corrections start with their output layer
            scaled by 0.1).

    Raises:
        ValueError: an unknown encoder, dynamics or decoder, or an ``obs_std`` that is not
            positive and finite.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 4,
        encoder: str = "rnn",
        encoder_hidden: int = 25,
        dynamics_hidden: int = 20,
        decoder_hidden: int = 20,
        obs_std: float | None = 0.3,
        t0: float = 0.0,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        step_size: float | None = None,
        gradient: str | GradientStrategy = "direct",
        encoder_options: dict | None = None,
        dynamics: str = "mlp",
        decoder: str = "mlp",
    ):
        _check_part("dynamics", dynamics, DYNAMICS)
        count("dynamics_hidden", dynamics_hidden)
        super().__init__(
            obs_dim,
            latent_dim,
            encoder,
            encoder_hidden,
            decoder_hidden,
            obs_std,
            t0,
            encoder_options,
            decoder,
        )
        if dynamics == "mlp":
            field: nn.Module = MLPDynamics(
                latent_dim, dynamics_hidden, activation="elu", autonomous=True
            )
        else:
            net = LinearPlusMLP(
                latent_dim, latent_dim, dynamics_hidden, bias=False, layers=2, mlp_init_scale=0.1
            )
            field = _Autonomous(net)
        self.ode = ODEBlock(
            field, method=method, rtol=rtol, atol=atol, step_size=step_size, gradient=gradient
        )

    def latent_trajectory(self, z0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The latent states at ``ts``, solved from ``z0``.

        Arguments:
            z0: the latent states at ``ts[0]``, (N, L).
            ts: the times, (T,), strictly increasing.

        Returns:
            The latent states, (T, N, L).
        """
        return self.ode(z0, ts.to(z0.dtype))

    @property
    def nfe(self) -> int:
        """Function evaluations of the last latent solve."""
        return self.ode.nfe_forward


class RNNVAE(_LatentVAE):
    """The RNN-VAE baseline: the latent ODE's encoder and q(z0), but the latent trajectory
    is a GRU started at z0 and fed the time gaps between query times (``decoder`` as for
    ``LatentODE``).

    Arguments:
        obs_dim: the observations' dimension.
        latent_dim: the latent state's dimension.
        encoder: ``"rnn"`` or ``"odernn"``.
        encoder_hidden: the encoder's hidden units.
        rnn_hidden: the latent GRU's hidden units.
        decoder_hidden: the decoder MLP's hidden units.
        obs_std: the observation noise (``None``: learned per feature).
        t0: the time of z0.
        decoder: as for ``LatentODE``.
        encoder_options: go to the ``ODERNN`` encoder.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 4,
        encoder: str = "rnn",
        encoder_hidden: int = 25,
        rnn_hidden: int = 20,
        decoder_hidden: int = 20,
        obs_std: float | None = 0.3,
        t0: float = 0.0,
        decoder: str = "mlp",
        encoder_options: dict | None = None,
    ):
        super().__init__(
            obs_dim,
            latent_dim,
            encoder,
            encoder_hidden,
            decoder_hidden,
            obs_std,
            t0,
            encoder_options=encoder_options,
            decoder=decoder,
        )
        count("rnn_hidden", rnn_hidden)
        self.init = nn.Linear(latent_dim, rnn_hidden)
        self.gru = nn.GRUCell(1, rnn_hidden)
        self.readout = nn.Linear(rnn_hidden, latent_dim)

    def latent_trajectory(self, z0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The latent states at ``ts`` from ``z0``: the GRU fed the gaps between the times.

        Arguments:
            z0: the latent states at ``ts[0]``, (N, L).
            ts: the times, (T,).

        Returns:
            The latent states read out of the GRU, (T, N, L).
        """
        h = torch.tanh(self.init(z0))
        dts = torch.diff(ts, prepend=ts[:1]).to(z0.dtype)
        states = []
        for dt in dts:
            h = self.gru(dt.expand(z0.shape[0], 1), h)
            states.append(self.readout(h))
        return torch.stack(states)


def extrapolation_masks(
    ts: torch.Tensor, mask: torch.Tensor, t_split: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``mask`` at ``t_split``: the encoder's (times before) and the targets' (after).

    Arguments:
        ts: the union times, (T,).
        mask: the observation mask, (B, T, D).
        t_split: the time that separates encoder inputs from targets.

    Returns:
        ``(encoder_mask, target_mask)``, each shaped like ``mask``.
    """
    before = (ts < t_split)[None, :, None]
    if mask.dtype == torch.bool:
        return mask & before, mask & ~before
    return mask * before.to(mask.dtype), mask * (~before).to(mask.dtype)
