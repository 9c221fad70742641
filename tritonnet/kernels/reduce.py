"""Reductions, deterministic (fixed partition, no atomics): to a scalar (sum, mean) and over the
rows of a [P, C] matrix (column sums: a convolution's split-K partial weight gradients, and the
bias gradient over a channels-last dy)."""
import torch
import triton
import triton.language as tl

from .. import runtime

# Under the interpreter one program costs ~1 ms whatever its size: few, large blocks there.
BLOCK = 16384 if runtime.INTERPRETED else 2048
MAX_PARTIALS = 4 if runtime.INTERPRETED else 512
# Many warps keep the sm_90 compile check of the interpreter's large blocks quick.
OPTIONS = {"num_warps": 16} if runtime.INTERPRETED else {}


@triton.jit
def sum_partials_kernel(x_ptr, out_ptr, n, num_programs, scale, BLOCK: tl.constexpr, FINAL: tl.constexpr):
    """Program p sums blocks p, p + num_programs, ... of x (contiguous, n elements) in fp32 into
    out[p] (fp32, num_programs elements); with FINAL (one program) it writes sum * scale in out's dtype."""
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(pid * BLOCK, n, num_programs * BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    if FINAL:
        total = total * scale
    tl.store(out_ptr + pid, total.to(out_ptr.dtype.element_ty))


def _sum(x, scale: float, op: str):
    runtime.check_tensor(x, "x")
    x = x.contiguous()
    n = x.numel()
    out = runtime.empty((), x.dtype)
    if n == 0:
        out.fill_(0.0 if op == "sum" else float("nan"))  # torch: sum of nothing is 0, mean is NaN
        return out
    # The partition depends only on n, so the summation order (and the result) is reproducible.
    programs = min(runtime.cdiv(n, BLOCK), MAX_PARTIALS)
    info = runtime.LaunchInfo(op, (tuple(x.shape),), x.dtype, flops=n, bytes=n * x.element_size())
    if programs == 1:
        runtime.launch(sum_partials_kernel, (1,), (x, out, n, 1, float(scale)),
                       dict(OPTIONS, BLOCK=BLOCK, FINAL=True), info)
        return out
    partials = runtime.empty((programs,), torch.float32)
    runtime.launch(sum_partials_kernel, (programs,), (x, partials, n, programs, 1.0),
                   dict(OPTIONS, BLOCK=BLOCK, FINAL=False), info)
    block2 = runtime.next_power_of_2(MAX_PARTIALS)  # one shape for every n: fewer specialisations
    runtime.launch(sum_partials_kernel, (1,), (partials, out, programs, 1, float(scale)),
                   {"BLOCK": block2, "FINAL": True},
                   runtime.LaunchInfo(op + "_final", ((programs,),), partials.dtype, flops=programs,
                                      bytes=programs * 4))
    return out


def sum_all(x):
    """The sum of every element of x as a 0-d tensor of x's dtype (accumulated in fp32)."""
    return _sum(x, 1.0, "sum")


def mean_all(x):
    """The mean of every element of x as a 0-d tensor of x's dtype (accumulated in fp32)."""
    return _sum(x, 1.0 / max(x.numel(), 1), "mean")


# ----------------------------------------------------------------------------- column sums

# [rows, columns] tiles: 64 columns (128 bytes of bf16) a program; under the interpreter few, wide ones
COLUMN_TILE = (64, 1024) if runtime.INTERPRETED else (128, 64)
COLUMN_OPTIONS = {"num_warps": 16} if runtime.INTERPRETED else {"num_warps": 8, "num_stages": 3}
# Up to this many tiles of rows a program walks them all in one launch (a split-K workspace: a
# few hundred rows); beyond, parts of the rows go to ~4 programs per SM and a second pass adds them.
ONE_PASS_TILES = 4


@triton.jit(do_not_specialize=["P", "ROWS"])
def column_sums_kernel(x_ptr, out_ptr, P, C, ROWS, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[r, c] = sum of x[p, c] over the rows p of part r, [r*ROWS, min((r+1)*ROWS, P)), added
    in fp32 in a fixed order and stored in out's dtype.

    x: [P, C] contiguous, any float dtype (C specialised: rows of 16-byte vectors when it allows).
    out: [cdiv(P, ROWS), C] contiguous. Grid: (cdiv(P, ROWS), cdiv(C, BLOCK_C)).
    """
    part = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    start = part * ROWS
    end = tl.minimum(start + ROWS, P)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)  # summed across rows once, after the loop
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(x_ptr + p.to(tl.int64)[:, None] * C + c[None, :],
                       mask=(p < end)[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
    tl.store(out_ptr + part.to(tl.int64) * C + c, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=c_mask)


def column_sums(x, out=None, op: str = "column_sums"):
    """The sums over the rows of a contiguous [P, C] matrix x, as a (C,) tensor in x's dtype
    (or written into ``out``, a contiguous (C,) tensor), accumulated in fp32 in a fixed order:
    one launch over all rows when they are few, else one over parts of the rows and one adding
    the parts' fp32 sums. ``op`` names the launches for the profiler."""
    runtime.check_tensor(x, "x", ndim=2)
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous, got strides {x.stride()}")
    P, C = x.shape
    if out is None:
        out = runtime.empty((C,), x.dtype)
    if out.shape != (C,) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of shape ({C},), got {tuple(out.shape)}")
    if P == 0 or C == 0:
        return out.zero_()
    block_p, block_c = COLUMN_TILE
    col_tiles = runtime.cdiv(C, block_c)
    # ~4 programs per SM, each a whole number of tiles: the partition depends on the shape only
    if P <= ONE_PASS_TILES * block_p:
        parts = 1
    else:
        parts = 2 if runtime.INTERPRETED else max(1, runtime.cdiv(4 * runtime.sm_count(), col_tiles))
    rows = runtime.cdiv(runtime.cdiv(P, min(parts, runtime.cdiv(P, block_p))), block_p) * block_p
    parts = runtime.cdiv(P, rows)
    info = runtime.LaunchInfo(op, ((P, C),), x.dtype, flops=P * C,
                              bytes=P * C * x.element_size() + C * (out.element_size() if parts == 1 else parts * 4))
    consts = {"BLOCK_P": block_p, "BLOCK_C": block_c, **COLUMN_OPTIONS}
    if parts == 1:
        runtime.launch(column_sums_kernel, (1, col_tiles), (x, out, P, C, rows), consts, info)
        return out
    partials = runtime.empty((parts, C), torch.float32)
    runtime.launch(column_sums_kernel, (parts, col_tiles), (x, partials, P, C, rows), consts, info)
    runtime.launch(column_sums_kernel, (1, col_tiles), (partials, out, parts, C, parts), consts,
                   runtime.LaunchInfo(op + "_final", ((parts, C),), torch.float32, flops=parts * C,
                                      bytes=parts * C * 4 + C * out.element_size()))
    return out
