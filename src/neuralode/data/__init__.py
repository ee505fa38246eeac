"""Data sets: generated (spirals, periodic signals) or read from a directory the user names."""

from .periodic import PeriodicData, make_periodic
from .physionet import PHYSIONET_STATIC, PHYSIONET_VARIABLES, PhysioNetRecord, load_physionet
from .spirals import SpiralData, make_spirals

__all__ = [
    "PHYSIONET_STATIC",
    "PHYSIONET_VARIABLES",
    "PeriodicData",
    "PhysioNetRecord",
    "SpiralData",
    "load_physionet",
    "make_periodic",
    "make_spirals",
]
