"""Linear: torch.nn.Linear's parameters, names and default initialisation, on F.linear."""
from __future__ import annotations

import torch

from .. import functional as F
from .module import Module, torch_default_parameters


class Linear(Module):
    """y = x @ weight.T + bias, optionally followed by a fused ReLU (``activation="relu"``).

    weight: (out_features, in_features), bias: (out_features,), initialised as torch.nn.Linear
    does (kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(in_features)), drawing from
    torch's generator in the same order, so a seeded tritonnet model equals a seeded torch one.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight, self.bias = torch_default_parameters((out_features, in_features), in_features, bias, dtype)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias, self.activation)

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{act}")
