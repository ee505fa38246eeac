"""File checksums ("md5:HEX" or "sha256:HEX") and a downloader that verifies them."""

from __future__ import annotations

import hashlib
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ALGORITHMS = ("md5", "sha1", "sha256")


class ChecksumError(ValueError):
    """A file whose digest differs from the expected one."""


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks.

    Arguments:
        path: the file.
        algorithm: a `hashlib` algorithm name (``"sha256"``, ``"md5"``, ...).
        chunk: bytes read at a time.

    Returns:
        The lower-case hexadecimal digest.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected: str) -> None:
    """Checks that a file has the expected digest.

    Arguments:
        path: the file.
        expected: ``"ALGORITHM:HEX"``, e.g. ``"sha256:..."`` or ``"md5:..."``.

    Raises:
        ValueError: ``expected`` is not of the form ``"ALGORITHM:HEX"``.
        ChecksumError: the file's digest differs.
    """
    algorithm, sep, value = expected.partition(":")
    if not sep or not value:
        raise ValueError(f"checksum must look like 'sha256:HEX' or 'md5:HEX', got {expected!r}")
    actual = file_digest(path, algorithm.lower())
    if actual != value.lower():
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, expected {value.lower()} (corrupt or a different "
            "file; delete it and download again)"
        )


def download(
    urls: Sequence[str], destination: str | Path, checksum: str, timeout: float = 60.0
) -> Path:
    """Fetches the first mirror that answers into ``destination`` and verifies ``checksum``.

    A file already at ``destination`` with the right checksum is kept. The download goes to
    a temporary name and is renamed only once verified, so a cache never holds a bad file.

    Arguments:
        urls: mirrors of the file, tried in order.
        destination: where the file goes.
        checksum: its expected digest, ``"ALGORITHM:HEX"`` (see `verify_checksum`).
        timeout: seconds to wait for each mirror.

    Returns:
        ``destination``, as a `Path`.

    Raises:
        RuntimeError: no mirror gave a file with the right checksum (each failure listed).
    """
    destination = Path(destination)
    if destination.exists():
        try:
            verify_checksum(destination, checksum)
            return destination
        except ChecksumError:
            destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    failures = []
    for url in urls:
        try:
            print(f"downloading {url}", file=sys.stderr)
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as f:
                shutil.copyfileobj(response, f)
            verify_checksum(partial, checksum)
        except (OSError, ChecksumError) as error:
            failures.append(f"{url}: {error}")
            partial.unlink(missing_ok=True)
            continue
        partial.replace(destination)
        return destination
    raise RuntimeError(
        f"could not download {destination.name} from any mirror:\n  " + "\n  ".join(failures)
    )
