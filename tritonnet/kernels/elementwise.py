"""Elementwise kernels: the small arithmetic the tape and a training loop need."""
import triton
import triton.language as tl

from .. import runtime

# Under the interpreter one program costs ~1 ms whatever its size, so use few, large blocks there.
BLOCK = 16384 if runtime.INTERPRETED else 1024
# 16 warps for those large blocks keep the ahead-of-time sm_90 compile of the interpreter's
# specialisations quick (4 warps x 16K elements compiles ~10x slower); the interpreter ignores it.
OPTIONS = {"num_warps": 16} if runtime.INTERPRETED else {}


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
        runtime.launch(add_kernel, (runtime.cdiv(n, BLOCK),), (a, b, out, n), dict(OPTIONS, BLOCK=BLOCK),
                       runtime.LaunchInfo("add", (tuple(a.shape),), a.dtype, flops=n,
                                          bytes=3 * n * a.element_size()))
    return out


def _check_same(a, b, name_a="a", name_b="b"):
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"{name_a} and {name_b} must match in shape and dtype, got {tuple(a.shape)} "
                         f"{a.dtype} and {tuple(b.shape)} {b.dtype}")


def _grid(n):
    return (runtime.cdiv(n, BLOCK),)


@triton.jit
def axpby_kernel(a_ptr, b_ptr, out_ptr, n, alpha, beta, gamma, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = alpha * a[i] + beta * b[i] + gamma (the b term only with HAS_B), computed in fp32.

    a, b, out: contiguous, n elements, one float dtype; alpha, beta, gamma: fp32 runtime scalars.
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    value = alpha * tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
    if HAS_B:
        value += beta * tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    value += gamma
    tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)


def axpby(a, b=None, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.0):
    """alpha * a + beta * b + gamma (b optional): scalar multiply, subtract, negate, add a scalar."""
    runtime.check_tensor(a, "a")
    if b is not None:
        runtime.check_tensor(b, "b")
        _check_same(a, b)
        b = b.contiguous()
    a = a.contiguous()
    out = runtime.empty(a.shape, a.dtype)
    n = a.numel()
    if n:
        # Scalars go in as Python floats: runtime values, so a new value never recompiles.
        runtime.launch(axpby_kernel, _grid(n), (a, a if b is None else b, out, n, float(alpha), float(beta),
                                                float(gamma)),
                       dict(OPTIONS, HAS_B=b is not None, BLOCK=BLOCK),
                       runtime.LaunchInfo("axpby", (tuple(a.shape),), a.dtype, flops=(4 if b is not None else 2) * n,
                                          bytes=(3 if b is not None else 2) * n * a.element_size()))
    return out


@triton.jit
def scale_by_scalar_kernel(a_ptr, s_ptr, out_ptr, n, row_len, scale, HAS_A: tl.constexpr, PER_ROW: tl.constexpr,
                           BLOCK: tl.constexpr):
    """out[i] = a[i] * s[0] * scale, or s[0] * scale without HAS_A (a broadcast fill); with PER_ROW,
    out[r, j] = a[r, j] * s[r] * scale instead (a's rows of row_len elements scaled one by one).

    a, out: contiguous, n elements; s: one element (a gradient that stays on the device), or with
    PER_ROW contiguous (n // row_len,).
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    if PER_ROW:
        s = tl.load(s_ptr + offsets // row_len, mask=mask).to(tl.float32) * scale
    else:
        s = tl.load(s_ptr).to(tl.float32) * scale
    if HAS_A:
        value = tl.load(a_ptr + offsets, mask=mask).to(tl.float32) * s
    else:
        value = tl.zeros((BLOCK,), tl.float32) + s
    tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)


def scale_by_scalar(a, s, scale: float = 1.0, *, shape=None, dtype=None):
    """a * s * scale where s is a one-element tensor read on the device (no host sync).

    With ``a=None``, a tensor of ``shape``/``dtype`` filled with s * scale (the gradient of a sum).
    """
    runtime.check_tensor(s, "s")
    if s.numel() != 1:
        raise ValueError(f"s must have exactly one element, got shape {tuple(s.shape)}")
    if a is not None:
        runtime.check_tensor(a, "a")
        a = a.contiguous()
        shape, dtype = a.shape, a.dtype
    elif shape is None:
        raise ValueError("shape is required when a is None")
    return _scale(a, s, runtime.empty(shape, dtype or s.dtype), scale, per_row=False)


def scale_rows(a, s):
    """a (R, ...) with each row r multiplied by s[r] (s: R elements on the device); a's dtype."""
    runtime.check_tensor(a, "a")
    runtime.check_tensor(s, "s")
    if a.ndim < 1 or s.numel() != a.shape[0]:
        raise ValueError(f"s must have one element per row of a ({a.shape[0] if a.ndim else 0}), "
                         f"got shape {tuple(s.shape)}")
    return _scale(a.contiguous(), s.contiguous(), runtime.empty(a.shape, a.dtype), 1.0, per_row=True)


def _scale(a, s, out, scale, per_row):
    n = out.numel()
    if n:
        row_len = n // out.shape[0] if per_row else n
        runtime.launch(scale_by_scalar_kernel, _grid(n), (out if a is None else a, s, out, n, row_len, float(scale)),
                       dict(OPTIONS, HAS_A=a is not None, PER_ROW=per_row, BLOCK=BLOCK),
                       runtime.LaunchInfo("scale_rows" if per_row else "scale_by_scalar", (tuple(out.shape),),
                                          out.dtype, flops=2 * n if a is not None else n,
                                          bytes=(2 if a is not None else 1) * n * out.element_size()))
    return out


@triton.jit
def relu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[i] = max(x[i], 0), NaN propagated as torch does; x, out contiguous with n elements."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    # An explicit comparison, not tl.maximum: its NaN rule differs between triton versions. The
    # comparison is made in fp32: bf16 arithmetic is wrong under the interpreter.
    tl.store(out_ptr + offsets, tl.where(x.to(tl.float32) < 0, tl.zeros_like(x), x), mask=mask)


def relu(x):
    """max(x, 0) elementwise (a new, contiguous tensor)."""
    runtime.check_tensor(x, "x")
    x = x.contiguous()
    out = runtime.empty(x.shape, x.dtype)
    n = x.numel()
    if n:
        runtime.launch(relu_kernel, _grid(n), (x, out, n), dict(OPTIONS, BLOCK=BLOCK),
                       runtime.LaunchInfo("relu", (tuple(x.shape),), x.dtype, flops=n,
                                          bytes=2 * n * x.element_size()))
    return out


@triton.jit
def relu_backward_kernel(grad_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[i] = grad[i] where y[i] > 0 else 0 (torch's rule: zero where y <= 0), y = relu's output.

    grad, y, out: contiguous, n elements, one dtype.
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(grad_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, tl.where(y.to(tl.float32) <= 0, tl.zeros_like(g), g), mask=mask)


def relu_backward(grad, y):
    """The input gradient of relu from its output gradient and its saved output."""
    runtime.check_tensor(grad, "grad")
    runtime.check_tensor(y, "y")
    _check_same(grad, y, "grad", "y")
    grad, y = grad.contiguous(), y.contiguous()
    out = runtime.empty(grad.shape, grad.dtype)
    n = grad.numel()
    if n:
        runtime.launch(relu_backward_kernel, _grid(n), (grad, y, out, n), dict(OPTIONS, BLOCK=BLOCK),
                       runtime.LaunchInfo("relu_backward", (tuple(grad.shape),), grad.dtype, flops=n,
                                          bytes=3 * n * grad.element_size()))
    return out
