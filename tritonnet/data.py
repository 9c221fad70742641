"""Data sets and batching: the built-in digits set, MNIST-format IDX files, CIFAR-10 binary batches.

Every loader returns a :class:`Dataset`: float32 images shaped ``N x C x H x W``, already
normalised with statistics of the *training* split (so the test split never leaks into them), and
int64 labels. Images stay on the CPU; the training loop moves each batch to tritonnet's device.

- ``load_digits()``: scikit-learn's bundled 8x8 handwritten digits (1,797 images shipped inside
  scikit-learn's package, nothing is downloaded), split into train and test with a fixed seed so
  every run and every machine sees the same split.
- ``load_mnist(dir)`` / ``load_fashion_mnist(dir)``: the four IDX files (raw or ``.gz``) of MNIST
  or Fashion-MNIST, which share the format and file names.
- ``load_cifar10(dir)``: CIFAR-10's binary batches ``data_batch_*.bin`` and ``test_batch.bin``.
- ``batches(...)``: a seeded shuffling iterator; the same (seed, epoch) always gives the same order.

A missing or malformed file raises ``FileNotFoundError`` or ``ValueError`` naming the file and what
was wrong with it.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass
class Dataset:
    """A train/test pair of normalised images (float32, N x C x H x W) and int64 labels."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: float
    std: float

    @property
    def image_shape(self) -> tuple:
        return tuple(self.train_images.shape[1:])

    def __repr__(self):
        return (f"Dataset({self.name!r}: train {tuple(self.train_images.shape)}, test "
                f"{tuple(self.test_images.shape)}, {self.num_classes} classes)")


def _normalised(name, train_x, train_y, test_x, test_y, num_classes, scale) -> Dataset:
    """Scale raw pixel values to [0, 1], then standardise with the train split's mean and std."""
    train_x = train_x.astype(np.float32) / scale
    test_x = test_x.astype(np.float32) / scale
    mean, std = float(train_x.mean()), float(train_x.std())
    std = std if std > 0 else 1.0  # a constant image set (tiny test files) must not divide by zero
    return Dataset(
        name=name,
        train_images=torch.from_numpy(np.ascontiguousarray((train_x - mean) / std, dtype=np.float32)),
        train_labels=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray((test_x - mean) / std, dtype=np.float32)),
        test_labels=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        num_classes=num_classes, mean=mean, std=std,
    )


# ----------------------------------------------------------------------------- digits


def load_digits(test_fraction: float = DIGITS_TEST_FRACTION, split_seed: int = DIGITS_SPLIT_SEED) -> Dataset:
    """scikit-learn's 8x8 digits (pixel values 0..16), N x 1 x 8 x 8, split with a fixed seed.

    The split is a permutation drawn from its own fixed seed (not the training seed), so changing
    ``--seed`` changes initialisation and batch order but never which images are held out.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    labels = bunch.target
    order = np.random.default_rng(split_seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return _normalised("digits", images[train], labels[train], images[test], labels[test], 10, 16.0)


# ----------------------------------------------------------------------------- MNIST IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (raw, or gzip when its name ends in ``.gz``) into a numpy array.

    Format: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per
    dimension, then the values in row-major order.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path} does not exist")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a truncated or non-gzip .gz file
        raise ValueError(f"IDX file {path} could not be read: {exc}") from None
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is malformed: {len(raw)} bytes, too short for the 4-byte header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"IDX file {path} is malformed: bad magic number 0x{raw[:4].hex()} "
                         "(expected 0x0000, a type code such as 0x08 for uint8, and a dimension count)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is malformed: header declares {ndim} dimensions but the file "
                         f"ends after {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"IDX file {path} is malformed: shape {shape} needs {expected} bytes of data, "
                         f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(directory: str, stem: str, what: str) -> str:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{what}: no file {os.path.join(directory, stem)}[.gz] "
                            f"(expected the four MNIST-format IDX files in {directory})")


def load_mnist(directory: str, name: str = "mnist") -> Dataset:
    """MNIST-format IDX files from ``directory`` as N x 1 x 28 x 28 (any H x W the files declare)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{name} directory {directory} does not exist")
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        path = _find(directory, stem, name)
        array = read_idx(path)
        if key.endswith("images") and array.ndim != 3:
            raise ValueError(f"IDX file {path} is malformed: images must be 3-D (N, H, W), got shape {array.shape}")
        if key.endswith("labels") and array.ndim != 1:
            raise ValueError(f"IDX file {path} is malformed: labels must be 1-D (N,), got shape {array.shape}")
        arrays[key] = (path, array)
    for split in ("train", "test"):
        (ipath, images), (lpath, labels) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(f"{ipath} holds {len(images)} images but {lpath} holds {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"IDX file {lpath} is malformed: labels must be in 0..9, found "
                             f"{int(labels.min())}..{int(labels.max())}")
    (_, tr_x), (_, tr_y) = arrays["train_images"], arrays["train_labels"]
    (_, te_x), (_, te_y) = arrays["test_images"], arrays["test_labels"]
    return _normalised(name, tr_x[:, None], tr_y, te_x[:, None], te_y, 10, 255.0)


def load_fashion_mnist(directory: str) -> Dataset:
    """Fashion-MNIST: the same IDX format and file names as MNIST."""
    return load_mnist(directory, name="fashion-mnist")


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes


def read_cifar10_batch(path: str):
    """One CIFAR-10 binary batch file -> (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise ValueError(f"CIFAR-10 batch file {path} is malformed: {len(raw)} bytes is not a whole number "
                         f"of {CIFAR_RECORD}-byte records (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"CIFAR-10 batch file {path} is malformed: record {bad} has label {labels[bad]}, "
                         "labels must be in 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(directory: str) -> Dataset:
    """CIFAR-10 binary version: ``data_batch_1.bin``... and ``test_batch.bin`` in ``directory``
    (or in its ``cifar-10-batches-bin`` subdirectory, as the archive unpacks)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cifar10 directory {directory} does not exist")
    nested = os.path.join(directory, "cifar-10-batches-bin")
    if os.path.isdir(nested):
        directory = nested
    train_files = sorted(f for f in os.listdir(directory) if f.startswith("data_batch_") and f.endswith(".bin"))
    if not train_files:
        raise FileNotFoundError(f"cifar10: no data_batch_*.bin files in {directory}")
    parts = [read_cifar10_batch(os.path.join(directory, f)) for f in train_files]
    test_x, test_y = read_cifar10_batch(os.path.join(directory, "test_batch.bin"))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return _normalised("cifar10", train_x, train_y, test_x, test_y, 10, 255.0)


# ----------------------------------------------------------------------------- by name

DATASETS = ("digits", "mnist:DIR", "fashion-mnist:DIR", "cifar10:DIR")


def parse_spec(spec: str):
    """``"mnist:DIR"`` -> ``("mnist", "DIR")``; a ValueError for anything but the four forms."""
    kind, _, directory = spec.partition(":")
    if kind == "digits" and not directory:
        return kind, None
    if kind not in ("mnist", "fashion-mnist", "cifar10"):
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {spec!r}")
    if not directory:
        raise ValueError(f"dataset {kind!r} needs a directory: {kind}:DIR")
    return kind, os.path.expanduser(directory)


def load(spec: str) -> Dataset:
    """``"digits"``, ``"mnist:DIR"``, ``"fashion-mnist:DIR"`` or ``"cifar10:DIR"``."""
    kind, directory = parse_spec(spec)
    if kind == "digits":
        return load_digits()
    loaders = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
    return loaders[kind](directory)


# ----------------------------------------------------------------------------- batching


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The example order of one epoch: a permutation drawn from (seed, epoch) alone."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = True,
            seed: int = 0, epoch: int = 0, drop_last: bool = False, device=None):
    """Yield ``(images, labels)`` batches of one epoch, in an order fixed by ``(seed, epoch)``.

    ``device`` moves each batch there (contiguous), so only one batch at a time leaves the CPU
    copy when the whole set does not live on the device already.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    # The epoch's order goes to the images' device once: a copy from pageable host memory makes
    # torch wait for the device, which once per batch would stop the host from running ahead.
    order = torch.from_numpy(epoch_order(len(images), seed, epoch, shuffle)).to(images.device)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        x, y = images.index_select(0, index), labels.index_select(0, index)
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
