"""Fused optimizer updates over many parameter tensors in ONE launch each.

Parameters stay where the model put them (separate tensors); each launch gets a table of raw
addresses instead: one int64 row per tensor ``[param, grad, state1, state2, numel, first chunk]``.
Program ``pid`` finds its tensor by counting the rows whose first chunk is <= pid, turns the
addresses back into typed pointers (typed like ``dtype_ptr``, a tensor of the group's dtype) and
updates up to BLOCK elements. This avoids copying gradients into a flat buffer every step (the
tape allocates fresh gradient tensors) and keeps one launch for any number of tensors.

The table reaches the device by one asynchronous copy from pinned memory, or, while a CUDA graph
is being captured (and under the interpreter), through a small kernel that takes its values as
arguments, 16 per launch: a graph captures kernel arguments by value, while a copy from host
memory would read that memory again at every replay. Tables are cached by their contents (the
caching allocator tends to hand out the same gradient addresses every step, so most steps launch
no fill at all); a table used by a capture is kept alive for good, since every replay reads it.

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

# Under the interpreter one program costs ~1 ms whatever its size: larger chunks there (not larger
# still: the ahead-of-time sm_90 compile of the interpreter's specialisation grows with BLOCK).
BLOCK = 4096 if runtime.INTERPRETED else 2048


ROW: tl.constexpr = tl.constexpr(6)  # [param, grad, state1, state2, numel, first chunk]


@triton.jit
def _locate(table_ptr, num_tensors, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, VEC: tl.constexpr):
    """This program's table row offset, element offsets and mask within its tensor."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_T)
    first = tl.load(table_ptr + t * ROW + 5, mask=t < num_tensors, other=0)
    first = tl.where(t < num_tensors, first, pid + 1)
    # Tensors with no elements own no chunk: the last row starting at or before pid is ours.
    row = (tl.sum((first <= pid).to(tl.int64), axis=0) - 1) * ROW
    offsets = (pid - tl.load(table_ptr + row + 5)) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < tl.load(table_ptr + row + 4)
    if VEC > 1:  # the launcher checked that every numel is a multiple of VEC
        mask = tl.max_constancy(mask, VEC)
    return row, offsets, mask


@triton.jit
def _pointers(table_ptr, row, COLUMN: tl.constexpr, dtype_ptr, offsets, VEC: tl.constexpr):
    """Typed pointers to ``offsets`` of the tensor whose address is in column COLUMN of ``row``.

    Addresses loaded from memory carry no alignment facts, so without hints every access is a
    scalar one; with VEC > 1 the launcher checked 16-byte alignment, allowing 16-byte accesses.
    """
    ptrs = tl.load(table_ptr + row + COLUMN).to(dtype_ptr.dtype) + offsets
    if VEC > 1:
        ptrs = tl.max_contiguous(tl.multiple_of(ptrs, 16), VEC)
    return ptrs


@triton.jit
def sgd_kernel(table_ptr, num_tensors, dtype_ptr, lr, weight_decay, momentum, buf_scale, grad_scale,
               HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr,
               VEC: tl.constexpr):
    """torch.optim.SGD's update for the chunk of one tensor this program owns.

    table: (num_tensors, 6) int64 rows [param address, grad address, momentum-buffer address,
    unused, numel, first chunk] (the buffer unused without HAS_MOMENTUM), first chunk = the number
    of BLOCK-element chunks of the tensors before; grid: (total chunks,); BLOCK_T >= num_tensors;
    dtype_ptr: any tensor of the parameters' dtype (types the addresses); VEC: elements per
    16-byte access when every address is 16-byte aligned and every numel a multiple of VEC, else 1.
    g = grad + weight_decay * p; buf = buf_scale * buf + grad_scale * g (buf_scale = 0 and
    grad_scale = 1 on the first step: buf = g, buffers zero-initialised; later momentum and
    1 - dampening); g = g + momentum * buf (NESTEROV) or buf; p = p - lr * g.
    """
    row, offsets, mask = _locate(table_ptr, num_tensors, BLOCK, BLOCK_T, VEC)
    param_ptrs = _pointers(table_ptr, row, 0, dtype_ptr, offsets, VEC)
    p = tl.load(param_ptrs, mask=mask).to(tl.float32)
    g = tl.load(_pointers(table_ptr, row, 1, dtype_ptr, offsets, VEC), mask=mask).to(tl.float32)
    g = g + weight_decay * p
    if HAS_MOMENTUM:
        buf_ptrs = _pointers(table_ptr, row, 2, dtype_ptr, offsets, VEC)
        buf = tl.load(buf_ptrs, mask=mask).to(tl.float32)
        buf = buf * buf_scale + grad_scale * g
        tl.store(buf_ptrs, buf.to(dtype_ptr.dtype.element_ty), mask=mask)
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    tl.store(param_ptrs, (p - lr * g).to(dtype_ptr.dtype.element_ty), mask=mask)


@triton.jit
def adam_kernel(table_ptr, num_tensors, dtype_ptr, lr, weight_decay, decay_factor, avg_weight, beta2,
                sq_weight, eps, step_size, bias_correction2_sqrt, DECOUPLED: tl.constexpr, BLOCK: tl.constexpr,
                BLOCK_T: tl.constexpr, VEC: tl.constexpr):
    """torch.optim.Adam / AdamW's update for the chunk of one tensor this program owns.

    table: (num_tensors, 6) int64 rows [param, grad, exp_avg, exp_avg_sq addresses, numel, first
    chunk]; grid, BLOCK_T, dtype_ptr and VEC as in sgd_kernel. DECOUPLED (AdamW): p *= decay_factor (= 1 - lr * weight_decay);
    else g += weight_decay * p. m = lerp(m, g, avg_weight = 1 - beta1) with torch's lerp formula;
    v = beta2 * v + sq_weight * g * g (sq_weight = 1 - beta2);
    p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps), step_size = lr / (1 - beta1^t).
    """
    row, offsets, mask = _locate(table_ptr, num_tensors, BLOCK, BLOCK_T, VEC)
    param_ptrs = _pointers(table_ptr, row, 0, dtype_ptr, offsets, VEC)
    avg_ptrs = _pointers(table_ptr, row, 2, dtype_ptr, offsets, VEC)
    sq_ptrs = _pointers(table_ptr, row, 3, dtype_ptr, offsets, VEC)
    p = tl.load(param_ptrs, mask=mask).to(tl.float32)
    g = tl.load(_pointers(table_ptr, row, 1, dtype_ptr, offsets, VEC), mask=mask).to(tl.float32)
    m = tl.load(avg_ptrs, mask=mask).to(tl.float32)
    v = tl.load(sq_ptrs, mask=mask).to(tl.float32)
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
    tl.store(avg_ptrs, m.to(dtype_ptr.dtype.element_ty), mask=mask)
    tl.store(sq_ptrs, v.to(dtype_ptr.dtype.element_ty), mask=mask)
    tl.store(param_ptrs, p.to(dtype_ptr.dtype.element_ty), mask=mask)


FILL_WIDTH = 16
# Added to every value so each argument is a 64-bit integer whatever its size: Triton picks an int
# argument's type from its value, and one type signature means one compiled variant, compiled on
# the first (eager) step and never in the middle of a CUDA graph capture.
FILL_BIAS: tl.constexpr = tl.constexpr(1 << 40)


@triton.jit(do_not_specialize=["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11",
                               "v12", "v13", "v14", "v15"])
def fill_table_kernel(out_ptr, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15):
    """out[0:16] (int64) = v0..v15 - FILL_BIAS; the values arrive as kernel arguments."""
    tl.store(out_ptr + 0, v0 - FILL_BIAS)
    tl.store(out_ptr + 1, v1 - FILL_BIAS)
    tl.store(out_ptr + 2, v2 - FILL_BIAS)
    tl.store(out_ptr + 3, v3 - FILL_BIAS)
    tl.store(out_ptr + 4, v4 - FILL_BIAS)
    tl.store(out_ptr + 5, v5 - FILL_BIAS)
    tl.store(out_ptr + 6, v6 - FILL_BIAS)
    tl.store(out_ptr + 7, v7 - FILL_BIAS)
    tl.store(out_ptr + 8, v8 - FILL_BIAS)
    tl.store(out_ptr + 9, v9 - FILL_BIAS)
    tl.store(out_ptr + 10, v10 - FILL_BIAS)
    tl.store(out_ptr + 11, v11 - FILL_BIAS)
    tl.store(out_ptr + 12, v12 - FILL_BIAS)
    tl.store(out_ptr + 13, v13 - FILL_BIAS)
    tl.store(out_ptr + 14, v14 - FILL_BIAS)
    tl.store(out_ptr + 15, v15 - FILL_BIAS)


_TABLES: dict = {}        # table contents -> device table (recently used; bounded)
_CAPTURED_TABLES = []     # tables a CUDA graph reads on every replay: never freed


def _device_table(values):
    """An int64 device tensor holding ``values`` (a flat list of non-negative ints < 2**62)."""
    key = tuple(values)
    table = _TABLES.get(key)
    capturing = runtime.capturing()
    if table is None:
        if runtime.INTERPRETED or capturing:
            padded = [v + (1 << 40) for v in values] + [1 << 40] * (-len(values) % FILL_WIDTH)
            table = torch.empty(len(padded), dtype=torch.int64, device=runtime.device())
            for i in range(0, len(padded), FILL_WIDTH):
                runtime.launch(fill_table_kernel, (1,), (table[i:i + FILL_WIDTH], *padded[i:i + FILL_WIDTH]), {},
                               runtime.LaunchInfo("optimizer_table", ((FILL_WIDTH,),), torch.int64,
                                                  bytes=8 * FILL_WIDTH))
        else:
            # Outside a capture one asynchronous copy from pinned memory replaces the fill launches
            # (a new table most eager steps: backward's gradients land at new addresses). torch's
            # pinned-memory allocator keeps the source alive until the copy has run.
            table = torch.tensor(values, dtype=torch.int64, pin_memory=True).to(runtime.device(), non_blocking=True)
        if not capturing:  # a captured fill runs at replays only: no eager step may find it before
            if len(_TABLES) >= 16:
                _TABLES.pop(next(iter(_TABLES)))
            _TABLES[key] = table
    if capturing:
        _CAPTURED_TABLES.append(table)
    return table


def _tables(groups, names):
    """Validate tensors; return the device address table, the number of chunks and the numels."""
    params = groups[0]
    runtime.check_tensor(params[0], "params[0]")
    dtype = params[0].dtype
    on_cuda = runtime.DEVICE.type == "cuda"
    for name, group in zip(names, groups):
        for i, t in enumerate(group):
            # One cheap test for the common case (every step checks ~3 tensors per parameter);
            # the full check, with its argument-naming errors, only when it fails.
            if (isinstance(t, torch.Tensor) and t.dtype == dtype and (t.is_cuda if on_cuda else t.is_cpu)
                    and t.shape == params[i].shape and t.is_contiguous()):
                continue
            runtime.check_tensor(t, f"{name}[{i}]")
            raise ValueError(f"{name}[{i}] must be contiguous with params[{i}]'s shape "
                             f"{tuple(params[i].shape)} and dtype {dtype}, got {tuple(t.shape)} {t.dtype}")
    numels = [p.numel() for p in params]
    values, chunks = [], 0
    # 16-byte accesses need 16-byte aligned addresses and numels that end on a 16-byte boundary.
    vec = 16 // params[0].element_size()
    for i, n in enumerate(numels):
        addresses = [g[i].data_ptr() for g in groups]
        values += addresses + [addresses[-1]] * (4 - len(addresses)) + [n, chunks]
        chunks += runtime.cdiv(n, BLOCK)
        if n % vec or any(a % 16 for a in addresses):
            vec = 1
    return _device_table(values), chunks, numels, vec


def _launch_constants(params, vec):
    return {"BLOCK": BLOCK, "BLOCK_T": max(16, runtime.next_power_of_2(len(params))), "VEC": vec}


def _bytes(numels, dtype, streams):
    return sum(numels) * dtype.itemsize * streams


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
    table, chunks, numels, vec = _tables(groups, ["params", "grads", "momentum_buffers"])
    if chunks == 0:
        return
    runtime.launch(sgd_kernel, (chunks,),
                   (table, len(params), params[0], float(lr), float(weight_decay), float(momentum),
                    0.0 if first_step else float(momentum), 1.0 if first_step else 1.0 - float(dampening)),
                   dict(_launch_constants(params, vec), HAS_MOMENTUM=has_momentum, NESTEROV=bool(nesterov)),
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
    table, chunks, numels, vec = _tables(groups, ["params", "grads", "exp_avgs", "exp_avg_sqs"])
    if chunks == 0:
        return
    # Bias corrections in Python double precision, as torch.optim computes them.
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    runtime.launch(adam_kernel, (chunks,),
                   (table, len(params), params[0], float(lr), float(weight_decay), float(1 - lr * weight_decay),
                    float(1 - beta1), float(beta2), float(1 - beta2), float(eps), float(lr / bias_correction1),
                    float(bias_correction2 ** 0.5)),
                   dict(_launch_constants(params, vec), DECOUPLED=bool(decoupled)),
                   runtime.LaunchInfo("adamw_step" if decoupled else "adam_step",
                                      tuple(tuple(p.shape) for p in params), params[0].dtype,
                                      flops=16 * sum(numels), bytes=_bytes(numels, params[0].dtype, 7),
                                      tensors=[t for group in groups for t in group]))
