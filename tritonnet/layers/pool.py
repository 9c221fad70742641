"""MaxPool2d: torch.nn.MaxPool2d's arguments, forwarding to ``functional.max_pool2d``."""
from __future__ import annotations

from .. import functional as F
from ..kernels.pool import check_window
from .module import Module


class MaxPool2d(Module):
    """Max pool over (N, C, H, W) or (C, H, W); no parameters.

    ``return_indices`` and ``deterministic`` (backward: gather when True, atomic scatter when
    False) are keyword-only so the positional order stays DESIGN.md's.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                 return_indices=False, deterministic=True):
        super().__init__()
        check_window(kernel_size, stride, padding, dilation, ceil_mode)  # bad arguments fail here, not later
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.ceil_mode, self.return_indices, self.deterministic = ceil_mode, return_indices, deterministic

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices, deterministic=self.deterministic)

    @property
    def fuses_into_conv(self) -> bool:
        """Whether this is the plain 2x2, stride-2 pool that a Conv2d before it can run in its own
        kernel (see Conv2d.forward_max_pool2d)."""
        pair = check_window(self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return (pair == ((2, 2), (2, 2), (0, 0), (1, 1)) and not self.ceil_mode and not self.return_indices
                and self.deterministic)

    def extra_repr(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
