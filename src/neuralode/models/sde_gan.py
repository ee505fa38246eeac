"""Neural SDEs as GANs (Kidger et al. 2021): a neural SDE generator of time series and a neural
CDE discriminator, trained as a Wasserstein GAN.

The generator draws ``X_0 = zeta(V)`` from noise ``V``, solves the Stratonovich SDE
``dX = mu(t, X) dt + sigma(t, X) o dW`` (general noise) and reads out ``Y = ell(X)``. The
discriminator solves the controlled differential equation ``dH = f(t, H) dt + g(t, H) dY``
driven by the series (the time channel included, linearly interpolated) and scores it by a
linear map of ``H`` at the end. Both equations are solved by reversible Heun
(``neuralode.sde.sdeint``): the discriminator's CDE is the SDE whose Brownian motion is the
series itself (``PathIncrements``), so gradients reach the generated series through the
solver, and the generator's gradients come from reversible Heun's exact adjoint.
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from .._args import count
from ..sde import BaseBrownian, sdeint, sdeint_adjoint
from .dynamics import batch_time


class LipSwish(nn.Module):
    """``0.909 * x * sigmoid(x)``: a 1-Lipschitz smooth activation (as in Kidger et al.)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.909 * nn.functional.silu(x)


def _sizes(**sizes: int) -> tuple[int, ...]:
    """The sizes (and ``layers``) by their argument names, each checked an integer >= 1."""
    return tuple(count(name, value) for name, value in sizes.items())


def _mlp(inputs: int, outputs: int, width: int, layers: int, tanh: bool) -> nn.Sequential:
    modules: list[nn.Module] = [nn.Linear(inputs, width), LipSwish()]
    for _ in range(layers - 1):
        modules += [nn.Linear(width, width), LipSwish()]
    modules.append(nn.Linear(width, outputs))
    if tanh:
        modules.append(nn.Tanh())
    return nn.Sequential(*modules)


class PathIncrements(BaseBrownian):
    """A series, linearly interpolated in time, as the driving path of a differential
    equation: ``path(ta, tb)`` is its increment over ``[ta, tb]``, differentiable in the
    series.

    Arguments:
        ts: the times of the series (T,), strictly increasing, at least two.
        ys: the series (batch, T, channels).

    Raises:
        ValueError: for ``ts`` that are not 1-D, not strictly increasing or fewer than two,
            or ``ys`` that is not (batch, T, channels) with T the number of times.
    """

    def __init__(self, ts: torch.Tensor, ys: torch.Tensor):
        if ts.dim() != 1 or len(ts) < 2:
            raise ValueError(f"ts must be 1-D with at least two times, got shape {tuple(ts.shape)}")
        if ys.dim() != 3 or ys.shape[1] != len(ts):
            raise ValueError(
                f"ys must be (batch, T, channels) with T = {len(ts)} times, got shape "
                f"{tuple(ys.shape)}"
            )
        self.ts, self.ys = ts, ys
        self._times = ts.tolist()
        if any(b <= a for a, b in zip(self._times, self._times[1:])):
            raise ValueError(f"ts must be strictly increasing, got {self._times}")

    def _at(self, t: torch.Tensor | float) -> torch.Tensor:
        t = min(max(float(t), self._times[0]), self._times[-1])
        i = min(max(bisect.bisect_left(self._times, t), 1), len(self._times) - 1)
        t0, t1 = self._times[i - 1], self._times[i]
        weight = (t - t0) / (t1 - t0)
        return self.ys[:, i - 1] + weight * (self.ys[:, i] - self.ys[:, i - 1])

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        if return_U or return_A:
            raise ValueError("a series as driving path has no Lévy area: use levy area 'none'")
        if tb is None:
            return self._at(ta) - self._at(self._times[0])
        return self._at(tb) - self._at(ta)

    def __repr__(self) -> str:
        return f"PathIncrements(times={len(self._times)}, shape={tuple(self.shape)})"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the increments."""
        return self.ys.dtype

    @property
    def device(self) -> torch.device:
        """The device of the increments."""
        return self.ys.device

    @property
    def shape(self) -> torch.Size:
        """The shape of one increment, (batch, channels)."""
        return torch.Size((self.ys.shape[0], self.ys.shape[2]))

    @property
    def levy_area_approximation(self) -> str:
        """``"none"``: a series as driving path has no Lévy area."""
        return "none"


class _Field(nn.Module):
    """A Stratonovich field of general noise on a state of size ``hidden``: the drift
    ``f(t, x)`` (hidden,) and ``g(t, x)`` (hidden, channels), MLPs of (t, x) with a tanh
    output. The generator's SDE (channels: Brownian motions) and the discriminator's CDE
    (channels: the series' channels) are both this."""

    sde_type, noise_type = "stratonovich", "general"

    def __init__(self, hidden: int, channels: int, width: int, layers: int):
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.drift = _mlp(1 + hidden, hidden, width, layers, tanh=True)
        self.diffusion = _mlp(1 + hidden, hidden * channels, width, layers, tanh=True)

    def f(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drift(torch.cat([batch_time(t, x).expand(x.shape[0], 1), x], 1))

    def g(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tx = torch.cat([batch_time(t, x).expand(x.shape[0], 1), x], 1)
        return self.diffusion(tx).view(x.shape[0], self.hidden, self.channels)


class SDEGenerator(nn.Module):
    """The neural SDE that generates series.

    The initial noise ``V`` comes from torch's generator and the Brownian motion's seed from
    NumPy's (as ``sdeint``'s without ``entropy``): seed both for repeatable series.

    Arguments:
        data_size: channels of the series (without time).
        initial_noise_size: size of the noise ``V`` that draws ``X_0``.
        noise_size: Brownian channels of the SDE.
        hidden_size: the SDE's state size.
        width: width of the MLPs.
        layers: hidden layers of the MLPs.

    Raises:
        ValueError: ``data_size``, ``initial_noise_size``, ``noise_size``, ``hidden_size``,
            ``width`` or ``layers`` not an integer >= 1.
    """

    def __init__(
        self,
        data_size: int = 1,
        initial_noise_size: int = 5,
        noise_size: int = 3,
        hidden_size: int = 16,
        width: int = 16,
        layers: int = 1,
    ):
        super().__init__()
        data_size, initial_noise_size, noise_size, hidden_size, width, layers = _sizes(
            data_size=data_size,
            initial_noise_size=initial_noise_size,
            noise_size=noise_size,
            hidden_size=hidden_size,
            width=width,
            layers=layers,
        )
        self.initial_noise_size = initial_noise_size
        self.initial = _mlp(initial_noise_size, hidden_size, width, layers, tanh=False)
        self.field = _Field(hidden_size, noise_size, width, layers)
        self.readout = nn.Linear(hidden_size, data_size)
        with torch.no_grad():  # a wide X_0 from the start (Kidger et al. scale it up too)
            for p in self.initial.parameters():
                p.mul_(3.0)

    def forward(self, ts: torch.Tensor, batch: int, dt: float | None = None) -> torch.Tensor:
        """Generate ``batch`` series at ``ts``.

        Arguments:
            ts: the times (T,), increasing.
            batch: how many series.
            dt: the solver's step (default: the smallest spacing of ``ts``, so that no step
                spans a whole output interval; outputs between steps are interpolated).

        Returns:
            The series with the time channel first, (batch, T, 1 + data_size), in the model's
            dtype and on its device, as the discriminator reads them.

        Raises:
            ValueError: for ``ts`` that are not 1-D with at least two times (one time when
                ``dt`` is given), a ``batch`` below 1 or a ``dt`` that is not positive.
        """
        if ts.dim() != 1 or len(ts) < (1 if dt is not None else 2):
            raise ValueError(
                "ts must be a 1-D tensor of at least two times (one when dt is given), got "
                f"shape {tuple(ts.shape)}"
            )
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if dt is not None and not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        # the draws and the solve follow the parameters, whatever the dtype or device of ts
        like = self.readout.weight
        ts = ts.to(like.device, like.dtype)
        noise = torch.randn(batch, self.initial_noise_size, dtype=like.dtype, device=like.device)
        x0 = self.initial(noise)
        step = _default_step(ts) if dt is None else dt
        xs = sdeint_adjoint(
            self.field,
            x0,
            ts,
            method="reversible_heun",
            dt=step,
            adjoint_method="adjoint_reversible_heun",
        )
        ys = self.readout(xs).transpose(0, 1)  # (batch, T, data)
        return with_time(ts, ys)


def _default_step(ts: torch.Tensor) -> float:
    """The generator's default step: the smallest spacing of ``ts`` (a larger one would step
    over the shorter output intervals, whose outputs would then be linear interpolations of
    one step), or ``ts[1] - ts[0]`` on an equally spaced grid up to the rounding of the times
    (as ``CDEDiscriminator`` reads one), whose steps then land on every time. Times that do
    not increase strictly are left to the solver's error."""
    spacings = (ts[1:] - ts[:-1]).detach()
    first, smallest, largest = float(spacings[0]), float(spacings.min()), float(spacings.max())
    if smallest > 0 and largest - smallest <= 1e-3 * first:
        return first
    return smallest if smallest > 0 else first


class CDEDiscriminator(nn.Module):
    """The neural CDE that scores series.

    The CDE is solved by reversible Heun with a fixed step, the spacing of the series' times,
    so each step runs from one observation to the next: the times must be equally spaced
    (resample a series observed at unequal times onto an equally spaced grid first).

    Arguments:
        data_size: channels of the series (without time).
        hidden_size: the CDE's state size.
        width: width of the MLPs.
        layers: hidden layers of the MLPs.

    Raises:
        ValueError: ``data_size``, ``hidden_size``, ``width`` or ``layers`` not an integer
            >= 1.
    """

    def __init__(self, data_size: int = 1, hidden_size: int = 16, width: int = 16, layers: int = 1):
        super().__init__()
        data_size, hidden_size, width, layers = _sizes(
            data_size=data_size, hidden_size=hidden_size, width=width, layers=layers
        )
        self.initial = _mlp(1 + data_size, hidden_size, width, layers, tanh=False)
        self.field = _Field(hidden_size, 1 + data_size, width, layers)
        self.readout = nn.Linear(hidden_size, 1)

    def forward(self, ys: torch.Tensor) -> torch.Tensor:
        """The mean score of a batch of series.

        Arguments:
            ys: series with the time channel first, (batch, T, 1 + data_size), on one
                equally spaced time grid shared by the batch.

        Returns:
            The mean of the scores over the batch (0-dim).

        Raises:
            ValueError: for ``ys`` that is not (batch, T, 1 + data_size) with T at least 2,
                holds NaN or infinite values, is not of the weights' dtype, or whose time
                channel is not one strictly increasing, equally spaced grid shared by the
                batch.
        """
        channels = self.initial[0].in_features
        if ys.dim() != 3 or ys.shape[0] < 1 or ys.shape[1] < 2 or ys.shape[2] != channels:
            raise ValueError(
                f"ys must be (batch, T, {channels}) (time first, then the data's channels) with "
                f"T at least 2, got shape {tuple(ys.shape)}"
            )
        if not bool(ys.detach().isfinite().all()):
            raise ValueError("ys contains NaN or infinite values: the discriminator scores "
                             "series observed at every time")  # fmt: skip
        dtype = self.initial[0].weight.dtype
        if ys.dtype != dtype:
            raise ValueError(f"ys is {ys.dtype} but the discriminator's weights are {dtype}: "
                             f"pass ys.to({dtype}) or convert the discriminator")  # fmt: skip
        ts = ys[0, :, 0].detach()
        if not torch.equal(ys[:, :, 0].detach(), ts.expand(ys.shape[0], -1)):
            raise ValueError("the series' time channels (ys[..., 0]) differ across the batch")
        h0 = self.initial(ys[:, 0])
        step = float(ts[1] - ts[0])
        path = PathIncrements(ts, ys)  # checks that ts increase strictly
        # the solver's fixed steps of ts[1] - ts[0] land on every time only on an equally
        # spaced grid (up to the rounding of the times)
        grid = ts[0].double() + step * torch.arange(len(ts), dtype=torch.float64, device=ts.device)
        if float((ts.double() - grid).abs().max()) > 1e-3 * step:
            spacings = ts[1:] - ts[:-1]
            raise ValueError(
                "CDEDiscriminator needs equally spaced times (its solver steps by "
                f"ts[1] - ts[0] = {step!r}); got spacings from {float(spacings.min())!r} to "
                f"{float(spacings.max())!r}: resample the series onto an equally spaced grid"
            )
        span = ts[[0, -1]]
        hs = sdeint(self.field, h0, span, bm=path, method="reversible_heun", dt=step)
        return self.readout(hs[-1]).mean()

    @torch.no_grad()
    def clip_weights(self) -> None:
        """Keep the discriminator Lipschitz: every linear layer's weights clipped to
        ``1 / out_features`` (Kidger et al.'s Wasserstein constraint)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                limit = 1.0 / module.out_features
                module.weight.clamp_(-limit, limit)


def with_time(ts: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Series (batch, T, channels) with the time channel prepended: (batch, T, 1 + channels).

    Arguments:
        ts: the times (T,).
        ys: the series (batch, T, channels).

    Returns:
        The series with time as channel 0.

    Raises:
        ValueError: ``ts`` is not 1-D, or ``ys`` is not (batch, len(ts), channels).
    """
    if ts.dim() != 1 or ys.dim() != 3 or ys.shape[1] != len(ts):
        raise ValueError(f"with_time takes ts (T,) and ys (batch, T, channels) with the same T, "
                         f"got shapes {tuple(ts.shape)} and {tuple(ys.shape)}")  # fmt: skip
    return torch.cat([ts[None, :, None].expand(ys.shape[0], -1, 1).to(ys.dtype), ys], 2)
