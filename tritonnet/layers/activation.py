"""Parameter-free layers: ReLU and Flatten, as in torch.nn."""
from __future__ import annotations

from .. import functional as F
from .module import Module


class ReLU(Module):
    """max(x, 0) elementwise. ``inplace`` is accepted for torch compatibility; the result is new."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)


class Flatten(Module):
    """Merges dimensions start_dim..end_dim (torch.nn.Flatten's defaults: 1 and -1)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
