"""Regular grids in one and two dimensions with a boundary condition per axis.

Node placement follows the boundary condition of each axis, so that every operator sees the
unknowns only and the boundary enters through ghost points:

- ``Periodic()``: ``n`` nodes ``x_i = x0 + i dx``, ``dx = L / n`` (the node at ``x0 + L`` is
  the first one again).
- ``Dirichlet(left, right)``: ``n`` interior nodes ``x_i = x0 + (i + 1) dx``,
  ``dx = L / (n + 1)``; the values at ``x0`` and ``x0 + L`` are given.
- ``Neumann(left, right)``: ``n`` nodes including both ends, ``x_i = x0 + i dx``,
  ``dx = L / (n - 1)``; the derivative du/dx at each end is given.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch


def _finite(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``owner.name`` unless finite and real."""
    learnable = isinstance(value, torch.Tensor) and value.requires_grad
    try:
        number = math.nan if learnable else float(value)
    except (TypeError, ValueError, RuntimeError):
        number = math.nan
    if isinstance(value, (bool, complex, str, bytes)) or not math.isfinite(number):
        raise ValueError(f"{owner} {name} must be a finite real constant, got {value!r}")
    return number


@dataclass(frozen=True)
class Periodic:
    """Periodic boundary: the field wraps around."""


@dataclass(frozen=True)
class Dirichlet:
    """Given values at the ends of an axis.

    Attributes:
        left: the value at ``x0``.
        right: the value at ``x0 + L``.

    Raises:
        ValueError: a value that is not a finite real number.
    """

    left: float = 0.0
    right: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "left", _finite("Dirichlet", "left", self.left))
        object.__setattr__(self, "right", _finite("Dirichlet", "right", self.right))


@dataclass(frozen=True)
class Neumann:
    """Given derivatives du/dx at the ends of an axis (zero: no flux).

    Attributes:
        left: du/dx at ``x0``.
        right: du/dx at ``x0 + L``.

    Raises:
        ValueError: a slope that is not a finite real number.
    """

    left: float = 0.0
    right: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "left", _finite("Neumann", "left", self.left))
        object.__setattr__(self, "right", _finite("Neumann", "right", self.right))


Boundary = Periodic | Dirichlet | Neumann


@dataclass(frozen=True)
class Grid:
    """A regular grid of ``len(shape)`` = 1 or 2 axes; fields live on its last dimensions.

    A field on the grid is a tensor of shape ``(..., *shape)``: any leading dimensions
    (batch, channels) are carried along by every operator, in any dtype and on any device.

    The constructor takes the fields below and stores them normalised: one entry per axis,
    ints and floats.

    Attributes:
        shape: number of nodes per axis (the unknowns, see the module docstring): a tuple of
            1 or 2 whole numbers, at least 1 per axis (2 on a ``Neumann`` axis).
        lengths: length L of the domain per axis, positive and finite (given ``None``:
            1 per axis).
        boundary: the boundary condition of each axis (``Periodic()``, ``Dirichlet(...)`` or
            ``Neumann(...)``); given one for every axis, or one per axis (default
            ``Periodic()``).
        origin: the coordinate x0 of each axis' start, finite (given ``None``: 0 per axis).

    Raises:
        ValueError: a shape that is not a tuple of whole node counts, lengths or origins that
            are not finite numbers, or a shape, length or boundary that does not fit the
            number of axes.
    """

    shape: tuple[int, ...]
    lengths: tuple[float, ...] | None = None
    boundary: Boundary | tuple[Boundary, ...] = Periodic()
    origin: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        shape = _node_counts(self.shape)
        if len(shape) not in (1, 2):
            raise ValueError(f"Grid supports 1 or 2 axes, got shape {self.shape!r}")
        ndim = len(shape)
        lengths = _entries((1.0,) * ndim if self.lengths is None else self.lengths)
        origin = _entries((0.0,) * ndim if self.origin is None else self.origin)
        boundary = self.boundary
        boundaries = tuple(boundary) if isinstance(boundary, (tuple, list)) else (boundary,) * ndim
        for name, value in (("lengths", lengths), ("origin", origin), ("boundary", boundaries)):
            if value is None or len(value) != ndim:
                given = getattr(self, name)
                hint = f" (write ({given!r},))" if value is None and ndim == 1 else ""
                raise ValueError(
                    f"Grid {name} needs one entry per axis ({ndim}), got {given!r}{hint}"
                )
        lengths = tuple(_finite("Grid", "lengths", x) for x in lengths)
        origin = tuple(_finite("Grid", "origin", x) for x in origin)
        for b in boundaries:
            if not isinstance(b, (Periodic, Dirichlet, Neumann)):
                raise ValueError(
                    f"boundary must be Periodic(), Dirichlet(...) or Neumann(...), got {b!r}"
                )
        for n, b in zip(shape, boundaries):
            least = 2 if isinstance(b, Neumann) else 1
            if n < least:
                raise ValueError(f"an axis with {b!r} needs at least {least} nodes, got {n}")
        if any(not length > 0 for length in lengths):
            raise ValueError(f"Grid lengths must be positive, got {lengths!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "boundary", boundaries)

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    @property
    def boundaries(self) -> tuple[Boundary, ...]:
        """The boundary condition of each axis."""
        return self.boundary  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, ...]:
        """The node spacing dx per axis."""
        return tuple(
            _spacing(n, length, b)
            for n, length, b in zip(self.shape, self.lengths, self.boundaries)
        )  # type: ignore[arg-type]

    def axis_points(
        self, axis: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The node coordinates of one axis (placed by its boundary condition, see the module
        docstring), computed in float64.

        Arguments:
            axis: the grid axis, an index into ``shape`` (-1: the last).
            dtype: the dtype of the result.
            device: the device of the result.

        Returns:
            A 1-D tensor of ``shape[axis]`` increasing coordinates.

        Raises:
            IndexError: an axis that is not one of the grid's.
        """
        n, b, dx, x0 = (
            self.shape[axis],
            self.boundaries[axis],
            self.spacing[axis],
            self.origin[axis],
        )  # type: ignore[index]
        first = 1 if isinstance(b, Dirichlet) else 0
        index = torch.arange(first, first + n, dtype=torch.float64)
        return (x0 + dx * index).to(dtype=dtype, device=device)

    def coordinates(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, ...]:
        """The coordinates of every node, one tensor per axis (``ij`` indexing: axis 0 varies
        along the first grid dimension).

        Arguments:
            dtype: the dtype of the result.
            device: the device of the result.

        Returns:
            ``ndim`` tensors of shape ``shape``, the a-th holding each node's coordinate along
                axis a (``axis_points(a)`` broadcast over the other axis).
        """
        axes = [self.axis_points(a, dtype, device) for a in range(self.ndim)]
        return tuple(torch.meshgrid(*axes, indexing="ij"))

    def axis_index(self, axis: Any) -> int:
        """``axis`` as the index of one of this grid's axes.

        Arguments:
            axis: 0 or, on a 2-D grid, 1: any integer (a NumPy one too), not a bool.

        Returns:
            The axis as an ``int``.

        Raises:
            ValueError: anything else.
        """
        try:
            index = operator.index(axis)
        except TypeError:
            index = None
        if isinstance(axis, bool) or index is None or not 0 <= index < self.ndim:
            raise ValueError(
                f"axis must be in [0, {self.ndim}) for a {self.ndim}-D grid, got {axis!r}"
            )
        return index

    def check_field(self, u: torch.Tensor) -> None:
        """Check that ``u`` is a field on this grid.

        Arguments:
            u: the candidate field: any leading dimensions, then the grid's.

        Raises:
            ValueError: ``u`` is not a tensor whose last dimensions are ``shape``, or is not
                floating point or complex.
        """
        if not isinstance(u, torch.Tensor) or tuple(u.shape[u.ndim - self.ndim :]) != self.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(
                f"a field on this grid has shape (..., {', '.join(map(str, self.shape))}), "
                f"got {got}"
            )
        if not (u.is_floating_point() or u.is_complex()):
            raise ValueError(
                f"a field on a grid is floating point or complex, got {u.dtype} "
                "(convert it, e.g. u.double())"
            )


def _entries(value: Any) -> tuple[Any, ...] | None:
    """The entries of a sequence (tuple, list, 1-D array), or ``None`` for anything else."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return tuple(value)
    except TypeError:  # a scalar, or a 0-d array
        return None


def _node_counts(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, or a ``ValueError`` that shows the expected form."""
    counts = []
    entries = _entries(shape)
    for n in (None,) if entries is None else entries:
        try:
            if isinstance(n, bool):
                raise TypeError
            counts.append(operator.index(n))
        except TypeError:
            raise ValueError(
                f"Grid shape must be a tuple of whole node counts, one per axis, e.g. (64,) or "
                f"(32, 32); got {shape!r}"
            ) from None
    return tuple(counts)


def _spacing(n: int, length: float, boundary: Boundary) -> float:
    if isinstance(boundary, Dirichlet):
        return length / (n + 1)
    if isinstance(boundary, Neumann):
        return length / (n - 1)
    return length / n
