"""Layers: hold parameters and call ``tritonnet.functional``."""
from .module import Module, Sequential, parameter

__all__ = ["Module", "Sequential", "parameter"]
