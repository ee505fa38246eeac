"""Multiple shooting: the time interval cut into segments that are solved side by side, as one
batch of independent problems, then matched at their boundaries."""

from ._parareal import PararealBlock, PararealSolution, Propagator, parareal
from .segments import (
    MultipleShooting,
    ShootingLoss,
    multiple_shooting_loss,
    shooting_groups,
    single_shooting,
)

__all__ = [
    "PararealBlock",
    "PararealSolution",
    "Propagator",
    "parareal",
    "MultipleShooting",
    "ShootingLoss",
    "multiple_shooting_loss",
    "shooting_groups",
    "single_shooting",
]
