"""Where kernels run: a CUDA GPU when there is one, otherwise Triton's interpreter on the CPU.

Triton decides between compiling and interpreting when a module defining a ``@triton.jit``
kernel is imported, so this module must be imported before any kernel module (``tritonnet``'s
``__init__`` does that). A user who sets ``TRITON_INTERPRET`` explicitly keeps their choice.

Everything kernels share at launch time lives here too: argument validation, output allocation
(optionally poisoned, so tests can prove every element was written) and the one launch path that
observers (the profiler, the ahead-of-time compile check) hook into.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

_USER_SET_INTERPRET = "TRITON_INTERPRET" in os.environ

import torch  # noqa: E402  (torch does not import triton eagerly)

# Triton 3.9 warns when this is unset; fused multiply-add stays on, as on earlier versions.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
if not _USER_SET_INTERPRET:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
if "triton" in sys.modules and not _USER_SET_INTERPRET:  # pragma: no cover - import-order guard
    import warnings

    warnings.warn("triton was imported before tritonnet.runtime; the interpreter switch may not apply")

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE: torch.device = torch.device("cpu" if INTERPRETED else "cuda")

if INTERPRETED and "OPENBLAS_NUM_THREADS" not in os.environ:
    # The interpreter runs every tl.dot as a small numpy matmul; BLAS worker threads only add
    # wake-up and contention costs at those sizes (a training step measured 3x faster on 2 cores).
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - scikit-learn (a dependency) brings threadpoolctl
        pass

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def device() -> torch.device:
    """The torch device tritonnet's tensors must live on: ``cuda`` or, under the interpreter, ``cpu``."""
    return DEVICE


@functools.lru_cache(maxsize=None)
def sm_count() -> int:
    """The GPU's streaming multiprocessors, which launchers size their grids by (GPU only)."""
    return torch.cuda.get_device_properties(device()).multi_processor_count


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream (never under the interpreter):
    nothing may wait for the device or query it then, and work launched is recorded, not run."""
    return not INTERPRETED and torch.cuda.is_current_stream_capturing()


def mode() -> str:
    """``"cuda"`` when kernels are compiled for the GPU, ``"interpreter"`` when Triton interprets them."""
    return "interpreter" if INTERPRETED else "cuda"


def describe() -> str:
    """One line for logs: mode, device name and versions."""
    import triton

    name = torch.cuda.get_device_name() if not INTERPRETED else "CPU (Triton interpreter)"
    return f"tritonnet on {name}: mode={mode()}, torch {torch.__version__}, triton {triton.__version__}"


# ----------------------------------------------------------------------------- float32 matmuls

_FLOAT32_MATMUL_PRECISION = "highest"


def set_float32_matmul_precision(precision: str) -> None:
    """``"highest"``: float32 dots in IEEE fp32 (the default). ``"high"``: allow TF32 tensor cores."""
    global _FLOAT32_MATMUL_PRECISION
    if precision not in ("highest", "high"):
        raise ValueError(f"precision must be 'highest' or 'high', got {precision!r}")
    _FLOAT32_MATMUL_PRECISION = precision


def get_float32_matmul_precision() -> str:
    return _FLOAT32_MATMUL_PRECISION


@contextlib.contextmanager
def float32_matmul_precision(precision: str):
    """``set_float32_matmul_precision(precision)`` inside the block, the previous setting after it."""
    previous = _FLOAT32_MATMUL_PRECISION
    set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        set_float32_matmul_precision(previous)


def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` a kernel's ``tl.dot`` should use for operands of ``dtype``."""
    if dtype == torch.float32 and _FLOAT32_MATMUL_PRECISION == "highest":
        return "ieee"
    return "tf32"


# ----------------------------------------------------------------------------- validation


def check_tensor(t, name: str, *, ndim=None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """Validate a kernel argument: a torch.Tensor on tritonnet's device with an allowed dtype.

    ``ndim`` is an int or a tuple of allowed ranks. Errors name the argument and what was expected.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    # is_cuda / is_cpu: a flag read, where t.device builds a torch.device object (every launch checks)
    if not (t.is_cuda if DEVICE.type == "cuda" else t.is_cpu):
        raise ValueError(
            f"{name} must be on device '{DEVICE.type}' (tritonnet runs in {mode()} mode), got '{t.device}'"
        )
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(f"{r}-D" for r in ranks)
            raise ValueError(f"{name} must be {want}, got {t.dim()}-D with shape {tuple(t.shape)}")
    return t


def pair(value, name: str) -> tuple:
    """An int, or a tuple/list of one or two ints (as torch accepts), as a pair of ints; anything
    else is a TypeError naming ``name``."""
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(items) in (1, 2) and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return (int(items[0]), int(items[-1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


# ----------------------------------------------------------------------------- output allocation

_POISON = False


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    """Fill every output tritonnet allocates with a poison value (NaN, or the dtype's max for
    integers) before the kernel runs, so a test comparing with torch sees any element left unwritten."""
    global _POISON
    previous, _POISON = _POISON, enabled
    try:
        yield
    finally:
        _POISON = previous


def set_poison_outputs(enabled: bool) -> None:
    global _POISON
    _POISON = bool(enabled)


def empty(shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Allocate a kernel output; poisoned when :func:`poisoned_outputs` is on."""
    out = torch.empty(shape, dtype=dtype, device=DEVICE if device is None else device)
    if _POISON:
        if dtype.is_floating_point:
            out.fill_(float("nan"))
        else:
            out.fill_(torch.iinfo(dtype).max)
    return out


# ----------------------------------------------------------------------------- the launch path


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints. Launchers use this rather than ``triton.cdiv``, a ConstexprFunction
    since triton 3.6 whose argument unwrapping costs ~1-4 us of host time per call."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1); plain Python, see :func:`cdiv`."""
    return 1 << max(0, int(n) - 1).bit_length()


_OBSERVERS: list = []


class LaunchInfo:
    """What a launcher knows about one launch, for observers: the op it serves, the shapes and
    dtype involved, and an analytic count of floating-point operations and minimum bytes moved.
    ``tensors``: tensors the kernel reaches through an address table rather than as arguments
    (multi-tensor optimizer updates), so observers such as the tests' bounds checker see them."""

    __slots__ = ("op", "shapes", "dtype", "flops", "bytes", "tensors")

    def __init__(self, op: str, shapes=(), dtype=None, flops: int = 0, bytes: int = 0, tensors=()):
        self.op, self.shapes, self.dtype, self.flops, self.bytes = op, shapes, dtype, flops, bytes
        self.tensors = tuple(tensors)


def launch(kernel, grid, args, constexprs=None, info: LaunchInfo | None = None):
    """Launch ``kernel[grid](*args, **constexprs)``, the one path every launcher goes through.

    With no observer this is a plain launch. Observers (``add_observer``) wrap it: each is called
    as ``observer(kernel, grid, args, constexprs, info, run)`` and must call ``run()`` once.
    """
    if not _OBSERVERS:
        return kernel[grid](*args, **constexprs) if constexprs else kernel[grid](*args)
    constexprs = constexprs or {}

    def run(i=0):
        if i == len(_OBSERVERS):
            return kernel[grid](*args, **constexprs)
        return _OBSERVERS[i](kernel, grid, args, constexprs, info, lambda: run(i + 1))

    return run()


def add_observer(observer) -> None:
    _OBSERVERS.append(observer)


def remove_observer(observer) -> None:
    _OBSERVERS.remove(observer)


@contextlib.contextmanager
def observing(observer):
    add_observer(observer)
    try:
        yield observer
    finally:
        remove_observer(observer)


# ----------------------------------------------------------------------------- deferred input checks
#
# Some bad input is only visible on the device (cross-entropy labels outside [0, C)): reading a
# count back at once would stop the host until the GPU has finished everything queued, in the
# middle of every training step (torch does not wait either: its CUDA kernels assert on the
# device, and the error surfaces at a later synchronisation). So on a GPU the count is copied to
# pinned host memory behind the kernel and checked once it has arrived: at the next check of
# the same kind, and at any read of a value through the tape (``Tensor.item()``, ``numpy()``),
# which waits for the device anyway. The kernels leave such input harmless meanwhile (no read
# out of bounds, zero loss and gradient for the bad rows). Under the interpreter nothing runs
# ahead of the host: the check is immediate.

_DEFERRED: list = []
# pinned host slots for the counts, reused once their count has been read: allocating pinned
# memory is a heavy driver call, not something to do in every training step
_PINNED_FREE: list = []


def check_later(count: torch.Tensor, make_error) -> None:
    """Raise ``make_error(n, deferred)`` if the 0-d integer tensor ``count`` holds n > 0, without
    waiting for the device: immediately under the interpreter, else once its value has reached the
    host (see above). Skipped while a CUDA graph is being captured (a replay is never checked)."""
    if INTERPRETED:
        n = int(count.item())
        if n:
            raise make_error(n, False)
        return
    if capturing():
        return
    for i, slot in enumerate(_PINNED_FREE):
        if slot.dtype == count.dtype:
            host = _PINNED_FREE.pop(i)
            break
    else:
        host = torch.empty((), dtype=count.dtype, pin_memory=True)
    host.copy_(count, non_blocking=True)
    arrived = torch.cuda.Event()
    arrived.record()
    _DEFERRED.append((host, arrived, make_error))


def raise_deferred(wait: bool = False) -> None:
    """Raise the error of the first deferred check (in call order) that found bad input, once
    its count has reached the host; with ``wait``, wait for every pending count first. Nothing
    while a CUDA graph is being captured: querying an event then would invalidate the capture."""
    global _DEFERRED
    if not _DEFERRED or capturing():
        return
    pending, error = [], None
    for entry in _DEFERRED:
        host, arrived, make_error = entry
        if wait:
            arrived.synchronize()
        elif not arrived.query():
            pending.append(entry)
            continue
        n = int(host.item())  # pinned host memory: no device synchronisation
        _PINNED_FREE.append(host)  # its copy has landed: the slot is free again
        if n and error is None:
            error = make_error(n, True)
    _DEFERRED = pending
    if error is not None:
        raise error
