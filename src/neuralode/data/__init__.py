"""Data: MNIST (IDX files, local or downloaded with checksums), mnist5k, digits; generated
spirals and periodic signals; PhysioNet 2012 from a directory."""

from .checksum import ChecksumError, download, file_digest, verify_checksum
from .datasets import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    download_mnist,
    load_dataset,
    load_digits,
    load_mnist,
    load_mnist5k,
    random_crop,
)
from .idx import IDXError, parse_idx, read_idx, write_idx
from .periodic import PeriodicData, make_periodic
from .physionet import (
    PHYSIONET_STATIC,
    PHYSIONET_VARIABLES,
    PhysioNetData,
    PhysioNetRecord,
    load_physionet,
)
from .spirals import SpiralData, make_spirals

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetNotFoundError",
    "IDXError",
    "ImageDataset",
    "download",
    "download_mnist",
    "file_digest",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_mnist5k",
    "parse_idx",
    "random_crop",
    "read_idx",
    "verify_checksum",
    "write_idx",
    "PHYSIONET_STATIC",
    "PHYSIONET_VARIABLES",
    "PeriodicData",
    "PhysioNetData",
    "PhysioNetRecord",
    "SpiralData",
    "load_physionet",
    "make_periodic",
    "make_spirals",
]
