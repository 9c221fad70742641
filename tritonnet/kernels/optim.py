"""Fused optimizer updates over many parameter tensors in ONE launch each.

Parameters stay where the model put them (separate tensors); each launch gets a table of raw
addresses instead: one int64 row per tensor ``[param, grad, state..., numel]``, and a chunk table
with one row per program ``[tensor index, first element]``. A program loads its row, turns the
addresses back into typed pointers (typed like ``dtype_ptr``, a tensor of the group's dtype) and
updates up to BLOCK elements. This avoids copying gradients into a flat buffer every step (the
tape allocates fresh gradient tensors) and keeps one launch for any number of tensors.

Hyper-parameters (learning rate, momentum, betas, eps, weight decay, bias corrections) are fp32
runtime arguments, never constexprs, so changing them between steps never recompiles. Step counts
are folded into the bias corrections on the host for the same reason (an int argument equal to 1
would be specialised by Triton). States are kept in the parameter's dtype, as torch.optim does;
arithmetic is fp32.
"""
import torch
import triton
import triton.language as tl

from .. import runtime

# Under the interpreter one program costs ~1 ms whatever its size: few, large chunks there.
BLOCK = 16384 if runtime.INTERPRETED else 2048


@triton.jit
def _row(table_ptr, chunks_ptr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunks_ptr + 2 * pid)
    start = tl.load(chunks_ptr + 2 * pid + 1)
    numel = tl.load(table_ptr + tensor * ROW + (ROW - 1))
    offsets = start + tl.arange(0, BLOCK)
    return tensor * ROW, offsets, offsets < numel


@triton.jit
def sgd_kernel(table_ptr, chunks_ptr, dtype_ptr, lr, weight_decay, momentum, buf_scale, grad_scale,
               HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, BLOCK: tl.constexpr):
    """torch.optim.SGD's update for the chunk of one tensor this program owns.

    table: (T, 4) int64 rows [param address, grad address, momentum-buffer address, numel]
    (buffers unused without HAS_MOMENTUM); chunks: (P, 2) int64 rows [tensor index, first element],
    grid (P,); dtype_ptr: any tensor of the parameters' dtype (types the addresses).
    g = grad + weight_decay * p; buf = buf_scale * buf + grad_scale * g (buf_scale = 0 and
    grad_scale = 1 on the first step: buf = g, buffers zero-initialised; later momentum and
    1 - dampening); g = g + momentum * buf (NESTEROV) or buf; p = p - lr * g.
    """
    row, offsets, mask = _row(table_ptr, chunks_ptr, 4, BLOCK)
    param_ptr = tl.load(table_ptr + row).to(dtype_ptr.dtype)
    grad_ptr = tl.load(table_ptr + row + 1).to(dtype_ptr.dtype)
    p = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    g = g + weight_decay * p
    if HAS_MOMENTUM:
        buf_ptr = tl.load(table_ptr + row + 2).to(dtype_ptr.dtype)
        buf = tl.load(buf_ptr + offsets, mask=mask).to(tl.float32)
        buf = buf * buf_scale + grad_scale * g
        tl.store(buf_ptr + offsets, buf.to(dtype_ptr.dtype.element_ty), mask=mask)
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    tl.store(param_ptr + offsets, (p - lr * g).to(dtype_ptr.dtype.element_ty), mask=mask)


@triton.jit
def adam_kernel(table_ptr, chunks_ptr, dtype_ptr, lr, weight_decay, decay_factor, avg_weight, beta2,
                sq_weight, eps, step_size, bias_correction2_sqrt, DECOUPLED: tl.constexpr, BLOCK: tl.constexpr):
    """torch.optim.Adam / AdamW's update for the chunk of one tensor this program owns.

    table: (T, 5) int64 rows [param, grad, exp_avg, exp_avg_sq addresses, numel]; chunks and
    dtype_ptr as in sgd_kernel. DECOUPLED (AdamW): p *= decay_factor (= 1 - lr * weight_decay);
    else g += weight_decay * p. m = lerp(m, g, avg_weight = 1 - beta1) with torch's lerp formula;
    v = beta2 * v + sq_weight * g * g (sq_weight = 1 - beta2);
    p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps), step_size = lr / (1 - beta1^t).
    """
    row, offsets, mask = _row(table_ptr, chunks_ptr, 5, BLOCK)
    param_ptr = tl.load(table_ptr + row).to(dtype_ptr.dtype)
    grad_ptr = tl.load(table_ptr + row + 1).to(dtype_ptr.dtype)
    avg_ptr = tl.load(table_ptr + row + 2).to(dtype_ptr.dtype)
    sq_ptr = tl.load(table_ptr + row + 3).to(dtype_ptr.dtype)
    p = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    m = tl.load(avg_ptr + offsets, mask=mask).to(tl.float32)
    v = tl.load(sq_ptr + offsets, mask=mask).to(tl.float32)
    if DECOUPLED:
        p = p * decay_factor
    else:
        g = g + weight_decay * p
    # torch's lerp: start + w * (end - start) for w < 0.5, else end - (end - start) * (1 - w).
    m = tl.where(avg_weight < 0.5, m + avg_weight * (g - m), g - (g - m) * (1.0 - avg_weight))
    v = v * beta2 + sq_weight * g * g
    # Correctly rounded sqrt and division (the GPU's defaults are approximate), as torch computes.
    denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
    p = p - step_size * tl.div_rn(m, denom)
    tl.store(avg_ptr + offsets, m.to(dtype_ptr.dtype.element_ty), mask=mask)
    tl.store(sq_ptr + offsets, v.to(dtype_ptr.dtype.element_ty), mask=mask)
    tl.store(param_ptr + offsets, p.to(dtype_ptr.dtype.element_ty), mask=mask)


_CHUNKS: dict = {}


def _chunk_table(numels, block):
    """(P, 2) int64 [tensor index, first element] covering every tensor in BLOCK pieces (cached)."""
    key = (tuple(numels), block)
    table = _CHUNKS.get(key)
    if table is None:
        rows = [(i, start) for i, n in enumerate(numels) for start in range(0, n, block)]
        table = _CHUNKS[key] = torch.tensor(rows, dtype=torch.int64).reshape(-1, 2).to(runtime.device())
    return table


def _tables(groups, names):
    """Validate tensors and build the address table (T, len(groups) + 1) and the chunk table."""
    params = groups[0]
    dtype = params[0].dtype
    for name, group in zip(names, groups):
        for i, t in enumerate(group):
            runtime.check_tensor(t, f"{name}[{i}]")
            if t.dtype != dtype or t.shape != params[i].shape or not t.is_contiguous():
                raise ValueError(f"{name}[{i}] must be contiguous with params[{i}]'s shape "
                                 f"{tuple(params[i].shape)} and dtype {dtype}, got {tuple(t.shape)} {t.dtype}")
    numels = [p.numel() for p in params]
    rows = [[g[i].data_ptr() for g in groups] + [numels[i]] for i in range(len(params))]
    table = torch.tensor(rows, dtype=torch.int64).to(runtime.device())
    return table, _chunk_table(numels, BLOCK), numels


def _bytes(numels, dtype, streams):
    return sum(numels) * torch.empty((), dtype=dtype).element_size() * streams


def sgd_step(params, grads, momentum_buffers, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=True):
    """Update ``params`` in place (and ``momentum_buffers``, zero-initialised, when momentum != 0)
    with torch.optim.SGD's rule, all tensors of one dtype in one launch."""
    if not params:
        return
    has_momentum = momentum != 0
    if has_momentum and momentum_buffers is None:
        raise ValueError("momentum_buffers are required when momentum != 0")
    # Rows always have 4 columns; without momentum the unused buffer slot repeats the grad address.
    groups = [params, grads, momentum_buffers if has_momentum else grads]
    table, chunks, numels = _tables(groups, ["params", "grads", "momentum_buffers"])
    runtime.launch(sgd_kernel, (chunks.shape[0],),
                   (table, chunks, params[0], float(lr), float(weight_decay), float(momentum),
                    0.0 if first_step else float(momentum), 1.0 if first_step else 1.0 - float(dampening)),
                   {"HAS_MOMENTUM": has_momentum, "NESTEROV": bool(nesterov), "BLOCK": BLOCK},
                   runtime.LaunchInfo("sgd_step", tuple(tuple(p.shape) for p in params), params[0].dtype,
                                      flops=6 * sum(numels),
                                      bytes=_bytes(numels, params[0].dtype, 5 if has_momentum else 3),
                                      tensors=[t for group in groups for t in group]))


def adam_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step,
              decoupled=False):
    """Update params and the two moment estimates in place with torch.optim.Adam's rule (AdamW's
    with ``decoupled``); ``step`` is the 1-based step count of every tensor in this launch."""
    if not params:
        return
    groups = [params, grads, exp_avgs, exp_avg_sqs]
    table, chunks, numels = _tables(groups, ["params", "grads", "exp_avgs", "exp_avg_sqs"])
    # Bias corrections in Python double precision, as torch.optim computes them.
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    runtime.launch(adam_kernel, (chunks.shape[0],),
                   (table, chunks, params[0], float(lr), float(weight_decay), float(1 - lr * weight_decay),
                    float(1 - beta1), float(beta2), float(1 - beta2), float(eps), float(lr / bias_correction1),
                    float(bias_correction2 ** 0.5)),
                   {"DECOUPLED": bool(decoupled), "BLOCK": BLOCK},
                   runtime.LaunchInfo("adamw_step" if decoupled else "adam_step",
                                      tuple(tuple(p.shape) for p in params), params[0].dtype,
                                      flops=16 * sum(numels), bytes=_bytes(numels, params[0].dtype, 7),
                                      tensors=[t for group in groups for t in group]))
