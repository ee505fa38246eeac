"""Reading and writing the IDX format of the original MNIST files (raw or gzip-compressed)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type codes (third byte of the magic number) and the big-endian numpy dtypes they name.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file."""


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except IsADirectoryError as error:
        raise IDXError(f"{path} is a directory, not an IDX file; name the file itself") from error
    except OSError as error:  # missing, unreadable (no permission), an I/O error
        raise IDXError(
            f"{path}: cannot read it ({error.strerror or error}); check the path and that the "
            "file is readable"
        ) from error
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:  # truncated or corrupt gzip stream
        raise IDXError(
            f"{path}: cannot decompress ({error}); delete it and fetch it again"
        ) from error


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in IDX bytes: magic 0x0000 TT NN, NN big-endian uint32 sizes, data.

    Arguments:
        data: the bytes of an uncompressed IDX file.
        name: what the errors call the data (a file name).

    Returns:
        The array, in native byte order, of the shape and dtype the header gives.

    Raises:
        IDXError: the magic bytes, type code, header or data length are wrong.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{name}: not an IDX file (magic bytes {data[:4].hex() or 'missing'})")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise IDXError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXError(
            f"{name}: shape {shape} needs {expected} data bytes, found {len(data) - header} "
            "(truncated or corrupt file)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or not (detected from its first bytes).

    Arguments:
        path: the file.

    Returns:
        The array stored in the file (see `parse_idx`).

    Raises:
        IDXError: the file is missing, unreadable or a directory, its gzip stream is
            corrupt, or it is not a valid IDX file.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Writes ``array`` as an IDX file.

    Arguments:
        path: the file to write.
        array: the array; its dtype must be one IDX stores (uint8, int8, int16, int32,
            float32, float64).
        compress: gzip the file; ``None`` (default): when ``path`` ends in ``.gz``.

    Returns:
        ``path``, as a `Path`.

    Raises:
        ValueError: IDX cannot store the array's dtype.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, codes))}"
        )
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(IDX_DTYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
