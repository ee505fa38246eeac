"""The latent SDE (Li et al. 2020): a posterior SDE conditioned on the data, a prior SDE, and a
decoder, trained by the ELBO with the path-space KL term from ``logqp=True``."""

from __future__ import annotations

import bisect
import functools

import torch
from torch import nn

from .._args import count, positive_finite
from ..sde import sdeint, sdeint_adjoint
from .dynamics import batch_time

_SDE_PARTS = ("f_net", "h_net", "g_net")


class DiagonalNet(nn.Module):
    """A diffusion of diagonal noise: channel i is an MLP 1-hidden-1 of y_i alone (sigmoid
    output), so ``g_i`` depends on ``y_i`` only, as Milstein and the Itô adjoint assume."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(dim, hidden))
        self.w2 = nn.Parameter(torch.randn(dim, hidden) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(y.unsqueeze(-1) * self.w1 + self.b1)
        return torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)


class LatentSDE(nn.Module):
    """A latent SDE model of time series ``xs`` of shape (T, batch, obs_dim).

    A GRU reads the series backwards: its output at observation i summarises the observations
    from i on. The posterior's initial state ``z0 ~ q(z0 | context_0)`` and its drift
    ``f(t, z, context_i)`` use it (``context_i`` of the next observation after ``t``, so the
    posterior steers towards the data); the prior has a learned
    ``p(z0)`` and drift ``h(t, z)``; both share the diffusion ``g(z)`` (diagonal, Itô); a linear
    decoder maps ``z`` to the observation mean.

    The draws of ``z0`` come from torch's generator and the Brownian motions' seeds from
    NumPy's (as ``sdeint``'s without ``entropy``): seed both for repeatable results. After
    ``elbo`` the model holds that batch's encoded context for its posterior drift; copies
    (``copy.deepcopy``, pickling) leave it out.

    Arguments:
        obs_dim: observation channels.
        latent_dim: latent state size.
        context_dim: the encoder's context size.
        hidden: hidden width of the drifts and the encoder.
        diffusion_scale: the largest diffusion (the sigmoid's output is scaled by it),
            positive and finite (at 0 the path KL, the integral of ``|(f - h) / g|^2 / 2``,
            is undefined).

    Raises:
        ValueError: a size that is not an integer >= 1, or a ``diffusion_scale`` that is not
            positive and finite.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(
        self,
        obs_dim: int = 1,
        latent_dim: int = 4,
        context_dim: int = 16,
        hidden: int = 64,
        diffusion_scale: float = 0.5,
    ):
        super().__init__()
        sizes = dict(obs_dim=obs_dim, latent_dim=latent_dim, context_dim=context_dim, hidden=hidden)
        obs_dim, latent_dim, context_dim, hidden = (count(k, v) for k, v in sizes.items())
        diffusion_scale = positive_finite("diffusion_scale", diffusion_scale)
        self.encoder = nn.GRU(obs_dim + 1, hidden)
        self.to_context = nn.Linear(hidden, context_dim)
        self.qz0 = nn.Linear(context_dim, 2 * latent_dim)
        self.pz0_mean = nn.Parameter(torch.zeros(latent_dim))
        self.pz0_logstd = nn.Parameter(torch.zeros(latent_dim))
        self.f_net = nn.Sequential(
            nn.Linear(latent_dim + context_dim + 1, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, latent_dim),
        )
        self.h_net = nn.Sequential(
            nn.Linear(latent_dim + 1, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, latent_dim),
        )
        self.g_net = DiagonalNet(latent_dim)
        self.decoder = nn.Linear(latent_dim, obs_dim)
        self.diffusion_scale = diffusion_scale
        self._context: torch.Tensor | None = None  # (T, batch, context_dim)
        self._times: list[float] = []

    def __getstate__(self) -> dict:
        """The module's state for ``copy.deepcopy`` and pickling, without the last batch's
        encoded context: that is an intermediate of ``elbo``'s graph (which deepcopy refuses
        to copy) and belongs to that batch only. A copy's posterior drift reads a context
        again after its own ``elbo``."""
        state = dict(super().__getstate__())
        state["_context"], state["_times"] = None, []
        return state

    def f(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The posterior drift at ``(t, z)``, conditioned on the encoded context.

        The context is the one ``elbo`` encoded last, at the first observation after ``t``
        (the last one past the end).

        Arguments:
            t: the time, a scalar (the context changes at observation times the batch shares).
            z: the latent states, (batch, latent_dim).

        Returns:
            The drift, (batch, latent_dim).

        Raises:
            RuntimeError: when no context was encoded for this batch (``f`` called before
                ``elbo``, or with another number of series).
        """
        if self._context is None or self._context.shape[1] != z.shape[0]:
            encoded = None if self._context is None else self._context.shape[1]
            raise RuntimeError(
                "the posterior drift f reads the context that elbo encodes from the "
                f"observations: call elbo (or sample_posterior) on these series first "
                f"(context for {encoded} series, state of {z.shape[0]})"
            )
        i = min(bisect.bisect_right(self._times, float(t)), len(self._times) - 1)
        time = batch_time(t, z).expand(z.shape[0], 1)
        return self.f_net(torch.cat([z, self._context[i], time], dim=-1))

    def h(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The prior drift at ``(t, z)``.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            z: the latent states, (batch, latent_dim).

        Returns:
            The drift, (batch, latent_dim).
        """
        return self.h_net(torch.cat([z, batch_time(t, z).expand(z.shape[0], 1)], dim=-1))

    def g(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The diagonal diffusion at ``(t, z)``, shared by prior and posterior.

        Arguments:
            t: the time (unused: the diffusion depends on ``z`` only).
            z: the latent states, (batch, latent_dim).

        Returns:
            The diffusion, (batch, latent_dim), each entry in (0, diffusion_scale).
        """
        return self.diffusion_scale * self.g_net(z)

    def _check_series(self, xs: torch.Tensor, ts: torch.Tensor) -> None:
        """Refuses observations that are not (T, batch, obs_dim) at T times ``ts`` (T,)."""
        obs_dim = self.decoder.out_features
        if xs.dim() != 3 or xs.shape[0] < 1 or xs.shape[1] < 1 or xs.shape[2] != obs_dim:
            raise ValueError(
                f"xs must be (T, batch, {obs_dim}) (time first, then series, then channels), "
                f"got shape {tuple(xs.shape)}"
            )
        if ts.dim() != 1 or len(ts) != xs.shape[0]:
            raise ValueError(
                f"ts must be the {xs.shape[0]} observation times of xs (1-D), got shape "
                f"{tuple(ts.shape)}"
            )
        if not bool(xs.isfinite().all()):
            raise ValueError(
                "xs contains NaN or infinite observations: the latent SDE takes series "
                "observed at every time (fill or drop the missing values)"
            )

    def encode(self, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The context at each observation time, from the GRU run from the last observation back.

        Arguments:
            xs: observations (T, batch, obs_dim).
            ts: their times (T,), on any device (read in ``xs``'s dtype, on its device).

        Returns:
            The context, (T, batch, context_dim).
        """
        times = ts[:, None, None].expand(-1, xs.shape[1], 1).to(device=xs.device, dtype=xs.dtype)
        out, _ = self.encoder(torch.cat([xs, times], dim=-1).flip(0))
        return self.to_context(out).flip(0)

    def elbo(
        self, xs: torch.Tensor, ts: torch.Tensor, noise_std: float, dt: float, adjoint: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-series ELBO terms on one batch: ``(log_likelihood, kl, zs, xs_mean)``; the
        KL is the initial state's plus the path's (the integral of ``|u|^2 / 2``,
        ``g u = f - h``).

        Arguments:
            xs: observations (T, batch, obs_dim).
            ts: their times (T,).
            noise_std: the observation noise's standard deviation.
            dt: the solver's step.
            adjoint: gradients by the stochastic adjoint instead of backprop.

        Returns:
            The batch means of the log-likelihood and of the KL, the posterior latent paths and
            the decoded means.

        Raises:
            ValueError: for ``xs`` that is not (T, batch, obs_dim) or holds NaN or infinite
                values, ``ts`` that are not T times, a ``noise_std`` that is not positive
                and finite or a ``dt`` that is not positive.
        """
        self._check_series(xs, ts)
        noise_std = positive_finite("noise_std", noise_std)
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        context = self.encode(xs, ts)
        self._context = context
        self._times = [float(t) for t in ts]
        mean, logstd = self.qz0(context[0]).chunk(2, dim=-1)
        z0 = mean + logstd.exp() * torch.randn_like(mean)
        if adjoint:
            # the context is a tensor the drift reads: its gradient comes from the adjoint too,
            # and reaches the encoder by ordinary backprop
            params = [context] + [
                p for name, p in self.named_parameters() if name.split(".")[0] in _SDE_PARTS
            ]
            zs, log_ratio = sdeint_adjoint(
                self, z0, ts, dt=dt, logqp=True, method="euler", adjoint_params=params
            )
        else:
            zs, log_ratio = sdeint(self, z0, ts, dt=dt, logqp=True, method="euler")
        xs_mean = self.decoder(zs)
        # (unvalidated: weights gone NaN make a NaN loss, which a training loop reports, rather
        # than an error about the distribution's arguments)
        normal = functools.partial(torch.distributions.Normal, validate_args=False)
        log_lik = normal(xs_mean, noise_std).log_prob(xs).sum((0, 2)).mean()
        qz0 = normal(mean, logstd.exp())
        pz0 = normal(self.pz0_mean, self.pz0_logstd.exp())
        kl0 = torch.distributions.kl_divergence(qz0, pz0).sum(-1)
        kl = (kl0 + log_ratio.sum(0)).mean()
        return log_lik, kl, zs, xs_mean

    @torch.no_grad()
    def sample_posterior(
        self, xs: torch.Tensor, ts: torch.Tensor, dt: float, n: int
    ) -> torch.Tensor:
        """``n`` posterior sample paths per series, decoded (without gradients).

        Arguments:
            xs: observations (T, batch, obs_dim).
            ts: their times (T,).
            dt: the solver's step.
            n: the number of sample paths per series.

        Returns:
            The decoded means of the paths, (n, T, batch, obs_dim).

        Raises:
            ValueError: for ``n`` that is not an integer >= 1, or as ``elbo`` for series that
                do not fit the model.
        """
        n = count("n", n)
        return torch.stack([self.elbo(xs, ts, 1.0, dt)[3] for _ in range(n)])

    @torch.no_grad()
    def sample_prior(self, ts: torch.Tensor, batch: int, dt: float) -> torch.Tensor:
        """Decoded sample paths of the prior SDE (drift ``h``), without gradients.

        Arguments:
            ts: the times (T,); the paths start at ``ts[0]``.
            batch: the number of paths.
            dt: the solver's step.

        Returns:
            The decoded means of the paths, (T, batch, obs_dim).

        Raises:
            ValueError: for ``batch`` that is not an integer >= 1.
        """
        batch = count("batch", batch)
        like = self.pz0_mean
        noise = torch.randn(batch, like.numel(), dtype=like.dtype, device=like.device)
        z0 = like + self.pz0_logstd.exp() * noise
        zs = sdeint(self, z0, ts, dt=dt, method="euler", names={"drift": "h"})
        return self.decoder(zs)
