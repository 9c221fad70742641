"""Softmax cross-entropy in one pass: per-row loss and the logits' gradient together, against
class indices or class probabilities, with torch's label smoothing, class weights and ignore_index.

Forward computes, per row, the log-sum-exp with a running maximum (stable for any logit size) and
the loss as sum_j q_j (lse - x_j), where q is the row's target share of each class (the smoothed
one-hot or probabilities, times the class weights); when a gradient is wanted, also
``softmax * sum(q) - q`` already scaled for the reduction, so backward is one multiply by the
upstream scalar (by each row's upstream gradient for reduction="none"). Rows are reduced by a
single program in a fixed order (deterministic, no atomics). Labels outside ``[0, C)`` are never
used as addresses: they are counted, and the count raises ValueError (``runtime.check_later``: on
a GPU without waiting for the device).
"""
import functools

import torch
import triton
import triton.language as tl

from .. import runtime

_NEG_INF = tl.constexpr(float("-inf"))
_COUNT_BLOCK = tl.constexpr(1024)  # labels counted a step for the mean's denominator


@triton.jit
def _rows(logits_ptr, target_ptr, weight_ptr, grad_ptr, rows, B, C, stride_lb, stride_tb, stride_gb, grad_scale,
          smoothing, ignore_index, PROBS: tl.constexpr, WEIGHTED: tl.constexpr, WRITE_GRAD: tl.constexpr,
          BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Loss (fp32, 0 for ignored and bad labels), bad-label flags and -- with WRITE_GRAD -- the
    stored gradient, for the BLOCK_B rows ``rows``."""
    in_b = rows < B
    if PROBS:  # no labels: nothing ignored, nothing bad
        label = tl.zeros((BLOCK_B,), tl.int64)
        ignored = tl.zeros((BLOCK_B,), tl.int1)
    else:
        label = tl.load(target_ptr + rows, mask=in_b, other=0).to(tl.int64)
        ignored = in_b & (label == ignore_index)
    bad = in_b & ~ignored & ((label < 0) | (label >= C))
    dropped = bad | ignored | ~in_b  # rows whose loss and gradient are 0
    label_weight = tl.full((BLOCK_B,), 1.0, tl.float32)
    if WEIGHTED:
        if not PROBS:
            label_weight = tl.load(weight_ptr + label, mask=~dropped, other=0.0)
    row_max = tl.full((BLOCK_B,), _NEG_INF, tl.float32)
    sum_exp = tl.zeros((BLOCK_B,), tl.float32)
    mass = tl.zeros((BLOCK_B,), tl.float32)  # sum_j q_j
    distance = tl.zeros((BLOCK_B,), tl.float32)  # sum_j q_j * (row_max - x_j)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        in_c = cols < C
        x = tl.load(logits_ptr + rows[:, None] * stride_lb + cols[None, :],
                    mask=in_b[:, None] & in_c[None, :], other=0.0).to(tl.float32)
        x = tl.where(in_c[None, :], x, _NEG_INF)  # padded columns add exp(-inf) = 0
        new_max = tl.maximum(row_max, tl.max(x, axis=1))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
        q = _target_share(target_ptr, weight_ptr, rows, cols, label, label_weight, in_b, in_c, stride_tb,
                          smoothing, C, PROBS, WEIGHTED)
        # Distances from the running maximum, all >= 0 (no cancellation at large logits): the terms
        # so far grow by how far the maximum moved (not at all at the first chunk). The -inf of the
        # start and of padded columns is kept out of the products (0 * inf = NaN).
        moved = new_max - tl.where(row_max > _NEG_INF, row_max, new_max)
        x_real = tl.where(in_c[None, :], x, new_max[:, None])
        distance += mass * moved + tl.sum(q * (new_max[:, None] - x_real), axis=1)
        mass += tl.sum(q, axis=1)
        row_max = new_max
    # Differences from the row maximum before anything is added to it: lse = row_max + log(sum_exp)
    # rounded at a logit scale of 1e4 is 5e-4 off, and exp(x - lse) inherits that as a relative
    # error (the float64 reference saw gradients 2e-5 off); exp(x - row_max) / sum_exp does not.
    loss = tl.log(sum_exp) * mass + distance
    if WRITE_GRAD:
        inv_sum = 1.0 / sum_exp
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            in_c = cols < C
            mask = in_b[:, None] & in_c[None, :]
            x = tl.load(logits_ptr + rows[:, None] * stride_lb + cols[None, :], mask=mask, other=0.0)
            p = tl.exp(x.to(tl.float32) - row_max[:, None]) * inv_sum[:, None]
            q = _target_share(target_ptr, weight_ptr, rows, cols, label, label_weight, in_b, in_c, stride_tb,
                              smoothing, C, PROBS, WEIGHTED)
            g = tl.where(dropped[:, None], 0.0, (p * mass[:, None] - q) * grad_scale)
            tl.store(grad_ptr + rows[:, None] * stride_gb + cols[None, :], g.to(grad_ptr.dtype.element_ty),
                     mask=mask)
    return tl.where(dropped, 0.0, loss), bad


@triton.jit
def _target_share(target_ptr, weight_ptr, rows, cols, label, label_weight, in_b, in_c, stride_tb, smoothing, C,
                  PROBS: tl.constexpr, WEIGHTED: tl.constexpr):
    """q[b, j], the weight of -log softmax_j in row b's loss (fp32; 0 in padded columns), torch's
    for label smoothing s and class weights w (all 1 without WEIGHTED):
    labels (1 - s) w[label] [j == label] + s / C w[j]; probabilities w[j] ((1 - s) target[b, j] + s / C)."""
    class_weight = 1.0
    if WEIGHTED:
        class_weight = tl.load(weight_ptr + cols, mask=in_c, other=0.0)[None, :]
    if PROBS:
        t = tl.load(target_ptr + rows[:, None] * stride_tb + cols[None, :], mask=in_b[:, None] & in_c[None, :],
                    other=0.0).to(tl.float32)
        q = ((1.0 - smoothing) * t + smoothing / C) * class_weight
    else:
        q = tl.where(cols[None, :] == label[:, None], (1.0 - smoothing) * label_weight[:, None], 0.0) + \
            smoothing / C * class_weight
    return tl.where(in_c[None, :], q, 0.0)


@triton.jit
def _mean_scale(target_ptr, weight_ptr, B, C, ignore_index, MEAN: tl.constexpr, PROBS: tl.constexpr,
                WEIGHTED: tl.constexpr):
    """The reduction's factor: for the mean 1 / (the kept labels' weights summed: their count
    without WEIGHTED; inf if none, the loss then NaN, as torch's), 1 / B for probabilities (no
    labels); 1 for a sum. Rounded to nearest, as the host's 1 / B was (a plain fp32 division
    compiles to an approximate one)."""
    scale = 1.0
    if MEAN:
        if PROBS:
            scale = tl.math.div_rn(1.0, B.to(tl.float32))
        else:
            kept = tl.zeros((_COUNT_BLOCK,), tl.float32)
            for start in range(0, B, _COUNT_BLOCK):
                offsets = start + tl.arange(0, _COUNT_BLOCK)
                label = tl.load(target_ptr + offsets, mask=offsets < B, other=0)
                keep = (offsets < B) & (label != ignore_index)
                if WEIGHTED:  # a bad label (an error anyway) is read nowhere
                    keep = keep & (label >= 0) & (label < C)
                    kept += tl.load(weight_ptr + label, mask=keep, other=0.0)
                else:
                    kept += keep.to(tl.float32)
            scale = tl.math.div_rn(1.0, tl.sum(kept, axis=0))
    return scale


@triton.jit
def cross_entropy_kernel(logits_ptr, target_ptr, weight_ptr, row_loss_ptr, grad_ptr, bad_ptr, loss_ptr,
                         bad_count_ptr, B, C, stride_lb, stride_tb, stride_gb, smoothing, ignore_index,
                         PROBS: tl.constexpr, WEIGHTED: tl.constexpr, MEAN: tl.constexpr, WRITE_GRAD: tl.constexpr,
                         SINGLE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Softmax cross-entropy of logits (B, C) (row stride stride_lb, unit column stride) against
    class indices target (B,) int32/int64, or with PROBS class probabilities target (B, C) (row
    stride stride_tb, unit column stride, a float dtype); with WEIGHTED, class weights weight (C,)
    fp32. Per row b, with q[b, j] torch's share of -log softmax_j in it (_target_share: the
    smoothed one-hot or probabilities, times the weights):

    row loss = sum_j q[b, j] * (lse_b - x[b, j])                   (fp32)
    grad[b, j] = scale * (softmax_bj * sum_k q[b, k] - q[b, j])    (B, C), row stride stride_gb,
                                                                   logits' dtype (WRITE_GRAD)
    with scale = 1 / (the kept labels' weights summed: their count unweighted) for MEAN, 1 / B for
    MEAN with probabilities, else 1 (_mean_scale). A label equal to ignore_index has loss and
    gradient 0; any other outside [0, C) is flagged bad, and has loss and gradient 0 too.

    SINGLE: one program loops over all rows in BLOCK_B blocks and writes loss[0] = scale * sum of
    row losses (loss's dtype) and bad_count[0] (int32) itself: one launch for a whole small batch.
    Otherwise grid (cdiv(B, BLOCK_B),): row_loss (B,) (fp32, or logits' dtype where the row losses
    are the result) and bad (B,) int32 are written per row for loss_reduce_kernel; for the mean,
    each program counts the batch's labels itself (B loads), so its gradients are final. Each row
    block loops over C in BLOCK_C chunks (twice with WRITE_GRAD).
    """
    if SINGLE or WRITE_GRAD:
        scale = _mean_scale(target_ptr, weight_ptr, B, C, ignore_index, MEAN, PROBS, WEIGHTED)
    else:  # row losses only: loss_reduce_kernel applies the mean's scale
        scale = 1.0
    if SINGLE:
        total = tl.zeros((BLOCK_B,), tl.float32)
        bad_total = tl.zeros((BLOCK_B,), tl.int32)
        for b0 in range(0, B, BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            loss, bad = _rows(logits_ptr, target_ptr, weight_ptr, grad_ptr, rows, B, C, stride_lb, stride_tb,
                              stride_gb, scale, smoothing, ignore_index, PROBS, WEIGHTED, WRITE_GRAD, BLOCK_B,
                              BLOCK_C)
            total += loss
            bad_total += bad.to(tl.int32)
        tl.store(loss_ptr, (tl.sum(total, axis=0) * scale).to(loss_ptr.dtype.element_ty))
        tl.store(bad_count_ptr, tl.sum(bad_total, axis=0))
    else:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        loss, bad = _rows(logits_ptr, target_ptr, weight_ptr, grad_ptr, rows, B, C, stride_lb, stride_tb, stride_gb,
                          scale, smoothing, ignore_index, PROBS, WEIGHTED, WRITE_GRAD, BLOCK_B, BLOCK_C)
        tl.store(row_loss_ptr + rows, loss.to(row_loss_ptr.dtype.element_ty), mask=rows < B)
        tl.store(bad_ptr + rows, bad.to(tl.int32), mask=rows < B)


@triton.jit
def loss_reduce_kernel(row_loss_ptr, bad_ptr, loss_ptr, bad_count_ptr, target_ptr, weight_ptr, B, C, ignore_index,
                       PROBS: tl.constexpr, WEIGHTED: tl.constexpr, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """loss[0] = scale * sum(row_loss) (fp32 sum, stored in loss's dtype; scale as in
    cross_entropy_kernel); bad_count[0] = sum(bad).

    row_loss: (B,) fp32 or logits' dtype; bad: (B,) int32; target and weight: the labels and class
    weights (read for the mean's denominator); one program, rows summed in a fixed order.
    """
    acc = tl.zeros((BLOCK,), tl.float32)
    count = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, B, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < B
        acc += tl.load(row_loss_ptr + offsets, mask=mask, other=0.0)
        count += tl.load(bad_ptr + offsets, mask=mask, other=0)
    scale = _mean_scale(target_ptr, weight_ptr, B, C, ignore_index, MEAN, PROBS, WEIGHTED)
    tl.store(loss_ptr, (tl.sum(acc, axis=0) * scale).to(loss_ptr.dtype.element_ty))
    tl.store(bad_count_ptr, tl.sum(count, axis=0))


REDUCE_BLOCK = 1024
# Up to this many (padded) logits one program handles the whole batch and the reduction itself.
SINGLE_LIMIT = 1 << 20 if runtime.INTERPRETED else 1 << 16


def _blocks(B, C):
    """(BLOCK_B, BLOCK_C, SINGLE) for a (B, C) problem."""
    block_c = max(16, min(runtime.next_power_of_2(C), 4096 if runtime.INTERPRETED else 1024))
    if runtime.INTERPRETED:  # ~1 ms per program: whole batches per program, few distinct shapes,
        block_b = max(1, min(128, 8192 // block_c))  # tiles the sm_90 compile check builds quickly
    else:
        block_b = max(1, min(64, 4096 // block_c))
    return block_b, block_c, B * block_c <= SINGLE_LIMIT


def cross_entropy(logits, target, reduction: str = "mean", label_smoothing: float = 0.0,
                  need_grad: bool = True, blocks=None, ignore_index: int = -100, weight=None):
    """Softmax cross-entropy of logits (B, C) against class indices target (B,) int32/int64, or
    class probabilities target (B, C) of a float dtype (torch's two kinds of target).

    Returns ``(loss, grad)`` in logits' dtype: loss is 0-d for reduction "mean" and "sum", the (B,)
    row losses for "none"; grad (B, C) is d(loss)/d(logits) for "mean"/"sum", and each row's own
    gradient d(loss[b])/d(logits[b]) for "none" (None without ``need_grad``). As in torch, rows
    labelled ``ignore_index`` add nothing and do not count in the mean, and class weights
    ``weight`` (C,) scale each class's terms (the mean over labels then divides by their weights'
    sum). Other labels outside
    [0, C) raise ValueError: under the interpreter here, on a GPU once their count has reached the
    host, without waiting for the device (``runtime.check_later``: at the next call, or the next
    ``Tensor.item()``/``numpy()``).
    """
    runtime.raise_deferred()
    runtime.check_tensor(logits, "logits", ndim=2)
    runtime.check_tensor(target, "target", dtypes=None)
    probs = target.dtype.is_floating_point
    if probs:
        runtime.check_tensor(target, "target")
        if target.shape != logits.shape:
            raise ValueError(f"target of class probabilities must have logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}")
    else:
        runtime.check_tensor(target, "target", ndim=1, dtypes=(torch.int64, torch.int32))
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if probs and ignore_index != -100:
        raise ValueError(f"ignore_index is for class-index targets (torch refuses it with probabilities too), "
                         f"got {ignore_index} with a {str(target.dtype).replace('torch.', '')} target")
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit int64, got {ignore_index}")
    if weight is not None:
        runtime.check_tensor(weight, "weight", ndim=1)
        if weight.shape[0] != logits.shape[1]:
            raise ValueError(f"weight must have one value per class ({logits.shape[1]}), got shape "
                             f"{tuple(weight.shape)}")
        weight = weight.to(torch.float32).contiguous()
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    B, C = logits.shape
    if target.shape[0] != B:
        raise ValueError(f"target must have one label per row of logits ({B}), got shape {tuple(target.shape)}")
    if B == 0 or C == 0:
        raise ValueError(f"logits must have at least one row and one class, got shape {tuple(logits.shape)}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if target.stride(-1) != 1:
        target = target.contiguous()
    grad = runtime.empty((B, C), logits.dtype) if need_grad else logits
    per_row = reduction == "none"
    # "none": the row losses are the result, and the reduction's sum only goes to a scratch value
    # (its launch counts the bad labels)
    loss = runtime.empty((), torch.float32 if per_row else logits.dtype)
    bad_count = runtime.empty((), torch.int32)
    block_b, block_c, single = blocks if blocks is not None and len(blocks) == 3 else (
        tuple(blocks) + (False,) if blocks is not None else _blocks(B, C))
    single = single and not per_row
    # Per-row results only when several programs share the rows or the rows are the result (then a
    # second launch reduces them).
    row_loss = loss if single else runtime.empty((B,), logits.dtype if per_row else torch.float32)
    bad = bad_count if single else runtime.empty((B,), torch.int32)
    size = logits.element_size()
    runtime.launch(cross_entropy_kernel, (1 if single else runtime.cdiv(B, block_b),),
                   (logits, target, logits if weight is None else weight, row_loss, grad, bad, loss, bad_count,
                    B, C, logits.stride(0),
                    target.stride(0) if probs else 0, grad.stride(0) if need_grad else 0, float(label_smoothing),
                    ignore_index),
                   {"PROBS": probs, "WEIGHTED": weight is not None, "MEAN": reduction == "mean",
                    "WRITE_GRAD": bool(need_grad),
                    "SINGLE": bool(single), "BLOCK_B": block_b, "BLOCK_C": block_c},
                   runtime.LaunchInfo("cross_entropy", ((B, C),), logits.dtype,
                                      flops=(10 if need_grad else 6) * B * C,
                                      bytes=B * C * size * (2 if need_grad else 1) + target.nbytes))
    if not single:
        runtime.launch(loss_reduce_kernel, (1,), (row_loss, bad, loss, bad_count, target,
                                                  logits if weight is None else weight, B, C, ignore_index),
                       {"PROBS": probs, "WEIGHTED": weight is not None, "MEAN": reduction == "mean",
                        "BLOCK": REDUCE_BLOCK},
                       runtime.LaunchInfo("cross_entropy_reduce", ((B,),), torch.float32, flops=B, bytes=B * 8))
    # Without waiting for the device (see runtime.check_later); bad rows read nothing out of
    # bounds meanwhile, and their loss and gradient are 0.
    runtime.check_later(bad_count, functools.partial(_bad_labels, C, ignore_index))
    return (row_loss if per_row else loss), (grad if need_grad else None)


def _bad_labels(C: int, ignore_index: int, n: int, deferred: bool) -> ValueError:
    when = (" (in an earlier cross_entropy call: on a GPU the labels are checked once the device has "
            "reached them, without waiting for it)") if deferred else ""
    return ValueError(f"target has {n} label(s) outside [0, {C}) (C = {C} classes from logits' second "
                      f"dimension) other than ignore_index={ignore_index}{when}")
