"""Differentiable ops: each launches its forward kernels and records a backward closure on the tape.

An op reads as: validate/convert arguments, launch the forward kernel(s), and hand ``tape.record``
the output, the inputs, a closure that maps the output's gradient to the inputs' gradients, and
the tensors that closure keeps (so the tape can count saved-for-backward bytes).
Arguments may be ``tn.Tensor`` or plain ``torch.Tensor`` (constants); results are ``tn.Tensor``.
"""
from __future__ import annotations

from .tape import as_tensor, record  # noqa: F401


# ----------------------------------------------------------------------------- max pool (POOL)

from .kernels import pool as _pool_kernels  # noqa: E402
from .tape import Tensor as _Tensor  # noqa: E402


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, deterministic=True):
    """torch.nn.functional.max_pool2d on an (N, C, H, W) or (C, H, W) tensor.

    The tape keeps only the compact argmax (one byte per output for windows of up to 256
    positions), never the input. ``return_indices=True`` also returns torch's int64 indices
    (``h * W + w`` within each plane), converted from the compact argmax by a kernel.
    ``deterministic`` picks the backward: the gather kernel (default, bitwise reproducible) or
    the atomic scatter (``False``, kept for comparison).
    """
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    x = as_tensor(input, "input")
    out, argmax, geo = _pool_kernels.max_pool2d_forward(x.data, kernel_size, stride, padding, dilation,
                                                        ceil_mode)

    def backward(grad_out):
        return (_pool_kernels.max_pool2d_backward(grad_out, argmax, geo, deterministic=deterministic),)

    result = record("max_pool2d", out, (x,), backward, saved=(argmax,))
    if return_indices:
        return result, _Tensor(_pool_kernels.max_pool2d_indices(argmax, geo))
    return result
