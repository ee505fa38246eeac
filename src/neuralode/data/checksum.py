"""File checksums ("md5:HEX" or "sha256:HEX") and a downloader that verifies them."""

from __future__ import annotations

import hashlib
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ALGORITHMS = ("md5", "sha1", "sha256")
# the longest a download waits for a mirror to connect or to send its next bytes
STALL_TIMEOUT = 60.0


class ChecksumError(ValueError):
    """A file whose digest differs from the expected one, or that cannot be read to compute it."""


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks.

    Arguments:
        path: the file.
        algorithm: a `hashlib` algorithm name (``"sha256"``, ``"md5"``, ...).
        chunk: bytes read at a time.

    Returns:
        The lower-case hexadecimal digest.

    Raises:
        ValueError: an algorithm not in ``ALGORITHMS``.
        ChecksumError: the file is missing, a directory or unreadable.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as error:  # missing, a directory, no permission
        raise ChecksumError(
            f"{path}: cannot read it to compute its {algorithm} ({error.strerror or error}); "
            "name a readable file"
        ) from error
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected: str) -> None:
    """Checks that a file has the expected digest.

    Arguments:
        path: the file.
        expected: ``"ALGORITHM:HEX"``, e.g. ``"sha256:..."`` or ``"md5:..."``.

    Raises:
        ValueError: ``expected`` is not of the form ``"ALGORITHM:HEX"``.
        ChecksumError: the file's digest differs, or the file cannot be read.
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
    ``destination`` + ``.part`` and is renamed over ``destination`` only once verified, so a
    cache never gains a bad file, and a file already there with another checksum stays as it
    is until a verified download replaces it.

    Arguments:
        urls: mirrors of the file, tried in order.
        destination: where the file goes.
        checksum: its expected digest, ``"ALGORITHM:HEX"`` (see `verify_checksum`).
        timeout: seconds each mirror has to send the whole file, from the request to the last
            byte (checked as the bytes arrive); a mirror that sends nothing for
            ``STALL_TIMEOUT`` seconds (or ``timeout`` if shorter) is given up sooner.

    Returns:
        ``destination``, as a `Path`.

    Raises:
        ValueError: ``destination`` is a directory.
        RuntimeError: no mirror gave a file with the right checksum (each failure listed).
    """
    destination = Path(destination)
    if destination.is_dir():
        raise ValueError(
            f"{destination} is a directory; name the file to download into (a path inside it)"
        )
    if destination.exists():
        try:
            verify_checksum(destination, checksum)
            return destination
        except ChecksumError:  # replaced below only by a verified download
            pass
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    failures = []
    for url in urls:
        try:
            print(f"downloading {url}", file=sys.stderr)
            deadline = time.monotonic() + timeout
            with (
                urllib.request.urlopen(url, timeout=min(timeout, STALL_TIMEOUT)) as response,
                open(partial, "wb") as f,
            ):
                # read1: what has arrived, so that a mirror sending a byte at a time is cut off
                while block := response.read1(1 << 20):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the file took longer than the timeout, {timeout:g} s")
                    f.write(block)
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
