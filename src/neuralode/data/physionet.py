"""PhysioNet/CinC Challenge 2012 (ICU stays) read from a directory the user names.

The published text format: one file per stay (``set-a/132539.txt``), a header line
``Time,Parameter,Value``, then ``HH:MM,Name,Value`` rows with time since admission. The
record descriptors (RecordID, Age, Gender, Height, ICUType and the admission Weight) come
first at 00:00; -1 there means unknown. The other rows are measurements of 37 time series
variables (the challenge's 36 plus Weight), taken at irregular times, most missing at any
given time (a missing measurement has no row). Each stay becomes one irregular series with a
per-variable mask, as Rubanova et al. (2019) use it; ``collate_irregular`` batches them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .._args import count

PHYSIONET_VARIABLES: tuple[str, ...] = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine",
    "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP",
    "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets",
    "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
)  # fmt: skip
PHYSIONET_STATIC: tuple[str, ...] = ("Age", "Gender", "Height", "ICUType", "Weight")
_INDEX = {name: i for i, name in enumerate(PHYSIONET_VARIABLES)}
_STAMP = re.compile(r"(\d+):([0-5]\d)")  # HH:MM since admission, minutes 00-59


@dataclass
class PhysioNetRecord:
    """One ICU stay.

    Attributes:
        record_id: the stay's ``RecordID``.
        ts: the measurement times in hours since admission, (n,), strictly increasing.
        values: the measurements over ``PHYSIONET_VARIABLES``, (n, 37), 0 where not
            measured.
        mask: 1 where a variable was measured, else 0, (n, 37).
        static: the descriptors over ``PHYSIONET_STATIC``, (5,), NaN where unknown.
    """

    record_id: str
    ts: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    static: torch.Tensor


@dataclass
class PhysioNetData:
    """The records of `load_physionet`, and the per-variable mean and std it normalised them
    with.

    Attributes:
        records: the stays, sorted by file name.
        mean: the per-variable means (37,), float64; ``None`` without normalisation.
        std: the per-variable standard deviations (37,), float64; ``None`` without
            normalisation.
    """

    records: list[PhysioNetRecord]
    mean: torch.Tensor | None
    std: torch.Tensor | None


def _hours(stamp: str, where: str) -> float:
    match = _STAMP.fullmatch(stamp)
    if match is None:
        raise ValueError(
            f"{where}: time {stamp!r} is not HH:MM (hours since admission, minutes 00-59)"
        )
    return int(match[1]) + int(match[2]) / 60


def read_record(path: Path, quantization: float | None = None) -> PhysioNetRecord:
    """Parse one file; repeated measurements at one (quantised) time are averaged.

    Raises:
        ValueError: the file is unreadable or not UTF-8 text, or a line is malformed (its
            time not HH:MM, its value not a finite number, an unknown parameter).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not a text file of the PhysioNet format ({error}); keep only the "
            "records' .txt files in the directory"
        ) from None
    except OSError as error:
        raise ValueError(
            f"{path}: cannot read it ({error.strerror or error}); check that it is readable"
        ) from error
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ValueError(f"{path}: expected the header 'Time,Parameter,Value'")
    static = [math.nan] * len(PHYSIONET_STATIC)
    record_id = path.stem
    sums: dict[float, list[float]] = {}
    counts: dict[float, list[float]] = {}
    in_descriptors = True
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = line.strip().split(",")
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'HH:MM,Parameter,Value', got {line!r}")
        stamp, name, text = parts
        t = _hours(stamp, where)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where}: value {text!r} is not a number") from None
        if not math.isfinite(value):  # a measurement not taken has no row in this format
            raise ValueError(
                f"{where}: value {text!r} is not finite; remove the row (a missing measurement "
                "has no row; an unknown descriptor is -1)"
            )
        descriptor = name in ("RecordID", "Age", "Gender", "Height", "ICUType")
        descriptor = descriptor or (name == "Weight" and in_descriptors and t == 0)
        if descriptor:
            if name == "RecordID":
                record_id = str(int(value)) if value.is_integer() else text
            else:
                static[PHYSIONET_STATIC.index(name)] = math.nan if value == -1 else value
            continue
        in_descriptors = False
        if name not in _INDEX:
            raise ValueError(f"{where}: unknown parameter {name!r}")
        if quantization:
            t = round(t / quantization) * quantization
        row_sum = sums.setdefault(t, [0.0] * len(PHYSIONET_VARIABLES))
        row_count = counts.setdefault(t, [0.0] * len(PHYSIONET_VARIABLES))
        row_sum[_INDEX[name]] += value
        row_count[_INDEX[name]] += 1
    times = sorted(sums)
    total = torch.tensor([sums[t] for t in times], dtype=torch.float64)
    count = torch.tensor([counts[t] for t in times], dtype=torch.float64)
    dim = len(PHYSIONET_VARIABLES)
    total, count = total.reshape(-1, dim), count.reshape(-1, dim)
    mask = (count > 0).to(torch.float64)
    values = total / count.clamp(min=1)
    ts = torch.tensor(times, dtype=torch.float64)
    return PhysioNetRecord(record_id, ts, values, mask, torch.tensor(static, dtype=torch.float64))


def _check_options(
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    quantization: float | None,
    limit: int | None,
) -> None:
    """A ValueError naming the first bad option of ``load_physionet``."""
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ValueError(
            f"{given} was given without {missing}: pass both (e.g. a training set's "
            "PhysioNetData.mean and .std) or neither (computed from these records)"
        )
    dim = len(PHYSIONET_VARIABLES)
    for name, stat in (("mean", mean), ("std", std)):
        if stat is not None and tuple(torch.as_tensor(stat).shape) != (dim,):
            shape = tuple(torch.as_tensor(stat).shape)
            raise ValueError(f"{name} must have shape ({dim},), one per variable, got {shape}")
    if std is not None:
        std = torch.as_tensor(std)
        if not bool((torch.isfinite(std) & (std > 0)).all()):
            raise ValueError(f"std must be positive and finite, got {std.tolist()}")
    if quantization is not None and not (
        isinstance(quantization, int | float) and math.isfinite(quantization) and quantization > 0
    ):
        raise ValueError(
            f"quantization must be a positive number of hours or None, got {quantization!r}"
        )
    if limit is not None:
        try:
            count("limit", limit)
        except ValueError:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}") from None


def load_physionet(
    directory: str | Path,
    normalize: bool = True,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    quantization: float | None = None,
    limit: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PhysioNetData:
    """Read every ``*.txt`` stay of ``directory`` (or of its ``set-a`` subdirectory).

    Arguments:
        directory: the folder of the ``.txt`` records (set-a of the PhysioNet/CinC
            Challenge 2012), or its parent holding ``set-a``; a leading ``~`` is the home
            directory.
        normalize: scale each variable to zero mean and unit std over the observed values.
        mean: the per-variable means to normalise with (37,), e.g. a training set's; give
            it with ``std`` (without both, both are computed from these records).
        std: the per-variable standard deviations (37,), positive, as ``mean``.
        quantization: round times to multiples of that many hours (e.g. 1/60 or 0.1);
            ``None`` keeps them.
        limit: read only the first ``limit`` files (sorted by name); ``None``: all.
        dtype: the dtype of the records' tensors.

    Returns:
        The records, with the mean and std they were normalised by (``None`` without
            ``normalize``).

    Raises:
        FileNotFoundError: the directory does not exist, is a file, or holds no ``.txt``
            records.
        ValueError: only one of ``mean`` and ``std``, either not of shape (37,), ``std`` not
            positive and finite, ``limit`` not a positive integer, ``quantization`` not a
            positive finite number, or a record unreadable, not UTF-8 text or malformed (a
            time not HH:MM, a value not a finite number, an unknown parameter).
    """
    _check_options(mean, std, quantization, limit)
    root = Path(directory).expanduser()
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(
            f"PhysioNet directory {str(root)!r} is a file, not a directory; name the folder "
            "holding the records' .txt files (set-a), not a file"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"PhysioNet directory {str(root)!r} does not exist; download set-a of the "
            "PhysioNet/CinC Challenge 2012 (physionet.org/content/challenge-2012) and name "
            "the folder holding its .txt files"
        )
    if not any(root.glob("*.txt")) and (root / "set-a").is_dir():
        root = root / "set-a"
    files = sorted(root.glob("*.txt"))[:limit]
    if not files:
        raise FileNotFoundError(f"no PhysioNet .txt records in {str(root)!r}")
    records = [read_record(path, quantization) for path in files]
    if normalize:
        if mean is None or std is None:
            values = torch.cat([r.values for r in records])
            mask = torch.cat([r.mask for r in records])
            count = mask.sum(0).clamp(min=1)
            mean = (values * mask).sum(0) / count
            var = (((values - mean) * mask) ** 2).sum(0) / count
            std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
        else:
            mean = torch.as_tensor(mean, dtype=torch.float64)
            std = torch.as_tensor(std, dtype=torch.float64)
        for r in records:
            r.values = (r.values - mean) / std * r.mask
    else:  # nothing was normalised: no statistics to report
        mean = std = None
    for r in records:
        r.ts, r.values, r.mask = r.ts.to(dtype), r.values.to(dtype), r.mask.to(dtype)
        r.static = r.static.to(dtype)
    return PhysioNetData(records, mean, std)
