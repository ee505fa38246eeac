"""torchsde's names: methods, noise types, SDE types, Lévy area approximations, method options.

Each class is a read-only container of strings: ``"euler" in METHODS``, ``METHODS.all()`` (sorted)
and ``str(METHODS)`` behave as in torchsde, so code that checks names against it runs unchanged.
"""

from __future__ import annotations


class ContainerMeta(type):
    """A class whose public attributes are the members: ``in``, ``all()`` and ``str()``."""

    def all(cls) -> list[str]:
        return sorted(getattr(cls, x) for x in dir(cls) if not x.startswith("__"))

    def __str__(cls) -> str:
        return str(cls.all())

    def __contains__(cls, item: object) -> bool:
        return item in cls.all()


class METHODS(metaclass=ContainerMeta):  # noqa: N801
    euler = "euler"
    milstein = "milstein"
    srk = "srk"
    midpoint = "midpoint"
    reversible_heun = "reversible_heun"
    adjoint_reversible_heun = "adjoint_reversible_heun"
    heun = "heun"
    log_ode_midpoint = "log_ode"
    euler_heun = "euler_heun"


class NOISE_TYPES(metaclass=ContainerMeta):  # noqa: N801
    general = "general"
    diagonal = "diagonal"
    scalar = "scalar"
    additive = "additive"


class SDE_TYPES(metaclass=ContainerMeta):  # noqa: N801
    ito = "ito"
    stratonovich = "stratonovich"


class LEVY_AREA_APPROXIMATIONS(metaclass=ContainerMeta):  # noqa: N801
    none = "none"  # no Lévy area
    space_time = "space-time"  # the exact space-time Lévy area H
    davie = "davie"  # Davie's approximation of the Lévy area A from H
    foster = "foster"  # Foster's correction to Davie's approximation


class METHOD_OPTIONS(metaclass=ContainerMeta):  # noqa: N801
    grad_free = "grad_free"
