"""Layers: hold parameters and call ``tritonnet.functional``."""
from .activation import Flatten, ReLU
from .conv import Conv2d
from .convert import from_torch
from .linear import Linear
from .module import Module, Sequential, parameter
from .pool import MaxPool2d

__all__ = ["Module", "Sequential", "parameter", "Conv2d", "MaxPool2d", "Linear", "ReLU", "Flatten",
           "from_torch"]
