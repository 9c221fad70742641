"""Data sets and batching: the built-in digits split, IDX and CIFAR-10 readers on small files the
tests write, bad-file errors that name the file, and the seeded batch order."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from tritonnet import data


def write_idx(path, array, code=0x08, gz=False):
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    payload = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return path


def write_mnist(directory, n_train=7, n_test=3, h=5, w=6, gz=False, rng=None):
    rng = rng or np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(os.path.join(directory, name + (".gz" if gz else "")), array, gz=gz)
    return arrays


def write_cifar(path, labels, rng):
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    with open(path, "wb") as f:
        f.write(records.tobytes())
    return images


def expected_normalised(train, test, scale):
    train, test = train.astype(np.float32) / scale, test.astype(np.float32) / scale
    mean, std = train.mean(), train.std()
    return (train - mean) / std, (test - mean) / std


# ----------------------------------------------------------------------------- digits


def test_digits_fixed_split_shapes_and_normalisation(seed):
    ds = data.load_digits()
    assert ds.train_images.shape == (1438, 1, 8, 8) and ds.test_images.shape == (359, 1, 8, 8)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert ds.train_images.is_contiguous()
    assert abs(float(ds.train_images.mean())) < 1e-4 and abs(float(ds.train_images.std()) - 1) < 1e-3
    assert set(ds.train_labels.tolist()) == set(range(10)) == set(ds.test_labels.tolist())
    # The split does not follow the global RNG (the fixture just reseeded it): same every time.
    torch.manual_seed(seed + 1)
    np.random.seed((seed + 1) % 2**32)
    again = data.load_digits()
    assert torch.equal(ds.test_images, again.test_images) and torch.equal(ds.train_labels, again.train_labels)
    # Train and test hold different images: all 1,797 are used exactly once.
    from sklearn.datasets import load_digits

    raw = load_digits().images.reshape(-1, 64)
    restored = torch.cat([ds.train_images, ds.test_images]).reshape(-1, 64) * ds.std + ds.mean
    assert np.allclose(np.sort(raw / 16.0, axis=0), np.sort(restored.numpy(), axis=0), atol=1e-5)


def test_load_by_name_and_bad_names(tmp_path):
    assert data.load("digits").name == "digits"
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load("imagenet:/x")
    with pytest.raises(ValueError, match="needs a directory"):
        data.load("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"cifar10:{tmp_path / 'nowhere'}")


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reader(tmp_path, seed, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz, rng=np.random.default_rng(seed))
    ds = data.load_mnist(str(tmp_path / "mnist"))
    train, test = expected_normalised(arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"], 255.0)
    assert ds.train_images.shape == (7, 1, 5, 6) and ds.test_images.shape == (3, 1, 5, 6)
    assert torch.allclose(ds.train_images[:, 0], torch.from_numpy(train), atol=1e-5)
    assert torch.allclose(ds.test_images[:, 0], torch.from_numpy(test), atol=1e-5)
    assert ds.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_labels.dtype == torch.int64
    fashion = data.load(f"fashion-mnist:{tmp_path / 'mnist'}")
    assert fashion.name == "fashion-mnist" and torch.equal(fashion.train_images, ds.train_images)


def test_read_idx_other_dtypes(tmp_path, seed):
    values = np.random.default_rng(seed).integers(-1000, 1000, (3, 4)).astype(np.int32)
    path = write_idx(tmp_path / "ints.idx", values, code=0x0C)
    assert np.array_equal(data.read_idx(str(path)), values)


def test_idx_bad_files_name_the_file(tmp_path):
    directory = tmp_path / "mnist"
    arrays = write_mnist(directory)
    images = directory / "train-images-idx3-ubyte"

    images.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is malformed: 2 bytes, too short"):
        data.load_mnist(str(directory))

    images.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is malformed: bad magic number 0x12340803"):
        data.load_mnist(str(directory))

    write_idx(images, arrays["train-images-idx3-ubyte"])
    images.write_bytes(images.read_bytes()[:-5])  # truncated pixel data
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is malformed: shape \(7, 5, 6\) needs 210 bytes"):
        data.load_mnist(str(directory))

    write_idx(images, arrays["train-images-idx3-ubyte"][:, 0])  # 2-D images
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is malformed: images must be 3-D"):
        data.load_mnist(str(directory))

    write_idx(images, arrays["train-images-idx3-ubyte"][:6])
    with pytest.raises(ValueError, match="holds 6 images but .*train-labels-idx1-ubyte holds 7 labels"):
        data.load_mnist(str(directory))

    write_idx(images, arrays["train-images-idx3-ubyte"])
    write_idx(directory / "t10k-labels-idx1-ubyte", np.array([1, 12, 3], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is malformed: labels must be in 0..9"):
        data.load_mnist(str(directory))

    os.remove(directory / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[.gz\]"):
        data.load_mnist(str(directory))

    bad_gz = directory / "t10k-labels-idx1-ubyte.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz could not be read"):
        data.load_mnist(str(directory))

    with pytest.raises(FileNotFoundError, match="IDX file .*missing.idx does not exist"):
        data.read_idx(str(tmp_path / "missing.idx"))


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reader(tmp_path, seed):
    rng = np.random.default_rng(seed)
    directory = tmp_path / "cifar" / "cifar-10-batches-bin"  # as the archive unpacks
    directory.mkdir(parents=True)
    first = write_cifar(directory / "data_batch_1.bin", [3, 0, 9], rng)
    second = write_cifar(directory / "data_batch_2.bin", [5, 1], rng)
    test = write_cifar(directory / "test_batch.bin", [7, 2], rng)
    (directory / "batches.meta.txt").write_text("airplane\n")  # other files in the folder are ignored
    ds = data.load(f"cifar10:{tmp_path / 'cifar'}")
    assert ds.train_images.shape == (5, 3, 32, 32) and ds.test_images.shape == (2, 3, 32, 32)
    assert ds.train_labels.tolist() == [3, 0, 9, 5, 1] and ds.test_labels.tolist() == [7, 2]
    train, test_expected = expected_normalised(np.concatenate([first, second]), test, 255.0)
    assert torch.allclose(ds.train_images, torch.from_numpy(train), atol=1e-5)  # R, G, B planes in order
    assert torch.allclose(ds.test_images, torch.from_numpy(test_expected), atol=1e-5)


def test_cifar10_bad_files_name_the_file(tmp_path, seed):
    rng = np.random.default_rng(seed)
    with pytest.raises(FileNotFoundError, match="no data_batch_"):
        data.load_cifar10(str(tmp_path))
    write_cifar(tmp_path / "data_batch_1.bin", [1, 2], rng)
    with pytest.raises(FileNotFoundError, match="test_batch.bin does not exist"):
        data.load_cifar10(str(tmp_path))
    (tmp_path / "test_batch.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(ValueError, match=r"test_batch.bin is malformed: 3000 bytes is not a whole number of 3073"):
        data.load_cifar10(str(tmp_path))
    write_cifar(tmp_path / "test_batch.bin", [4, 200], rng)
    with pytest.raises(ValueError, match="test_batch.bin is malformed: record 1 has label 200"):
        data.load_cifar10(str(tmp_path))


# ----------------------------------------------------------------------------- batching


def test_batches_are_seeded_complete_and_shuffled(seed):
    n = 23
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1) + 0.5
    labels = torch.arange(n)
    first = list(data.batches(images, labels, 5, seed=seed, epoch=0))
    again = list(data.batches(images, labels, 5, seed=seed, epoch=0))
    other_epoch = list(data.batches(images, labels, 5, seed=seed, epoch=1))
    assert [len(y) for _, y in first] == [5, 5, 5, 5, 3] == [len(y) for _, y in again]
    order = torch.cat([y for _, y in first])
    assert sorted(order.tolist()) == list(range(n))  # every example exactly once
    assert all(torch.equal(x.reshape(-1) - 0.5, y.float()) for x, y in first)  # images stay with labels
    assert torch.equal(order, torch.cat([y for _, y in again]))
    assert not torch.equal(order, torch.cat([y for _, y in other_epoch]))
    assert not torch.equal(order, labels)
    assert [len(y) for _, y in data.batches(images, labels, 5, seed=seed, drop_last=True)] == [5] * 4
    assert torch.equal(torch.cat([y for _, y in data.batches(images, labels, 7, shuffle=False)]), labels)
    assert data.num_batches(n, 5) == 5 and data.num_batches(n, 5, drop_last=True) == 4
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(data.batches(images, labels, 0))
    with pytest.raises(ValueError, match="differ in length"):
        next(data.batches(images, labels[:-1], 4))
