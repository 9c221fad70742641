"""Reductions to a scalar: sum and mean, deterministic (fixed partition, no atomics)."""
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
