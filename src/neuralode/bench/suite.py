"""``neuralode bench``: run the benchmark suite and write BENCHMARKS.md-ready tables and a
work-precision PNG into ``--out``. A part whose reference libraries (``NEEDS``) are not
installed is skipped with a note in the report; the other parts run. Each part's report is
also written to ``bench-PART.md``, and ``bench.md`` joins the latest of every part in the
directory, so that a run of some parts does not drop the sections of the others."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from .._cli_types import open_unit, positive_int, thread_count
from ..training.rundir import USER_FILES_RECORD, RunDirectoryError, ensure_directory, run_outputs
from . import device_option, imports

PARTS = ("core", "per-sample", "work-precision", "diffrax", "compiled", "gpu", "sde", "cde")
# "compiled" compiles for minutes; "gpu" is for a machine with one (it runs on the CPU too)
DEFAULT_PARTS = ("core", "per-sample", "work-precision", "diffrax")
# diffrax runs only where an interpreter with jax and diffrax is found (else a note says so)
# the reference libraries each part compares with (gpu: whichever are installed)
NEEDS = {
    "core": ("scipy", "torchdiffeq", "torchode"),
    "per-sample": ("scipy", "torchode"),
    "work-precision": ("scipy", "torchdiffeq", "matplotlib"),
    "diffrax": ("scipy",),  # jax and diffrax: in the interpreter --diffrax-python names
    "compiled": ("torchdiffeq", "torchode"),
    "gpu": (),
    "sde": ("torchsde",),
    "cde": ("torchcde",),
}


PLOT = "bench-work-precision.png"
# Looser tolerances let the work-precision part's Van der Pol solves blow up and crawl.
MAX_SWEEP_RTOL = 1e-2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="out/bench",
        help="output directory (default out/bench); a rerun into it replaces the parts it runs "
        "and keeps the others'",
    )
    parser.add_argument(
        "--full", action="store_true", help="all batch sizes, more repeats and tolerances"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(DEFAULT_PARTS),
        help="which studies to run (default: core, per-sample, work-precision and diffrax, "
        "which runs where an interpreter with jax and diffrax is found, see --diffrax-python; "
        "the others: compiled, the per-sample solves of both libraries and our standard loop "
        "under torch.compile, which spends minutes compiling, gpu, the time per step with "
        "and without CUDA graphs on a GPU, sde, the neural SDE against torchsde, and cde, "
        "the neural CDE against torchcde)",
    )
    parser.add_argument(
        "--diffrax-python",
        default=None,
        help="a Python interpreter with jax and diffrax for the diffrax part (default: "
        "$NEURALODE_DIFFRAX_PYTHON, else this one if it has them, else the part is skipped "
        "with a note)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the gpu and diffrax parts run: cpu or cuda[:N] (default: the gpu part on "
        "CUDA when there is one, the diffrax part on the CPU; with cuda both libraries of the "
        "diffrax part run on the GPU)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="timed repeats per case (default 3, 11 with --full)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=0,
        help="torch CPU threads, 0 = torch default (default %(default)s)",
    )
    parser.add_argument(
        "--rtols",
        type=open_unit,
        nargs="+",
        default=None,
        help="the work-precision part's relative tolerances, each at most "
        f"{MAX_SWEEP_RTOL:g} (default 1e-4 1e-6 1e-8; with --full 1e-3 to 1e-9)",
    )


def missing_peers(parts: list[str]) -> dict[str, list[str]]:
    """The parts that cannot run here, each with the libraries it needs that do not import
    (not installed, or broken).

    Arguments:
        parts: the ``--parts`` asked for.

    Returns:
        ``{part: [missing library, ...]}`` for every part that lacks one (empty: all can run).
    """
    missing = {part: [name for name in NEEDS[part] if not imports(name)] for part in parts}
    return {part: names for part, names in missing.items() if names}


def skip_note(part: str, names: list[str]) -> str:
    """The report's section for a part that was skipped: what it needs and how to install it."""
    return (
        f"### {part}: not run\n\nThe {part} part needs {', '.join(names)}, which do not "
        "import here (not installed, or broken); install them with: pip install "
        "'neuralode[bench]'"
    )


def run(args: argparse.Namespace) -> int:
    """Run the ``--parts`` and write ``bench.md`` (and the work-precision PNG) into ``--out``.

    A part whose reference libraries do not import is skipped, with a note in the report
    and on the terminal; the others run.

    Arguments:
        args: the parsed ``neuralode bench`` options (``add_arguments``).

    Returns:
        0, or 1 when no part could run.

    Raises:
        ValueError: ``--device`` or ``--diffrax-python`` names nothing usable.
    """
    _refuse_unused_options(args)
    skipped = missing_peers(args.parts)
    for part, names in skipped.items():
        print(f"neuralode bench: skipping {part}: needs {', '.join(names)} (not "
              "installed, or fails to import); "
              "pip install 'neuralode[bench]'", flush=True)  # fmt: skip
    parts = [part for part in args.parts if part not in skipped]
    if not parts:
        return 1
    from . import environment

    device = device_option(args.device)
    if "diffrax" in parts:  # a named interpreter that lacks diffrax fails here, at once
        from . import diffrax_peer

        python, note = diffrax_peer.find_python(args.diffrax_python)
    out = Path(args.out)
    _refuse_others_files(out)
    ensure_directory(out)  # a file or an unwritable place: one line, exit status 2
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (11 if args.full else 3)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    sections = [f"Environment: {environment()}; 1-min load average {load:.2f} at start"]
    sections += [skip_note(part, names) for part, names in skipped.items()]
    starts: list[tuple[str, int]] = []  # (part, index of its first section)

    def begins(part: str) -> bool:
        """Whether ``part`` runs; if so, the sections appended from now on are its own (and
        the terminal says which part runs, as each takes minutes)."""
        if part in parts:
            starts.append((part, len(sections)))
            print(f"[{len(starts)}/{len(parts)}] {part} "
                  f"({time.perf_counter() - start:.0f} s so far)", flush=True)  # fmt: skip
        return part in parts

    print(f"neuralode bench ({'full' if args.full else 'quick'}), writing to {out}/", flush=True)
    if begins("core"):
        from . import core

        batches = (1, 16, 256, 1024) if args.full else (1, 16, 256)
        min_seconds = 0.5 if args.full else 0.05
        with torch.no_grad():
            mlp = [
                r
                for b in batches
                for r in core.run_case(core.mlp_problem(b), repeats, 1, min_seconds)
            ]
            vdp = core.run_case(core.vdp_problem(256), repeats, 1, min_seconds)
        sections += [
            "### Core: MLP 2-64-64-2 tanh, float32, dopri5 (median times)\n\n" + core.table(mlp),
            "### Core: Van der Pol batch 256 as one system, float64\n\n" + core.table(vdp),
            core.verdict(mlp + vdp),
        ]
    if begins("per-sample"):
        from . import per_sample

        batches = (1, 16, 256, 1024) if args.full else (1, 16, 256)
        rows = per_sample.run(batches, repeats)
        sections.append(
            "### Per-sample mode vs torchode: Van der Pol, mu in [1, 25], dopri5\n\n"
            + per_sample.table(rows)
        )
        output_rows = per_sample.run_outputs(batches, repeats)
        sections.append(
            "### Per-sample mode vs torchode with 101 output times: Van der Pol, mu in [1, 25], "
            "dopri5\n\n" + per_sample.table(output_rows)
        )
        accuracy = per_sample.accuracy(
            (1e-4, 1e-5, 1e-6, 1e-7, 1e-8) if args.full else (1e-5, 1e-6, 1e-7)
        )
        sections.append(
            "### Per-sample NFE at equal accuracy vs torchode: Van der Pol batch 256\n\n"
            + per_sample.accuracy_table(accuracy)
        )
        skip_rows = per_sample.run_skip(batches, repeats)
        sections.append(
            "### Finished samples skipped (`skip_finished`): MLP field 32-256-32 with a time "
            "scale in [1, 25] per sample, dopri5, float32\n\n" + per_sample.table(skip_rows)
        )
    if begins("diffrax"):
        batches = (1, 16, 256, 1024) if args.full else (1, 16, 256)
        block = 0.2 if args.full else 0.05  # seconds of consecutive solves timed together
        where = "cpu" if device is None else str(device)
        sections.append(diffrax_peer.section(python, note, batches, repeats, block, where))
    if begins("compiled"):
        from . import core, per_sample

        batches = (1, 16, 256, 1024) if args.full else (1, 16, 256)
        compiled_rows = per_sample.run_compiled(batches, repeats)
        sections.append(
            "### Per-sample mode under torch.compile vs torchode compiled: Van der Pol, "
            "dopri5 (neuralode `compile_step=True`, torchode `torch.compile(solver.solve)`)\n\n"
            + per_sample.table(compiled_rows, reference="torchode compiled")
        )
        standard_rows = core.run_compiled(batches, 41 if args.full else 15)
        sections.append(
            "### The standard loop compiled (`compile_step=True`) vs eager and torchdiffeq: "
            "MLP 2-64-64-2 tanh, float32, dopri5\n\n" + core.compiled_table(standard_rows)
        )
    if begins("gpu"):
        from . import gpu

        on = device or gpu.default_device()
        batches = (16, 256, 1024) if args.full or on.type == "cuda" else (16, 256)
        gpu_rows = gpu.run(on, batches, repeats)
        sections.append(
            f"### Time per step on {gpu.device_name(on)}: MLP 2-64-64-2 tanh, float32, "
            "dopri5, with and without CUDA graphs (each solve captures its graph afresh: the "
            "capture is in the time)\n\n" + gpu.table(gpu_rows)
        )
    if begins("sde"):
        from . import sde

        sde_rows = sde.run(repeats)
        sections.append(
            "### Neural SDE vs torchsde: diagonal noise, batch 512, state 8, dt 2^-7 on [0, 1], "
            "float32, the same Brownian motion (median times)\n\n" + sde.table(sde_rows)
        )
        sections.append(
            "### SDE adjoint memory: extra peak RSS of forward + backward, euler forward, "
            "batch 512, state 8\n\n" + sde.memory_table(sde.memory((128, 1024)))
        )
    if begins("cde"):
        from . import cde

        sections.append(
            "### Neural CDE vs torchcde: natural cubic spline of irregular spirals (and the "
            "Hermite cubic with backward differences, jump_t at the knots), dopri5 at rtol 1e-4, "
            "atol 1e-6, float32 (median times)\n\n" + cde.table(cde.run(repeats))
        )
    if begins("work-precision"):
        from . import work_precision

        rtols = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9) if args.full else (1e-4, 1e-6, 1e-8)
        rtols = tuple(args.rtols) if args.rtols else rtols
        points = work_precision.run(rtols, repeats)
        work_precision.plot(points, out / PLOT)
        sections.append(
            "### Work-precision: Van der Pol batch 16, float64 (min times)\n\n"
            + work_precision.table(points)
            + f"\n\n![work-precision]({PLOT})"
        )
    ends = [index for _, index in starts[1:]] + [len(sections)]
    for (part, first), end in zip(starts, ends):  # each part's file, with its environment
        (out / f"bench-{part}.md").write_text("\n\n".join([sections[0], *sections[first:end]]))
    report = "\n\n".join(sections) + "\n"
    (out / "bench.md").write_text(merged_report(out, skipped))
    print()
    print(report)
    print(f"wrote {out / 'bench.md'} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def merged_report(out: Path, skipped: dict[str, list[str]] | None = None) -> str:
    """``bench.md``: every part's latest report in ``out`` (``bench-PART.md``, each with the
    environment it was measured in), in the order of ``PARTS``, so that running some parts
    replaces their sections and keeps the others'; the notes of this run's skipped parts
    first.

    Arguments:
        out: the ``--out`` directory.
        skipped: the parts this run skipped, with the libraries each lacks.

    Returns:
        The markdown.
    """
    notes = [skip_note(part, names) for part, names in (skipped or {}).items()]
    files = [out / f"bench-{part}.md" for part in PARTS]
    reports = [path.read_text().strip() for path in files if path.exists()]
    return "\n\n".join(notes + reports) + "\n"


def _refuse_unused_options(args: argparse.Namespace) -> None:
    """Options of parts that are not run are refused, not ignored; so are sweep tolerances
    above ``MAX_SWEEP_RTOL``."""
    if args.rtols and "work-precision" not in args.parts:
        raise ValueError("--rtols sets the work-precision part's tolerances: add work-precision "
                         "to --parts, or leave --rtols out")  # fmt: skip
    loose = [rtol for rtol in args.rtols or () if rtol > MAX_SWEEP_RTOL]
    if loose:
        raise ValueError(f"--rtols {loose[0]:g}: the work-precision sweep takes tolerances up to "
                         f"{MAX_SWEEP_RTOL:g} (looser ones let its Van der Pol solves blow up "
                         "and crawl)")  # fmt: skip
    if args.device and not {"gpu", "diffrax"} & set(args.parts):
        raise ValueError("--device places the gpu and diffrax parts: add one of them to "
                         "--parts, or leave --device out")  # fmt: skip


def _refuse_others_files(out: Path) -> None:
    """``--out`` may hold an earlier benchmark (a rerun replaces the parts it runs and keeps
    the others') but nothing that another command wrote or a ``bench.md`` of the user's.

    Raises:
        RunDirectoryError: ``out`` holds files of another command, or a ``bench.md`` without
            the ``bench-PART.md`` files that a benchmark writes beside it.
    """
    if not out.is_dir():
        return
    others = [path.name for path in run_outputs(out) if path.name != USER_FILES_RECORD]
    if others:
        raise RunDirectoryError(
            f"--out {out} holds files that other neuralode commands write "
            f"({', '.join(others)}); give the benchmarks a directory of their own"
        )
    if (out / "bench.md").exists() and not any(out.glob("bench-*.md")):
        raise RunDirectoryError(
            f"--out {out} holds a bench.md that neuralode bench did not write (no "
            "bench-PART.md beside it); move it, or choose another --out"
        )
