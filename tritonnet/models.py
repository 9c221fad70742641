"""The default networks, one per data set, each written once as a layer spec (torch.nn's layout,
ReLUs as their own entries) and built either as a tritonnet model (ReLUs fused into the conv or
linear before them, torch's parameter names kept) or as the equivalent torch model for comparisons.

- ``digits_cnn``: conv-relu-pool twice, then two linear layers, sized for 8x8 digits.
- ``lenet5``: LeNet-5 for 28x28 MNIST / Fashion-MNIST (ReLU and max pooling instead of the
  original's tanh and subsampling).
- ``cifar_cnn``: three conv-relu-pool stages and two linear layers for 32x32x3 CIFAR-10.
"""
from __future__ import annotations

from .layers.convert import build, build_torch, numbered


def digits_cnn_spec(num_classes: int = 10) -> list:
    return numbered(
        ("Conv2d", dict(in_channels=1, out_channels=16, kernel_size=3, padding=1)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 8x8 -> 4x4
        ("Conv2d", dict(in_channels=16, out_channels=32, kernel_size=3, padding=1)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 4x4 -> 2x2
        ("Flatten",),
        ("Linear", dict(in_features=32 * 2 * 2, out_features=64)), ("ReLU",),
        ("Linear", dict(in_features=64, out_features=num_classes)),
    )


def lenet5_spec(in_channels: int = 1, num_classes: int = 10) -> list:
    return numbered(
        ("Conv2d", dict(in_channels=in_channels, out_channels=6, kernel_size=5, padding=2)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 28 -> 14
        ("Conv2d", dict(in_channels=6, out_channels=16, kernel_size=5)), ("ReLU",),  # 14 -> 10
        ("MaxPool2d", dict(kernel_size=2)),                                        # 10 -> 5
        ("Flatten",),
        ("Linear", dict(in_features=16 * 5 * 5, out_features=120)), ("ReLU",),
        ("Linear", dict(in_features=120, out_features=84)), ("ReLU",),
        ("Linear", dict(in_features=84, out_features=num_classes)),
    )


def cifar_cnn_spec(num_classes: int = 10) -> list:
    return numbered(
        ("Conv2d", dict(in_channels=3, out_channels=32, kernel_size=3, padding=1)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 32 -> 16
        ("Conv2d", dict(in_channels=32, out_channels=64, kernel_size=3, padding=1)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 16 -> 8
        ("Conv2d", dict(in_channels=64, out_channels=128, kernel_size=3, padding=1)), ("ReLU",),
        ("MaxPool2d", dict(kernel_size=2)),                                        # 8 -> 4
        ("Flatten",),
        ("Linear", dict(in_features=128 * 4 * 4, out_features=256)), ("ReLU",),
        ("Linear", dict(in_features=256, out_features=num_classes)),
    )


SPECS = {"digits_cnn": digits_cnn_spec, "lenet5": lenet5_spec, "cifar_cnn": cifar_cnn_spec}
INPUT_SHAPES = {"digits_cnn": (1, 8, 8), "lenet5": (1, 28, 28), "cifar_cnn": (3, 32, 32)}  # C, H, W
# The network each data set trains by default, keyed by the part of --dataset before ':'.
DEFAULT_FOR_DATASET = {"digits": "digits_cnn", "mnist": "lenet5", "fashion-mnist": "lenet5",
                       "cifar10": "cifar_cnn"}


def spec(name: str) -> list:
    if name not in SPECS:
        raise ValueError(f"model must be one of {', '.join(SPECS)}, got {name!r}")
    return SPECS[name]()


def create(name: str):
    """A freshly initialised tritonnet model (torch's default initialisation, from torch's RNG)."""
    return build(spec(name))


def create_torch(name: str):
    """The torch model with the same architecture and parameter names as ``create(name)``."""
    return build_torch(spec(name))


def digits_cnn():
    return create("digits_cnn")


def lenet5():
    return create("lenet5")


def cifar_cnn():
    return create("cifar_cnn")


def channels_last_for(input_channels: int) -> bool:
    """Whether tritonnet trains (and benchmarks) a network on images of ``input_channels``
    channels-last: when there are several. Its convolutions' channels-last kernels then read their
    inputs and write their outputs without staging copies and the pools keep the layout (one copy
    of the batch a step instead of two staging copies per wide layer); a one-channel image is the
    same memory either way. The one switch for ``tritonnet train`` and ``tritonnet bench``."""
    return input_channels > 1


def for_dataset(dataset: str) -> str:
    """The default model name for a ``--dataset`` value such as ``"mnist:/data/mnist"``."""
    kind = dataset.partition(":")[0]
    if kind not in DEFAULT_FOR_DATASET:
        raise ValueError(f"no default model for dataset {dataset!r}")
    return DEFAULT_FOR_DATASET[kind]
