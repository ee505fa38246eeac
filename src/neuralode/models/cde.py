"""The neural controlled differential equation (Kidger et al. 2020) for time series.

The hidden state z is driven by a continuous path X that interpolates the observations:
dz = f_theta(z) dX, z(t0) = zeta_theta(X(t0)), and a linear map of z(t1) (or of z at every
observation) is the output. Irregular sampling and missing values (NaNs) are handled by the
interpolation, before the model: a series is its spline's coefficients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import cde
from .._args import count, flag, real
from .._solution import SolveStats
from ..compat import last_stats
from ..controllers import PIController
from ..solvers import METHODS

INTERPOLATIONS = ("cubic", "hermite", "linear")


def _check_log_ode(log_ode: object) -> tuple[int, float] | None:
    """``log_ode`` as ``(depth, window_length)``, or a ``ValueError`` naming what is wrong."""
    if log_ode is None:
        return None
    if not isinstance(log_ode, (tuple, list)) or len(log_ode) != 2:
        raise ValueError(
            "log_ode must be None or a pair (depth, window_length), e.g. (2, 10.0), "
            f"got {log_ode!r:.80}"
        )
    depth, window = log_ode
    depth = count("log_ode's depth", depth)
    window = real(
        "log_ode's window_length",
        window,
        "a positive finite number (a time interval, in the units of the series' times)",
        lambda w: 0 < w < math.inf,
    )
    return depth, window


class CDEField(nn.Module):
    """The vector field f(z) of a neural CDE: an MLP hidden -> width -> hidden x input, with
    a softplus hidden layer (smooth: the adjoint's backward solve differentiates f, and a
    ReLU's jumping derivative costs its accuracy) and a tanh output (bounded, so that the
    solution cannot blow up over a bounded control), reshaped to (..., hidden_channels,
    input_channels).

    ``calls`` counts its evaluations outside compiled code (the NFE of the eager solves
    that use it; the model reads its NFE from the solver instead).

    Arguments:
        input_channels: the control's channels.
        hidden_channels: the state's size.
        width: the MLP's hidden width.
    """

    def __init__(self, input_channels: int, hidden_channels: int, width: int = 64):
        super().__init__()
        self.input_channels, self.hidden_channels = input_channels, hidden_channels
        self.net = nn.Sequential(
            nn.Linear(hidden_channels, width),
            nn.Softplus(),
            nn.Linear(width, hidden_channels * input_channels),
            nn.Tanh(),
        )
        self.calls = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f(z), counted in ``calls``.

        Arguments:
            t: the time (unused: the control carries time, as a channel if wanted).
            z: the state, (..., hidden_channels).

        Returns:
            (..., hidden_channels, input_channels).
        """
        if not torch.compiler.is_compiling():  # (a compiled solve would guard on the count)
            self.calls += 1
        return self.net(z).unflatten(-1, (self.hidden_channels, self.input_channels))


class NeuralCDE(nn.Module):
    """A neural CDE: dz = f(z) dX over the interpolation X of a time series, z(t0) a linear
    map of X(t0), and a linear readout of z at the end (or at every observation).

    With ``log_ode=(depth, window_length)`` the model is a neural rough differential
    equation (the log-ODE method, Morrill et al. 2021, "Neural rough differential equations
    for long time series"): ``coefficients(x, t)`` cuts the series into windows of
    ``window_length`` (in the units of ``t``, observations by default) and replaces it by
    the cumulative sum of the windows' depth-``depth`` log-signatures
    ([`logsig_windows`][neuralode.cde.logsig_windows]), interpolated linearly, as torchcde's
    recipe does (``linear_interpolation_coeffs(logsig_windows(x, depth, window_length))``).
    The vector field then reads ``logsignature_channels(input_channels, depth)`` channels
    and the CDE runs over the window index ``0, 1, ..., num_windows``: one window is one
    unit of time, so an adaptive solver takes about as many steps per window as the
    ordinary model takes per observation, and a long series costs far fewer. At depth 1 a
    window's log-signature is its increment, so the path is the linear interpolation of the
    values at the windows' ends (what happens inside a window is lost); depth 2 adds each
    window's Lévy areas, depth 3 the next iterated integrals.

    A series goes in as the coefficients of its interpolation
    (``coeffs = model.coefficients(x)``, computed once per data set: they solve a linear
    system over the whole series when values are missing), so the model never sees the
    sampling times or the NaNs; give the times as a channel of ``x`` (their first channel,
    conventionally), so that the model knows how the series is sampled. The time of the
    CDE is the observation index (``0, 1, ..., length - 1``) unless ``t`` is given.

    ``nfe_forward`` / ``nfe_backward`` report the vector field's evaluations in the last
    forward pass and in the backward passes since it.

    Example:
        ```python
        import torch
        from neuralode.models import NeuralCDE

        x = torch.randn(32, 50, 3)                       # (batch, length, channels)
        x[:, 10:20, 1] = float("nan")                    # missing values
        model = NeuralCDE(input_channels=3, hidden_channels=16, output_channels=1)
        logits = model(model.coefficients(x))            # (32, 1)
        ```

    Arguments:
        input_channels: the series' channels (time included, if it is a channel).
        hidden_channels: the CDE's state size.
        output_channels: the readout's size (e.g. classes, or 1 for a binary logit).
        width: the vector field MLP's hidden width.
        interpolation: ``"cubic"`` (natural cubic spline: smooth, but each point depends on
            the whole series), ``"hermite"`` (Hermite cubic with backward differences:
            causal, for online prediction) or ``"linear"`` (causal).
        sequence: read out z at every observation, (..., length, output_channels), instead
            of at the end only, (..., output_channels). With ``log_ode``: at the start and
            at every window's end, (..., num_windows + 1, output_channels).
        adjoint: gradients by the continuous adjoint (O(1) memory in the length of the
            solve) instead of backpropagation through the solver's steps.
        method: the ODE method, a name of [`METHODS`][neuralode.solvers.METHODS].
        rtol: the relative tolerance of adaptive methods.
        atol: the absolute tolerance of adaptive methods.
        options: options of the method (as ``odeint``'s, e.g. ``step_size`` for a
            fixed-step method); with an adaptive method and the Hermite or linear
            interpolation, ``jump_t`` defaults to the knots (``X.grid_points``), where the
            path's derivative or its second derivative jumps (not with ``kvaerno4`` and
            ``kvaerno5``, whose stages pass a step's end and which refuse ``jump_t``).
        log_ode: ``None`` (the series' own interpolation) or ``(depth, window_length)``:
            the log-ODE method, as above; depth an int of at least 1, window_length a
            positive time interval. The path is then linear: ``interpolation`` must be left
            out or be ``"linear"``.

    Raises:
        ValueError: an unknown interpolation or method, sizes that are not integers of at
            least 1, a bad tolerance (as ``PIController``'s), a bad ``log_ode``, or
            ``log_ode`` with a cubic interpolation.
        TypeError: ``sequence`` or ``adjoint`` not a bool.
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        output_channels: int,
        width: int = 64,
        interpolation: str | None = None,
        sequence: bool = False,
        adjoint: bool = True,
        method: str = "dopri5",
        rtol: float = 1e-4,
        atol: float = 1e-6,
        options: dict[str, Any] | None = None,
        log_ode: tuple[int, float] | None = None,
    ):
        super().__init__()
        self.log_ode = _check_log_ode(log_ode)
        if self.log_ode is not None and interpolation not in (None, "linear"):
            raise ValueError(
                f"log_ode interpolates the log-signature path linearly; leave interpolation "
                f"out or pass interpolation='linear', got {interpolation!r}"
            )
        if interpolation is None:
            interpolation = "linear" if self.log_ode is not None else "cubic"
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        input_channels = count("input_channels", input_channels)
        hidden_channels = count("hidden_channels", hidden_channels)
        output_channels, width = count("output_channels", output_channels), count("width", width)
        sequence, adjoint = flag("sequence", sequence), flag("adjoint", adjoint)
        PIController(rtol, atol)  # (refuses bad tolerances now, not at the first forward)
        self.interpolation, self.sequence, self.adjoint = interpolation, sequence, adjoint
        self.method, self.rtol, self.atol = method, rtol, atol
        self.options = dict(options or {})
        # z0 reads x's first value; the log-signature path's first row is that value
        # followed by zeros, which the initial map does not read.
        self.initial = nn.Linear(input_channels, hidden_channels)
        path_channels = input_channels
        if self.log_ode is not None:
            path_channels = cde.logsignature_channels(input_channels, self.log_ode[0])
        self.field = CDEField(path_channels, hidden_channels, width)
        self.readout = nn.Linear(hidden_channels, output_channels)
        self._stats: SolveStats | None = None  # the last forward pass's solve

    def extra_repr(self) -> str:
        """The solve's settings, shown by ``repr`` and ``print`` beside the layers.

        Returns:
            The settings as ``name=value`` pairs.
        """
        options = f", options={self.options!r}" if self.options else ""
        if self.log_ode is not None:
            options += f", log_ode={self.log_ode!r}"
        return (
            f"interpolation={self.interpolation!r}, method={self.method!r}, rtol={self.rtol}, "
            f"atol={self.atol}, adjoint={self.adjoint}, sequence={self.sequence}{options}"
        )

    def coefficients(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The coefficients of this model's interpolation of ``x``.

        Arguments:
            x: the series, (..., length, input_channels), NaN where a value is missing
                (the first and last observation of a channel may be missing too: the
                nearest observed value fills them).
            t: the times of the interpolation (1-D, increasing; default
                ``0, 1, ..., length - 1``); pass the same ``t`` to ``forward``. With
                ``log_ode``, the observations' times, in whose units ``window_length`` is;
                ``forward`` then takes no ``t`` (its time is the window index).

        Returns:
            The coefficients, (..., length - 1, k * input_channels) (k = 4 for the cubics,
            1 for linear: then (..., length, input_channels)). With ``log_ode``, the linear
            interpolation's coefficients of the log-signature path,
            (..., num_windows + 1, logsignature_channels(input_channels, depth)).

        Raises:
            ValueError: from the interpolation or ``logsig_windows``, for a series of the
                wrong shape.
        """
        if self.log_ode is not None:
            depth, window_length = self.log_ode
            return cde.linear_interpolation_coeffs(cde.logsig_windows(x, depth, window_length, t))
        if self.interpolation == "cubic":
            return cde.natural_cubic_coeffs(x, t)
        if self.interpolation == "hermite":
            return cde.hermite_cubic_coefficients_with_backward_differences(x, t)
        return cde.linear_interpolation_coeffs(x, t)

    def control(self, coeffs: torch.Tensor, t: torch.Tensor | None = None) -> Any:
        """The continuous path X of ``coeffs``: a ``CubicSpline`` or ``LinearInterpolation``.

        Arguments:
            coeffs: from ``coefficients``.
            t: the times given to ``coefficients`` (default ``0, 1, ...``); ``None`` with
                ``log_ode`` (the path's time is the window index).

        Returns:
            The control, with ``evaluate``, ``derivative``, ``interval`` and ``grid_points``.

        Raises:
            ValueError: ``t`` given with ``log_ode``.
        """
        if self.log_ode is not None and t is not None:
            raise ValueError(
                "with log_ode the path's time is the window index 0, 1, ..., num_windows: "
                "give the observation times to coefficients(x, t) only, not to the model"
            )
        if self.interpolation == "linear":
            return cde.LinearInterpolation(coeffs, t)
        return cde.CubicSpline(coeffs, t)

    def forward(self, coeffs: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The readout of the CDE's solution over the series of ``coeffs``.

        Arguments:
            coeffs: the interpolation's coefficients of a batch of series (from
                ``coefficients``).
            t: the times given to ``coefficients`` (default ``0, 1, ...``); ``None`` with
                ``log_ode``.

        Returns:
            (..., output_channels): the readout of z at the last time; with
            ``sequence=True``, (..., length, output_channels), at every observation (with
            ``log_ode``, (..., num_windows + 1, output_channels), at the start and every
            window's end).

        Raises:
            ValueError: coefficients whose channels do not fit ``input_channels`` (or the
                log-signature's channels, with ``log_ode``); ``t`` given with ``log_ode``.
            SolverError: the solve failed (e.g. its step count ran out).
        """
        if self.adjoint and t is not None and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "NeuralCDE(adjoint=True) does not differentiate with respect to the times t: "
                "pass t.detach(), or use adjoint=False to backpropagate through the solve"
            )
        X = self.control(coeffs, t)
        x0 = X.evaluate(X.interval[0])
        if x0.size(-1) != self.field.input_channels:
            expected = f"input_channels={self.initial.in_features}"
            if self.log_ode is not None:
                expected += (
                    f" and log_ode depth {self.log_ode[0]}, whose log-signature path has "
                    f"{self.field.input_channels} channels"
                )
            raise ValueError(
                f"the coefficients interpolate {x0.size(-1)} channels, but the model has "
                f"{expected}; compute them with "
                "model.coefficients(x) from x of shape (..., length, input_channels)"
            )
        z0 = self.initial(x0[..., : self.initial.in_features])
        times = X.grid_points if self.sequence else X.interval
        options = dict(self.options)
        method = METHODS[self.method]()
        # the series' gradient through the steps (adjoint=False): each piece's coefficients
        # act on their piece alone, so it jumps at the knots, and a step across a knot, or
        # from one (f there reads the left piece), gets it only to first order in the step
        # (1e-3 off at rtol 1e-10 on a natural cubic spline; the adjoint's error control
        # sees the jump in its gradient channels)
        series_gradient = coeffs.requires_grad and torch.is_grad_enabled() and not self.adjoint
        knots = self.interpolation != "cubic" or series_gradient
        if knots and method.adaptive and method.stage_reach == 1:
            # dX/dt jumps at the knots (linear), or its derivative does (Hermite): steps
            # that straddle a knot are rejected and shrunk, so they end there instead (on
            # the experiment's spirals, a third fewer evaluations for Hermite). The natural
            # cubic spline is twice differentiable: without the series' gradient, restarting
            # at each knot costs more evaluations than it saves. kvaerno4/5 sample f past a
            # step's end, so they refuse jump_t: their steps straddle the knots.
            options.setdefault("jump_t", X.grid_points)
        kwargs: dict[str, Any] = {"method": self.method, "rtol": self.rtol, "atol": self.atol}
        if options:
            kwargs["options"] = options
        if self.adjoint:  # the adjoint differentiates the series too (X's tensors, from coeffs)
            series = (coeffs,) if coeffs.requires_grad else ()
            kwargs["adjoint_params"] = (*self.field.parameters(), *series)
        z = cde.cdeint(X, self.field, z0, times, adjoint=self.adjoint, **kwargs)
        self._stats = last_stats()  # (its nfe_backward is filled in by the adjoint's backward)
        return self.readout(z if self.sequence else z[..., -1, :])

    @property
    def nfe_forward(self) -> int:
        """Evaluations of the vector field by the last forward pass's solve (counted by the
        solver, so also inside a compiled solve)."""
        return 0 if self._stats is None else self._stats.nfe

    @property
    def nfe_backward(self) -> int:
        """Evaluations of the vector field by the adjoint's backward solve of the last
        forward pass (0 for backpropagation through the steps)."""
        return 0 if self._stats is None else self._stats.nfe_backward
