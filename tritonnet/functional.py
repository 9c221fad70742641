"""Differentiable ops: each launches its forward kernels and records a backward closure on the tape.

An op reads as: validate/convert arguments, launch the forward kernel(s), and hand ``tape.record``
the output, the inputs, a closure that maps the output's gradient to the inputs' gradients, and
the tensors that closure keeps (so the tape can count saved-for-backward bytes).
Arguments may be ``tn.Tensor`` or plain ``torch.Tensor`` (constants); results are ``tn.Tensor``.
"""
from __future__ import annotations

from .tape import as_tensor, record  # noqa: F401
