"""Depth-variant ("Galerkin") layers: weights θ(t) = Σ_k α_k φ_k(t) on a basis of functions
of time with trainable coefficients α_k (Massaroli et al., "Dissecting Neural ODEs", 2020).

A basis maps a time ``t`` of any shape to its ``n_terms`` values, ``(*t.shape, n_terms)``: a
scalar time (one time for the whole batch) gives ``(n_terms,)``, per-sample mode's times
``(batch,)`` give ``(batch, n_terms)``, so that every sample gets the weight at its own time.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._args import count, flag, positive_finite
from .._host import plain
from .dynamics import mlp


class Basis:
    """A basis of functions of time φ_0, ..., φ_{n_terms - 1}: ``basis(t)`` is
    ``(*t.shape, n_terms)``, the functions' values at each time.

    Subclasses set ``n_terms`` and implement ``__call__``, ``constant`` and ``jump_t``.
    """

    n_terms: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """The functions' values at ``t``.

        Arguments:
            t: times, of any shape (a scalar, or one per sample (batch,)).

        Returns:
            ``(*t.shape, n_terms)``, in ``t``'s dtype.
        """
        raise NotImplementedError

    def constant(self) -> torch.Tensor:
        """The coefficients c of the constant function 1 = Σ_k c_k φ_k(t): the layers start
        depth-invariant, with these times an ``nn.Linear``'s (``nn.Conv2d``'s) initial weight.

        Returns:
            ``(n_terms,)``.
        """
        raise NotImplementedError

    @property
    def jump_t(self) -> tuple[float, ...]:
        """The times where the functions jump (``()`` for continuous ones): pass them as
        ``solve(..., jump_t=basis.jump_t)`` so that adaptive steps land on them."""
        return ()


def _check_terms(n_terms: int) -> int:
    """``n_terms`` as an int (NumPy's integers too), or a ``ValueError`` unless it is an
    integer >= 1 (not a bool or a float)."""
    try:
        return count("n_terms", n_terms)
    except ValueError:
        raise ValueError(f"n_terms must be a positive integer, got {n_terms!r}") from None


def _check_interval(t0: float, t1: float) -> tuple[float, float]:
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"the basis's interval needs finite t0 < t1, got t0={t0}, t1={t1}")
    return t0, t1


class FourierBasis(Basis):
    """1, cos(ω t), sin(ω t), cos(2 ω t), sin(2 ω t), ... (the first ``n_terms``), with
    ω = 2π / ``period``: orthogonal on any interval of length ``period``, and periodic, so
    defined at every t.

    Arguments:
        n_terms: the number of functions.
        period: the period of the slowest (first) harmonic; the integration interval's
            length, for functions free to differ at its two ends.

    Raises:
        ValueError: ``n_terms`` not a positive integer, or ``period`` not positive.
    """

    def __init__(self, n_terms: int, period: float = 1.0):
        self.n_terms = _check_terms(n_terms)
        self.period = positive_finite("period", period)

    def __repr__(self) -> str:
        return f"FourierBasis(n_terms={self.n_terms}, period={self.period})"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        # frequencies 0, 1, 1, 2, 2, ...; cos at even positions, sin at odd ones (from 1 on)
        k = torch.arange(1, self.n_terms, dtype=t.dtype, device=t.device)
        angle = (2 * math.pi / self.period) * t[..., None] * ((k + 1) // 2)
        waves = torch.where(k % 2 == 1, torch.cos(angle), torch.sin(angle))
        return torch.cat([torch.ones_like(t)[..., None], waves], dim=-1)

    def constant(self) -> torch.Tensor:
        """The coefficients of the constant function 1: the first term is 1.

        Returns:
            ``(n_terms,)``, one at index 0 and zeros elsewhere.
        """
        return F.one_hot(torch.tensor(0), self.n_terms).float()


class PolynomialBasis(Basis):
    """Polynomials of degree 0, ..., ``n_terms`` - 1 in s = 2 (t - t0) / (t1 - t0) - 1, which
    maps [t0, t1] to [-1, 1]: Legendre polynomials (orthogonal on [t0, t1]) or monomials s^k.
    Outside [t0, t1] the polynomials extrapolate.

    Arguments:
        n_terms: the number of polynomials.
        t0: the start of the interval.
        t1: its end.
        kind: ``"legendre"`` or ``"monomial"``.

    Raises:
        ValueError: ``n_terms`` not a positive integer, an empty or infinite interval, or an
            unknown ``kind``.
    """

    KINDS = ("legendre", "monomial")

    def __init__(self, n_terms: int, t0: float = 0.0, t1: float = 1.0, kind: str = "legendre"):
        self.n_terms = _check_terms(n_terms)
        self.t0, self.t1 = _check_interval(t0, t1)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def __repr__(self) -> str:
        return (
            f"PolynomialBasis(n_terms={self.n_terms}, t0={self.t0}, t1={self.t1}, "
            f"kind={self.kind!r})"
        )

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        s = 2 * (t - self.t0) / (self.t1 - self.t0) - 1
        terms = [torch.ones_like(s)]
        for k in range(1, self.n_terms):
            if self.kind == "monomial":
                terms.append(terms[-1] * s)
            elif k == 1:
                terms.append(s)
            else:  # Bonnet's recursion: k P_k = (2k - 1) s P_{k-1} - (k - 1) P_{k-2}
                terms.append(((2 * k - 1) * s * terms[-1] - (k - 1) * terms[-2]) / k)
        return torch.stack(terms, dim=-1)

    def constant(self) -> torch.Tensor:
        """The coefficients of the constant function 1: the first term is 1.

        Returns:
            ``(n_terms,)``, one at index 0 and zeros elsewhere.
        """
        return F.one_hot(torch.tensor(0), self.n_terms).float()


class PiecewiseConstantBasis(Basis):
    """Indicators of ``n_terms`` equal bins of [t0, t1] (the "spectral"/stacked-layers
    basis: a weight per bin, like a ResNet's weights per block). The bins are closed on the
    left, the last also on the right. Times outside [t0, t1] are an error, checked where
    the times can be read (not in a ``torch.compile`` graph or a CUDA-graph capture).

    Arguments:
        n_terms: the number of bins.
        t0: the start of the interval.
        t1: its end.

    Raises:
        ValueError: ``n_terms`` not a positive integer or an empty or infinite interval;
            when called, times outside [t0, t1].
    """

    def __init__(self, n_terms: int, t0: float = 0.0, t1: float = 1.0):
        self.n_terms = _check_terms(n_terms)
        self.t0, self.t1 = _check_interval(t0, t1)

    def __repr__(self) -> str:
        return f"PiecewiseConstantBasis(n_terms={self.n_terms}, t0={self.t0}, t1={self.t1})"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not (torch.compiler.is_compiling() or _capturing(t)):
            values = plain(t)
            # a step's end computed as t + dt may miss t1 by a rounding error
            slack = 8 * torch.finfo(t.dtype).eps * max(abs(self.t0), abs(self.t1), 1.0)
            if values.numel() and (
                float(values.amin()) < self.t0 - slack or float(values.amax()) > self.t1 + slack
            ):
                raise ValueError(
                    f"t outside the piecewise-constant basis's interval [{self.t0}, {self.t1}] "
                    f"(t from {float(values.amin())} to {float(values.amax())}): build the "
                    "basis (or the layer) with t0 and t1 covering the solve's times"
                )
        position = (t - self.t0) * (self.n_terms / (self.t1 - self.t0))
        index = position.floor().clamp(0, self.n_terms - 1).long()
        return F.one_hot(index, self.n_terms).to(t.dtype)

    def constant(self) -> torch.Tensor:
        """The coefficients of the constant function 1: one per bin, since the bins cover
        [t0, t1].

        Returns:
            ``(n_terms,)`` ones.
        """
        return torch.ones(self.n_terms)

    @property
    def jump_t(self) -> tuple[float, ...]:
        """The inner bin edges, where the functions jump: pass them as
        ``solve(..., jump_t=basis.jump_t)`` so that adaptive steps land on them."""
        width = (self.t1 - self.t0) / self.n_terms
        return tuple(self.t0 + k * width for k in range(1, self.n_terms))


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


# The bases by the names the layers take; each built as make(n_terms, t0, t1).
BASES = {
    "fourier": lambda n, t0, t1: FourierBasis(n, period=t1 - t0),
    "legendre": lambda n, t0, t1: PolynomialBasis(n, t0, t1, kind="legendre"),
    "monomial": lambda n, t0, t1: PolynomialBasis(n, t0, t1, kind="monomial"),
    "piecewise": lambda n, t0, t1: PiecewiseConstantBasis(n, t0, t1),
}


def make_basis(basis: str | Basis, n_terms: int = 5, t0: float = 0.0, t1: float = 1.0) -> Basis:
    """A basis by name on [t0, t1], or ``basis`` itself if it is one.

    Arguments:
        basis: ``"fourier"`` (period t1 - t0), ``"legendre"``, ``"monomial"``,
            ``"piecewise"`` (``n_terms`` bins), or a [`Basis`][neuralode.models.Basis].
        n_terms: the number of functions (for a name).
        t0: the start of the interval (for a name).
        t1: its end (for a name).

    Returns:
        The basis.

    Raises:
        ValueError: an unknown name, ``n_terms`` not a positive integer, or an empty
            interval.
        TypeError: ``basis`` neither a name nor a ``Basis``.
    """
    if isinstance(basis, Basis):
        return basis
    if not isinstance(basis, str):
        raise TypeError(f"basis must be a name or a Basis, got {type(basis).__name__}")
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; available: {', '.join(BASES)}")
    _check_terms(n_terms)
    t0, t1 = _check_interval(t0, t1)
    return BASES[basis](n_terms, t0, t1)


def _combine(phi: torch.Tensor, terms: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_k φ_k terms_k for per-sample ``phi`` (batch, n_terms) and ``terms`` holding the
    n_terms outputs at dimension ``dim`` of (batch, ...) (``like``'s batch)."""
    if like.ndim == 0 or like.shape[0] != phi.shape[0]:
        raise ValueError(
            f"one time per sample needs the input's dimension 0 to be the batch: got "
            f"{phi.shape[0]} times and an input of shape {tuple(like.shape)}"
        )
    shape = [phi.shape[0]] + [1] * (terms.ndim - 1)
    shape[dim] = phi.shape[1]
    return (terms * phi.reshape(shape)).sum(dim)


class GalerkinLinear(nn.Module):
    """A linear layer whose weight and bias depend on time: W(t) = Σ_k α_k φ_k(t),
    b(t) = Σ_k β_k φ_k(t), with trainable coefficients α (n_terms, out, in) and
    β (n_terms, out). It starts as ``nn.Linear``'s initialisation at every time (the
    coefficients of the constant function times that weight).

    Arguments:
        in_features: the input's last dimension.
        out_features: the output's last dimension.
        basis: a basis name (see [`make_basis`][neuralode.models.make_basis]) or a
            [`Basis`][neuralode.models.Basis].
        n_terms: the number of basis functions (for a name).
        t0: the start of the basis's interval (for a name; a Fourier basis's period is
            t1 - t0).
        t1: its end.
        bias: learn a (depth-variant) bias.

    Raises:
        ValueError: ``in_features`` or ``out_features`` not an integer >= 1, an unknown basis
            name, ``n_terms`` not a positive integer, or an empty interval.
        TypeError: ``bias`` not a bool, or ``basis`` neither a name nor a ``Basis``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        basis: str | Basis = "fourier",
        n_terms: int = 5,
        t0: float = 0.0,
        t1: float = 1.0,
        bias: bool = True,
    ):
        super().__init__()
        in_features = count("in_features", in_features)
        out_features, bias = count("out_features", out_features), flag("bias", bias)
        self.basis = make_basis(basis, n_terms, t0, t1)
        self.in_features, self.out_features = in_features, out_features
        init = nn.Linear(in_features, out_features, bias=bias)
        c = self.basis.constant()
        self.weight = nn.Parameter(c[:, None, None] * init.weight.detach())
        self.bias = nn.Parameter(c[:, None] * init.bias.detach()) if bias else None

    def extra_repr(self) -> str:
        """The layer's sizes and basis, shown by ``repr`` and ``print``.

        Returns:
            The description.
        """
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"basis={self.basis!r}, bias={self.bias is not None}"
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer at time ``t``.

        Arguments:
            t: the time, a scalar or one per sample (batch,) (dimension 0 of ``x``).
            x: the input, (..., in_features).

        Returns:
            (..., out_features).

        Raises:
            ValueError: one time per sample and ``x``'s dimension 0 not of that length.
        """
        t = torch.as_tensor(t, device=x.device).to(x.dtype)
        phi = self.basis(t)
        if phi.ndim == 1:  # one time: one weight, for the whole batch
            weight = torch.tensordot(phi, self.weight, 1)
            bias = None if self.bias is None else phi @ self.bias
            return F.linear(x, weight, bias)
        n, out = self.basis.n_terms, self.out_features
        # every term's output, then each sample's combination at its own time
        terms = F.linear(
            x,
            self.weight.reshape(n * out, -1),
            None if self.bias is None else self.bias.reshape(-1),
        )
        return _combine(phi, terms.unflatten(-1, (n, out)), x, -2)


class GalerkinConv2d(nn.Module):
    """A convolution whose kernel and bias depend on time: K(t) = Σ_k α_k φ_k(t),
    b(t) = Σ_k β_k φ_k(t), with trainable coefficients α (n_terms, out, in, k, k) and
    β (n_terms, out). It starts as ``nn.Conv2d``'s initialisation at every time.

    Arguments:
        channels_in: the input channels.
        channels_out: the output channels.
        kernel_size: the kernel size.
        padding: the padding.
        stride: the stride.
        basis: a basis name (see [`make_basis`][neuralode.models.make_basis]) or a
            [`Basis`][neuralode.models.Basis].
        n_terms: the number of basis functions (for a name).
        t0: the start of the basis's interval (for a name).
        t1: its end.

    Raises:
        ValueError: ``channels_in``, ``channels_out``, ``kernel_size`` or ``stride`` not an
            integer >= 1, ``padding`` not an integer >= 0, an unknown basis name, ``n_terms``
            not a positive integer, or an empty interval.
        TypeError: ``basis`` neither a name nor a ``Basis``.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel_size: int = 3,
        padding: int = 1,
        stride: int = 1,
        basis: str | Basis = "fourier",
        n_terms: int = 5,
        t0: float = 0.0,
        t1: float = 1.0,
    ):
        super().__init__()
        channels_in = count("channels_in", channels_in)
        channels_out = count("channels_out", channels_out)
        kernel_size, stride = count("kernel_size", kernel_size), count("stride", stride)
        padding = count("padding", padding, minimum=0)
        self.basis = make_basis(basis, n_terms, t0, t1)
        self.channels_out = channels_out
        self.padding, self.stride = padding, stride
        init = nn.Conv2d(channels_in, channels_out, kernel_size, stride=stride, padding=padding)
        c = self.basis.constant()
        self.weight = nn.Parameter(c[:, None, None, None, None] * init.weight.detach())
        self.bias = nn.Parameter(c[:, None] * init.bias.detach())

    def extra_repr(self) -> str:
        """The layer's kernel, padding, stride and basis, shown by ``repr`` and ``print``.

        Returns:
            The description.
        """
        shape = tuple(self.weight.shape[1:])
        return f"kernel={shape}, padding={self.padding}, stride={self.stride}, basis={self.basis!r}"

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with the kernel at time ``t``.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            x: features (batch, channels_in, height, width).

        Returns:
            (batch, channels_out, height', width'), as ``nn.Conv2d`` gives.

        Raises:
            ValueError: one time per sample and a batch of another length.
        """
        t = torch.as_tensor(t, device=x.device).to(x.dtype)
        phi = self.basis(t)
        if phi.ndim == 1:
            weight = torch.tensordot(phi, self.weight, 1)
            return F.conv2d(x, weight, phi @ self.bias, self.stride, self.padding)
        n, out = self.basis.n_terms, self.channels_out
        terms = F.conv2d(
            x, self.weight.flatten(0, 1), self.bias.reshape(-1), self.stride, self.padding
        )
        return _combine(phi, terms.unflatten(1, (n, out)), x, 1)


class GalerkinMLPDynamics(nn.Module):
    """f(t, y) = an MLP whose linear layers are ``GalerkinLinear``: the weights, not an extra
    input, carry the time (a depth-variant neural ODE). States (..., dim).

    Arguments:
        dim: the state's last dimension.
        hidden: the hidden width.
        layers: the number of hidden layers.
        activation: the activation's name.
        basis: a basis name (see [`make_basis`][neuralode.models.make_basis]) or a
            [`Basis`][neuralode.models.Basis], shared by every layer.
        n_terms: the number of basis functions (for a name).
        t0: the start of the basis's interval (for a name; a Fourier basis's period is
            t1 - t0); the solve's t0, typically.
        t1: its end; the solve's t1.

    Raises:
        ValueError: ``dim`` or ``hidden`` not an integer >= 1, ``layers`` not an integer
            >= 0, an unknown basis or activation name, ``n_terms`` not a positive integer, or
            an empty interval.
        TypeError: ``basis`` neither a name nor a ``Basis``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
        basis: str | Basis = "fourier",
        n_terms: int = 5,
        t0: float = 0.0,
        t1: float = 1.0,
    ):
        super().__init__()
        dim = count("dim", dim)
        self.basis = make_basis(basis, n_terms, t0, t1)
        self.net = mlp(
            dim,
            hidden,
            layers,
            activation,
            dim,
            linear=lambda a, b: GalerkinLinear(a, b, self.basis),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            y: the state, (..., dim).

        Returns:
            dy/dt, of the shape of ``y``.
        """
        for layer in self.net:
            y = layer(t, y) if isinstance(layer, GalerkinLinear) else layer(y)
        return y
