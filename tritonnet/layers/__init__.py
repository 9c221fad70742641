"""Layers: hold parameters and call ``tritonnet.functional``."""
from .module import Module, Sequential, parameter
from .convert import from_torch  # noqa: E402  (TRAIN: torch nn.Sequential -> tritonnet model)

__all__ = ["Module", "Sequential", "parameter", "from_torch"]

from .pool import MaxPool2d  # noqa: E402  (POOL)
__all__ += ["MaxPool2d"]

from .linear import Linear  # noqa: E402  (TRAINKERNELS)
from .activation import ReLU, Flatten  # noqa: E402  (TRAINKERNELS)
__all__ += ["Linear", "ReLU", "Flatten"]

from .conv import Conv2d  # noqa: E402  (CONV)
__all__ += ["Conv2d"]
