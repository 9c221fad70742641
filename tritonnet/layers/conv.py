"""Conv2d: torch.nn.Conv2d's parameters, names and default initialisation, on F.conv2d."""
from __future__ import annotations

import torch

from .. import functional as F
from .. import runtime
from .module import Module, torch_default_parameters


class Conv2d(Module):
    """2-D convolution over (N, in_channels, H, W), optionally followed by a fused ReLU
    (``activation="relu"``: conv + bias + ReLU is one kernel).

    weight: (out_channels, in_channels // groups, KH, KW), bias: (out_channels,), initialised as
    torch.nn.Conv2d does (kaiming-uniform with a = sqrt(5), i.e. uniform in +-1/sqrt(fan_in), and the
    bias uniform in +-1/sqrt(fan_in), fan_in = in_channels // groups * KH * KW), drawing from torch's
    generator in the same order, so a seeded tritonnet layer equals a seeded torch one.
    ``padding`` is an int, a pair, ``"same"`` or ``"valid"``, as in torch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, activation=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}")
        if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups!r} must be a positive int dividing in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        kh, kw = runtime.pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.dilation = runtime.pair(stride, "stride"), runtime.pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else runtime.pair(padding, "padding")
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in torch), got stride={stride!r}")
        self.groups, self.activation = groups, activation
        self.weight, self.bias = torch_default_parameters(
            (out_channels, in_channels // groups, kh, kw), in_channels // groups * kh * kw, bias, dtype)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self.activation)

    def forward_max_pool2d(self, x):
        """This layer followed by a 2x2, stride-2 MaxPool2d, in one kernel (F.conv2d_max_pool2d):
        what Sequential runs for such a pair."""
        return F.conv2d_max_pool2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                                   self.activation)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation:
            s += f", activation={self.activation!r}"
        return s
