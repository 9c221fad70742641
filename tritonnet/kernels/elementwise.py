"""Elementwise kernels: the small arithmetic the tape and a training loop need."""
import triton
import triton.language as tl

from .. import runtime

# Under the interpreter one program costs ~1 ms whatever its size, so use few, large blocks there.
BLOCK = 16384 if runtime.INTERPRETED else 1024


@triton.jit
def add_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[i] = a[i] + b[i] for i < n; all three contiguous with n elements. Sum in fp32."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(out_ptr + offsets, (a + b).to(out_ptr.dtype.element_ty), mask=mask)


def add(a, b):
    """a + b for two float tensors of the same shape and dtype (a new, contiguous tensor)."""
    runtime.check_tensor(a, "a")
    runtime.check_tensor(b, "b")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must match in shape and dtype, got {tuple(a.shape)} {a.dtype} "
                         f"and {tuple(b.shape)} {b.dtype}")
    a, b = a.contiguous(), b.contiguous()
    out = runtime.empty(a.shape, a.dtype)
    n = a.numel()
    if n:
        runtime.launch(add_kernel, (triton.cdiv(n, BLOCK),), (a, b, out, n), {"BLOCK": BLOCK},
                       runtime.LaunchInfo("add", (tuple(a.shape),), a.dtype, flops=n,
                                          bytes=3 * n * a.element_size()))
    return out
