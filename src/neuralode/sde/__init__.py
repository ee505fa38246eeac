"""Stochastic differential equations with torchsde's API: swap ``import torchsde`` for
``from neuralode import sde as torchsde`` and the code runs.

``sdeint`` solves with gradients by backprop, ``sdeint_adjoint`` with the stochastic adjoint
(Li et al. 2020; O(1) memory in the number of steps) or reversible Heun's exact adjoint
(Kidger et al. 2021). Brownian motion: ``BrownianInterval`` (and ``BrownianPath``,
``BrownianTree``, ``ReverseBrownian``) and ``VirtualBrownianTree`` (a pure function of the
query times, one time per row: the Brownian motion of per-sample solves). Names of methods
and types: ``neuralode.sde.settings``; torchsde's type aliases: ``neuralode.sde.types``.
In the core API the same methods are solvers of the one loop: ``neuralode.solve(SDETerm(sde,
bm), y0, ts, solver=SDESolver("euler"), controller=FixedGrid(step_size=dt))``.
"""

from . import settings, types
from ._adjoint import sdeint_adjoint
from ._base import BaseSDE, SDEIto, SDEStratonovich
from ._brownian import BaseBrownian, ReverseBrownian
from ._engine import SDESolver, SDETerm
from ._interval import BrownianInterval
from ._path_tree import BrownianPath, BrownianTree, brownian_interval_like
from ._sdeint import sdeint
from ._virtual import VirtualBrownianTree

__all__ = [
    "BaseBrownian",
    "BaseSDE",
    "BrownianInterval",
    "BrownianPath",
    "BrownianTree",
    "ReverseBrownian",
    "SDEIto",
    "SDESolver",
    "SDETerm",
    "SDEStratonovich",
    "VirtualBrownianTree",
    "brownian_interval_like",
    "sdeint",
    "sdeint_adjoint",
    "settings",
    "types",
]
