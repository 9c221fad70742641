"""Differentiable ops: each launches its forward kernels and records a backward closure on the tape.

An op reads as: validate/convert arguments, launch the forward kernel(s), and hand ``tape.record``
the output, the inputs, a closure that maps the output's gradient to the inputs' gradients, and
the tensors that closure keeps (so the tape can count saved-for-backward bytes).
Arguments may be ``tn.Tensor`` or plain ``torch.Tensor`` (constants); results are ``tn.Tensor``.
"""
from __future__ import annotations

import functools
import math
import weakref

from .kernels import conv as _conv_kernels
from .kernels import elementwise as _ew
from .kernels import layout as _layout
from .kernels import linear as _linear_kernels
from .kernels import loss as _loss_kernels
from .kernels import pool as _pool_kernels
from .kernels import reduce as _reduce
from .tape import UNIT_SEED, Tensor, as_tensor, is_grad_enabled, record


# ----------------------------------------------------------------------------- ReLU gates across ops
#
# conv2d(activation="relu") gates its gradient with a bit mask of where its output passes one. When
# that output goes straight into max_pool2d, the pool can apply the gate itself at no cost (its
# forward records no winner where a window's max is <= 0: kernels/pool.py), and the gradient it
# hands back is then marked with the mask it stands for. conv2d's backward skips its own gate for
# a gradient so marked: the pool was its only consumer, since the tape sums several consumers'
# gradients into a new, unmarked tensor (which it gates as usual; gating twice changes nothing).
# Channels-last convolutions stage a gated copy of their gradient for the gate alone; this skips it.

_RELU_GATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # conv output Tensor -> its mask
_GATED_BY = "_tritonnet_relu_gated_by"  # attribute of a gradient (torch.Tensor) that is already gated


def _relu_gated_by(grad):
    """The ReLU mask ``grad`` has been gated with (see above), or None."""
    return getattr(grad, _GATED_BY, None)


# ----------------------------------------------------------------------------- max pool


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, deterministic=True):
    """torch.nn.functional.max_pool2d on an (N, C, H, W) or (C, H, W) tensor.

    The tape keeps only the compact argmax (one byte per output for windows of up to 256
    positions), never the input. ``return_indices=True`` also returns torch's int64 indices
    (``h * W + w`` within each plane), converted from the compact argmax by a kernel.
    ``deterministic`` picks the backward: the gather kernel (default, bitwise reproducible) or
    the atomic scatter (``False``, kept for comparison). A channels-last input gives a
    channels-last output, indices and input gradient, as in torch (and always the gather).
    """
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    x = as_tensor(input, "input")
    # a fused ReLU's output: the gather applies its gate (see "ReLU gates across ops" above)
    gate = _RELU_GATES.get(x) if deterministic and not return_indices else None
    out, argmax, geo = _pool_kernels.max_pool2d_forward(x.data, kernel_size, stride, padding, dilation,
                                                        ceil_mode, relu_gate=gate is not None)

    def backward(grad_out):
        grad = _pool_kernels.max_pool2d_backward(grad_out, argmax, geo, deterministic=deterministic)
        if gate is not None:
            setattr(grad, _GATED_BY, gate)
        return (grad,)

    result = record("max_pool2d", out, (x,), backward, saved=(argmax,))
    if return_indices:
        return result, Tensor(_pool_kernels.max_pool2d_indices(argmax, geo))
    return result


# ----------------------------------------------------------------------------- linear, relu, loss, arithmetic


def linear(x, weight, bias=None, activation=None):
    """torch.nn.functional.linear (``x @ weight.T + bias``) on (*, in_features) input, with an
    optional fused ``activation`` (None or "relu") applied in the same kernel.

    Saves only what the wanted gradients need: the input (for the weight's), the weight (for the
    input's) and, with ReLU, the output (its sign gates the gradient inside the backward kernels).
    """
    x, w = as_tensor(x, "x"), as_tensor(weight, "weight")
    b = as_tensor(bias, "bias") if bias is not None else None
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension (in_features)")
    lead = tuple(x.shape[:-1])
    rows = math.prod(lead)  # not -1: with in_features = 0 the row count would be ambiguous
    x2 = x.data.reshape(rows, x.shape[-1])
    y = _linear_kernels.linear_forward(x2, w.data, None if b is None else b.data, activation)
    need_x, need_w = x.requires_grad, w.requires_grad
    need_b = b is not None and b.requires_grad
    y_saved = y if activation == "relu" else None

    def backward(grad):
        gx, gw, gb = _linear_kernels.linear_backward(
            grad.reshape(rows, grad.shape[-1]), x2, w.data, y_saved, need_input=need_x, need_weight=need_w,
            need_bias=need_b)
        return (None if gx is None else gx.reshape(x.shape)), gw, gb

    saved = (x2 if (need_w or need_b) else None, w.data if need_x else None, y_saved)
    return record("linear", y.reshape(lead + (w.shape[0],)), (x, w, b), backward, saved=saved)


def relu(x):
    """max(x, 0) elementwise; backward gates the gradient by the saved output's sign."""
    x = as_tensor(x, "x")
    y = _ew.relu(x.data)
    return record("relu", y, (x,), lambda grad: (_ew.relu_backward(grad, y),), saved=(y,))


def flatten(x, start_dim=1, end_dim=-1):
    """torch.flatten: dimensions start_dim..end_dim merged into one (a view when x is contiguous)."""
    x = as_tensor(x, "x")
    nd = max(x.ndim, 1)
    s, e = start_dim + nd if start_dim < 0 else start_dim, end_dim + nd if end_dim < 0 else end_dim
    if not (0 <= s < nd and 0 <= e < nd and s <= e):
        raise ValueError(f"start_dim={start_dim} and end_dim={end_dim} are not valid for a {x.ndim}-D tensor")
    shape = tuple(x.shape)
    numel = 1
    for d in shape[s:e + 1]:
        numel *= d
    return reshape(x, shape[:s] + (numel,) + shape[e + 1:])


def reshape(x, *shape):
    """x with a new shape holding the same elements (a view when x is contiguous)."""
    x = as_tensor(x, "x")
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    original = x.shape
    data = x.data
    if not data.is_contiguous() and _layout.prefers_channels_last(data.shape, data.stride()):
        # a channels-last activation (before a linear layer): reordered by our kernel, not torch's copy
        data = _layout.to_contiguous(data)
    return record("reshape", data.reshape(shape), (x,), lambda grad: (grad.reshape(original),))


def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0, ignore_index=-100, weight=None):
    """torch.nn.functional.cross_entropy for logits (B, C) and target class indices (B,) or class
    probabilities (B, C), or one unbatched example: logits (C,) and a 0-d index or (C,)
    probabilities. reduction: "mean", "sum" or "none" (the (B,) per-example losses). Rows labelled
    ``ignore_index`` (torch's default -100) add nothing and do not count in the mean; ``weight``
    (C,), a constant, weighs each class as torch's does (a keyword here: the third positional
    argument is ``reduction``).

    One kernel computes the loss and, when logits need a gradient, d(loss)/d(logits) in the same
    pass; backward only multiplies that saved gradient by the upstream gradient (a scalar, or one
    value per row for "none"). Labels outside [0, C) raise ValueError: here under the interpreter;
    on a GPU without waiting for the device, at the next cross_entropy call, ``backward()`` or read
    of a value (``loss.item()``), as soon as their count has reached the host (torch's CUDA kernels
    assert asynchronously too).
    """
    z = as_tensor(logits, "logits")
    t = target.data if isinstance(target, Tensor) else target
    data = z.data
    if z.ndim not in (1, 2):
        raise ValueError(f"logits must be 2-D (B, C) or 1-D (C,) for one unbatched example, got {z.ndim}-D with "
                         f"shape {tuple(z.shape)}")
    if z.ndim == 1:
        probabilities = getattr(t, "is_floating_point", lambda: False)()
        if getattr(t, "ndim", 0) != (1 if probabilities else 0):  # (not a tensor: the kernel's check says so)
            raise ValueError(f"target must be a 0-d class index or (C,) class probabilities for 1-D (unbatched) "
                             f"logits, got shape {tuple(t.shape)}")
        data = data.reshape(1, -1)
        t = t.reshape(1, -1) if probabilities else (t.reshape(1) if hasattr(t, "reshape") else t)
    want_grad = z.requires_grad and is_grad_enabled()
    loss, grad_logits = _loss_kernels.cross_entropy(data, t, reduction, label_smoothing, need_grad=want_grad,
                                                    ignore_index=ignore_index,
                                                    weight=weight.data if isinstance(weight, Tensor) else weight)
    if z.ndim == 1:
        loss = loss.reshape(())

    def backward(grad):
        if reduction == "none":
            return (_ew.scale_rows(grad_logits, grad.reshape(-1)).reshape(z.shape),)
        if getattr(grad, UNIT_SEED, False):  # loss.backward(): the upstream gradient is 1, nothing to scale
            return (grad_logits.reshape(z.shape),)
        return (_ew.scale_by_scalar(grad_logits, grad).reshape(z.shape),)

    return record("cross_entropy", loss, (z,), backward, saved=(grad_logits,))


def _scalar(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python int or float, got {type(value).__name__}")
    return float(value)


def add(a, b):
    """a + b for two tensors of one shape and dtype, or a tensor and a Python number."""
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        a = as_tensor(a, "a")
        return record("add_scalar", _ew.axpby(a.data, gamma=_scalar(b, "b")), (a,), lambda grad: (grad,))
    a, b = as_tensor(a, "a"), as_tensor(b, "b")
    return record("add", _ew.add(a.data, b.data), (a, b), lambda grad: (grad, grad))


def sub(a, b):
    """a - b for two tensors of one shape and dtype, or a tensor and a Python number."""
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return add(a, -_scalar(b, "b"))
    a, b = as_tensor(a, "a"), as_tensor(b, "b")
    return record("sub", _ew.axpby(a.data, b.data, 1.0, -1.0), (a, b),
                  lambda grad: (grad, _ew.axpby(grad, alpha=-1.0)))


def mul_scalar(x, scalar):
    """x * scalar for a Python number scalar."""
    x, s = as_tensor(x, "x"), _scalar(scalar, "scalar")
    return record("mul_scalar", _ew.axpby(x.data, alpha=s), (x,), lambda grad: (_ew.axpby(grad, alpha=s),))


def neg(x):
    """-x."""
    return mul_scalar(x, -1.0)


def sum_all(x):
    """The sum of all elements as a 0-d tensor (fp32 accumulation, fixed order)."""
    x = as_tensor(x, "x")
    shape, dtype = x.shape, x.dtype
    return record("sum", _reduce.sum_all(x.data), (x,),
                  lambda grad: (_ew.scale_by_scalar(None, grad, 1.0, shape=shape, dtype=dtype),))


def mean_all(x):
    """The mean of all elements as a 0-d tensor (fp32 accumulation, fixed order)."""
    x = as_tensor(x, "x")
    shape, dtype, n = x.shape, x.dtype, x.numel()
    return record("mean", _reduce.mean_all(x.data), (x,),
                  lambda grad: (_ew.scale_by_scalar(None, grad, 1.0 / max(n, 1), shape=shape, dtype=dtype),))


# ----------------------------------------------------------------------------- convolution


def _conv_operands(x, weight, bias, stride, padding, dilation, groups):
    """What conv2d and conv2d_max_pool2d share: (x, w, b as tn.Tensors, the convolution's options,
    backward(grad, relu_mask) -> the three gradients, and what that backward keeps). It keeps only
    what the wanted gradients need: the input (for the weight's and the bias's) and the weight (for
    the input's; a reference to the parameter, not a copy)."""
    x, w = as_tensor(x, "x"), as_tensor(weight, "weight")
    b = as_tensor(bias, "bias") if bias is not None else None
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    need_x, need_w = x.requires_grad, w.requires_grad
    need_b = b is not None and b.requires_grad
    x_saved = x.data if (need_w or need_b) else None
    w_saved = w.data if need_x else None
    x_shape, w_shape = tuple(x.shape), tuple(w.shape)
    x_channels_last = _layout.prefers_channels_last(x_shape, x.data.stride())

    def backward(grad, relu_mask):
        return _conv_kernels.conv2d_backward(grad, x_saved, w_saved, x_shape, w_shape, relu_mask=relu_mask,
                                             input_grad=need_x, weight_grad=need_w, bias_grad=need_b,
                                             input_channels_last=x_channels_last, **opts)

    return x, w, b, opts, backward, (x_saved, w_saved)


def _unbatched_as_one(op):
    """As torch's convolutions do: a (C, H, W) input is one example, given to ``op`` as a batch of
    one, and its result comes back without the batch dimension."""
    @functools.wraps(op)
    def accepting_unbatched(x, *args, **kwargs):
        x = as_tensor(x, "x")
        if x.ndim == 3:
            out = op(reshape(x, (1, *x.shape)), *args, **kwargs)
            return reshape(out, tuple(out.shape[1:]))
        if x.ndim != 4:
            raise ValueError(f"x must be 3-D (C_in, H, W) or 4-D (N, C_in, H, W), got {x.ndim}-D with shape "
                             f"{tuple(x.shape)}")
        return op(x, *args, **kwargs)
    return accepting_unbatched


@_unbatched_as_one
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    """torch.nn.functional.conv2d on (N, C_in, H, W) or unbatched (C_in, H, W) input, with an
    optional fused ``activation`` (None or "relu") applied in the same kernel as the bias.

    Saves only what the wanted gradients need: the input (for the weight's), the weight (for the
    input's; a reference to the parameter, not a copy) and, with ReLU, a bit mask of where the
    output passes a gradient (1 bit per output element, written by the forward's epilogue only
    when a gradient will be needed; the backward kernels gate dy with it as they load it).
    """
    x, w, b, opts, conv_backward, saved = _conv_operands(x, weight, bias, stride, padding, dilation, groups)
    save_mask = activation == "relu" and is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w, b))
    y = _conv_kernels.conv2d_forward(x.data, w.data, None if b is None else b.data, activation=activation,
                                     save_relu_mask=save_mask, **opts)
    y, relu_mask = y if save_mask else (y, None)

    def backward(grad):
        gated = relu_mask is not None and _relu_gated_by(grad) is relu_mask
        return conv_backward(grad, None if gated else relu_mask)

    out = record("conv2d", y, (x, w, b), backward, saved=(*saved, relu_mask))
    if relu_mask is not None:
        _RELU_GATES[out] = relu_mask
    return out


@_unbatched_as_one
def conv2d_max_pool2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    """``max_pool2d(conv2d(x, weight, bias, stride, padding, dilation, groups, activation), 2)`` in
    one kernel: the pool (2x2 window, stride 2, floor mode) runs in the convolution's epilogue, so
    the full-size activation is never written, read back or kept.

    The same values, winners and gradients as the two ops one after the other (ties, NaN and the
    ReLU's gate included). Saves the input, the weight and the pool's one-byte argmax; backward
    routes the gradient to the winners (the pool's gather) and runs the convolution's backward on
    that, ungated: with activation="relu" the argmax already names no winner in a window whose
    maximum the ReLU zeroed (see "ReLU gates across ops").
    """
    x, w, b, opts, conv_backward, saved = _conv_operands(x, weight, bias, stride, padding, dilation, groups)
    out, argmax, pool_geo = _conv_kernels.conv2d_max_pool2d_forward(
        x.data, w.data, None if b is None else b.data, activation=activation, **opts)

    def backward(grad):
        return conv_backward(_pool_kernels.max_pool2d_backward(grad, argmax, pool_geo), None)

    return record("conv2d_max_pool2d", out, (x, w, b), backward, saved=(*saved, argmax))
