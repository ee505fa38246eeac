"""How a solve runs: one validated choice instead of a set of flags.

``solve`` takes two execution arguments, ``per_sample`` and ``compile``; the older boolean
flags (``skip_finished``, ``compile_step``, ``device_loop``, ``cuda_graph``) and the
torchdiffeq-style ``options`` keys are aliases that ``Execution.of`` turns into the same
object. ``Execution.check`` is the one place that refuses a combination, a solver, a
controller or an option that a mode cannot run, with the reason and the fix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ._execution_checks import (
    check_batch_rows,
    check_compiled_step,
    check_device_loop,
    check_pair_rows,
)
from ._tree import TreeSpec
from .controllers.fixed import FixedGrid
from .solvers.hyper import HyperSolver
from .solvers.partitioned import PartitionedSolver

_ALIASES = ("skip_finished", "compile_step", "device_loop", "cuda_graph")
_COMPILE = {False: None, None: None, True: "solve", "solve": "solve", "step": "step"}


@dataclass(frozen=True)
class Execution:
    """How a solve runs.

    Attributes:
        per_sample: dimension 0 of the state is a batch of independent problems, each with
            its own steps (the device loop); otherwise the state is one problem.
        skip_finished: per sample, f sees only the samples still running.
        device_loop: one problem solved by the device loop (a batch of one): decisions stay
            on the device between scheduled checks.
        compile: ``None`` (eager), ``"step"`` (each step attempt, f included, one
            torch.compile graph) or ``"solve"`` (the whole adaptive solve one compiled
            ``while_loop`` graph, falling back to ``"step"`` where it cannot run).
        cuda_graph: each step attempt of the device loop captured as a CUDA graph (one
            problem: in the device loop, as ``device_loop``).
        asked: the compile argument as the user gave it (for error messages).
    """

    per_sample: bool = False
    skip_finished: bool = False
    device_loop: bool = False
    compile: str | None = None
    cuda_graph: bool = False
    asked: str = field(default="", compare=False)

    @classmethod
    def of(cls, per_sample: Any = False, compile: Any = False, **aliases: Any) -> Execution:
        """The execution from ``solve``'s two arguments and the older flags (aliases).

        Arguments:
            per_sample: ``False``, ``True`` or ``"skip_finished"`` (per sample, f sees
                only the running samples).
            compile: ``False``, ``True`` (or ``"solve"``: the whole solve one graph),
                ``"step"`` (each step one graph) or ``"cuda_graph"`` (each step of the
                device loop captured as a CUDA graph).
            aliases: the older flags ``skip_finished``, ``compile_step``, ``device_loop``
                and ``cuda_graph`` (booleans).

        Returns:
            The validated combination.

        Raises:
            TypeError: an unknown alias.
            ValueError: a value or a combination that no mode runs.
        """
        if per_sample is False and compile is False and not aliases:
            return EAGER  # the default
        try:  # the same arguments make the same (immutable) execution: validated once
            key = (
                tuple(sorted((name, type(v), v) for name, v in aliases.items())) if aliases else ()
            )
            return _cached((type(per_sample), per_sample), (type(compile), compile), key)
        except TypeError as error:
            if "unhashable" not in str(error):
                raise
        return cls._of(per_sample, compile, **aliases)

    @classmethod
    def _of(cls, per_sample: Any = False, compile: Any = False, **aliases: Any) -> Execution:
        unknown = sorted(set(aliases) - set(_ALIASES))
        if unknown:
            raise TypeError(f"solve() got unexpected keyword arguments {unknown}")
        flags = {name: bool(aliases.get(name, False)) for name in _ALIASES}
        if per_sample == "skip_finished":
            per_sample, flags["skip_finished"] = True, True
        elif not isinstance(per_sample, bool):
            raise ValueError(
                f"per_sample must be False, True or 'skip_finished', got {per_sample!r}"
            )
        if compile == "cuda_graph":
            compile, flags["cuda_graph"] = False, True
        if (
            compile not in _COMPILE
            or isinstance(compile, (int, float))
            and compile not in (True, False)
        ):
            raise ValueError(
                f"compile must be False, True ('solve': the whole solve one graph), 'step' "
                f"(each step one graph) or 'cuda_graph', got {compile!r}"
            )
        mode = _COMPILE[compile]
        asked = f"compile={compile!r}" if mode else ""
        if flags["compile_step"]:
            if mode == "solve":
                raise ValueError("give compile=True or compile_step=True, not both")
            mode, asked = "step", "compile_step=True"
        execution = cls(
            per_sample=per_sample,
            skip_finished=flags["skip_finished"],
            device_loop=(flags["device_loop"] or flags["cuda_graph"]) and not per_sample,
            compile=mode,
            cuda_graph=flags["cuda_graph"],
            asked=asked,
        )
        execution._check_combination()
        return execution

    @property
    def device(self) -> bool:
        """Whether the device loop runs the solve (per sample, or one problem in it)."""
        return self.per_sample or self.device_loop

    def _check_combination(self) -> None:
        if self.skip_finished and not self.per_sample:
            raise ValueError("skip_finished=True needs per_sample=True")
        if self.compile and self.skip_finished:
            raise ValueError(
                f"{self.asked} does not support skip_finished (the number of rows f sees "
                "changes, which would recompile)"
            )
        if self.cuda_graph and self.compile == "solve":
            raise ValueError(
                "compile=True runs the whole solve as one compiled graph and cuda_graph "
                "captures each step attempt: choose one"
            )
        if self.cuda_graph and self.skip_finished:
            raise ValueError(
                "cuda_graph=True does not support skip_finished (the number of rows f sees "
                "changes, and a CUDA graph replays fixed shapes)"
            )

    def check(self, spec: TreeSpec, solver: Any, controller: Any, options: dict) -> None:
        """Refuse, with the reason, what this execution cannot run: the one place for it.

        Arguments:
            spec: the state's structure.
            solver: the solver.
            controller: the step-size controller.
            options: ``solve``'s other arguments by name (``norm``, ``step_t``, ``jump_t``,
                ``perturb``, ``callbacks``, ``gradient``; ``event`` where given).

        Raises:
            ValueError: naming the mode and what it does not support.
        """
        if self.compile and not self.device:
            check_compiled_step(solver, controller, self.asked)
        if not self.device:
            return
        from .adjoint.backsolve import Backsolve
        from .adjoint.checkpointed import Checkpointed
        from .adjoint.direct import Direct

        what = "per_sample=True" if self.per_sample else "device_loop=True"
        if isinstance(solver, (HyperSolver, PartitionedSolver)) and not self.per_sample:
            raise ValueError(
                f"device_loop=True does not run {solver.name}: it takes fixed steps, which the "
                "host loop takes alike for one problem; solve without device_loop, or with "
                "per_sample=True for a batch of independent problems"
            )
        if isinstance(solver, PartitionedSolver):
            check_pair_rows(spec, solver.name)
            landings = [name for name in ("jump_t", "event") if options.get(name)]
            if landings:
                raise ValueError(
                    f"per_sample=True with {solver.name} does not support "
                    f"{' or '.join(landings)}: solve each sample alone (per_sample=False), "
                    "or torch.func.vmap the solve"
                )
        elif not spec.is_leaf and not self.per_sample:
            raise ValueError(
                "device_loop=True needs y0 to be one tensor (a nested state runs per sample, "
                "each tensor's first dimension the batch: per_sample=True)"
            )
        elif not spec.is_leaf and isinstance(solver, HyperSolver):
            raise ValueError(
                f"per_sample=True with {solver.name} needs y0 to be one tensor (its correction "
                "takes the state's rows); concatenate a nested state's tensors"
            )
        elif not spec.is_leaf:
            check_batch_rows(spec)
        check_device_loop(solver, controller, what)
        from .sde._engine import SDESolver  # (sde imports the engine)

        # landing points act inside an ODE method's attempt; a CUDA graph replays fixed inputs
        no_landings = self.cuda_graph or isinstance(solver, SDESolver)
        landings = len(options["step_t"]) > 0, len(options["jump_t"]) > 0
        if no_landings and any(landings):
            what = "cuda_graph=True" if self.cuda_graph else f"{what} with an SDE method"
        unsupported = {
            "norm": options["norm"] is not None,
            "step_t": landings[0] and no_landings,
            "jump_t": landings[1] and no_landings,
            "perturb": bool(options["perturb"]),
            "callbacks": options["callbacks"] is not None,
        }
        given = [name for name, used in unsupported.items() if used]
        if given:
            raise ValueError(f"{what} does not support {', '.join(given)}")
        gradient = options["gradient"]
        if gradient is not None and not isinstance(gradient, (Direct, Backsolve, Checkpointed)):
            raise ValueError(
                f"{what} supports the gradients Direct(), Backsolve() and Checkpointed(), got "
                f"{gradient!r}"
            )
        if isinstance(gradient, Checkpointed):  # it checkpoints the eager step attempts
            if self.compile is not None or self.cuda_graph:
                raise ValueError(
                    f"Checkpointed() with {what} checkpoints the eager step attempts: solve "
                    "without compile and cuda_graph, or use gradient=Direct() (compiled "
                    "attempts) or Backsolve() (the compiled whole solve)"
                )
            if self.skip_finished:
                raise ValueError(
                    "Checkpointed() with skip_finished=True: a recomputed attempt would see "
                    "the samples running when the backward pass runs; solve without "
                    "skip_finished"
                )
        only = controller.per_sample_only if isinstance(controller, FixedGrid) else None
        if only is not None and not self.per_sample:
            raise ValueError(
                f"{what} solves one problem: FixedGrid with {only} needs per_sample=True"
            )
        if only is not None and isinstance(gradient, Backsolve) and gradient.controller is None:
            raise ValueError(
                f"{what} with Backsolve() solves the adjoint backwards as one system, which "
                f"cannot take FixedGrid with {only}: use gradient=Direct(), or give "
                "Backsolve(controller=...) a controller for the backward solves"
            )
        shape = spec.shapes[0]
        if self.per_sample and len(shape) == 0:
            raise ValueError(
                "per_sample=True needs y0 with a batch dimension first (shape (batch, ...)), "
                f"got shape {tuple(shape)}"
            )
        if self.per_sample and shape[0] == 0:
            raise ValueError(
                f"per_sample=True needs at least one sample, got an empty batch (y0 of shape "
                f"{tuple(shape)}); skip the solve for an empty batch, or solve it with "
                "per_sample=False, which returns its empty outputs"
            )


EAGER = Execution()  # one problem, the host loop, nothing compiled: the default


@functools.lru_cache(maxsize=64)
def _cached(per_sample: tuple, compile: tuple, aliases: tuple) -> Execution:
    """``Execution.of`` by value (the types in the key: ``1 == True`` is not ``True``)."""
    return Execution._of(per_sample[1], compile[1], **{name: v for name, _, v in aliases})
