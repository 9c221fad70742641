"""Timing core shared by every benchmark: medians of device-event timings, measured ceilings.

On a GPU, ``time_op`` times with CUDA events (``triton.testing.do_bench``), rotating between
several input sets so L2 does not flatter anyone, and reports p20/p50/p80 in milliseconds. Under
the interpreter it times wall clock, and every result carries ``"meaningful": False``.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import time

import torch

from . import runtime


def timing_is_meaningful() -> bool:
    return not runtime.INTERPRETED


def time_op(fn, inputs=None, warmup_ms: float = 25, rep_ms: float = 100, quantiles=(0.2, 0.5, 0.8)):
    """Time ``fn(*inputs[i])`` cycling over the input sets; return dict p20/p50/p80 in ms.

    ``inputs`` is a list of argument tuples (several copies of the data, rotated per call).
    """
    inputs = inputs or [()]
    state = {"i": 0}

    def call():
        args = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(*args)

    if runtime.INTERPRETED:
        call()  # first launch pays for the interpreter's set-up
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        p = [samples[0], samples[1], samples[2]]
    else:
        import triton.testing

        p = triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=list(quantiles))
    return {"p20": p[0], "p50": p[1], "p80": p[2]}


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbs() -> float:
    """Measured device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    n = (1 << 28) if not runtime.INTERPRETED else (1 << 20)
    src = torch.randn(n, device=runtime.device())
    dst = torch.empty_like(src)
    t = time_op(lambda: dst.copy_(src), warmup_ms=50, rep_ms=300)["p50"]
    return 2 * n * 4 / (t * 1e-3) / 1e9


@functools.lru_cache(maxsize=None)
def matmul_peak_tflops(dtype: torch.dtype = torch.bfloat16, tf32: bool = False) -> float:
    """Measured dense matmul rate through torch (cuBLAS) in TFLOP/s for ``dtype``."""
    n = 8192 if not runtime.INTERPRETED else 256
    a = torch.randn(n, n, device=runtime.device()).to(dtype)
    b = torch.randn(n, n, device=runtime.device()).to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        t = time_op(lambda: a @ b, warmup_ms=100, rep_ms=500)["p50"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / (t * 1e-3) / 1e12


def environment() -> dict:
    """Card, versions and commit, recorded with every result."""
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device": torch.cuda.get_device_name() if not runtime.INTERPRETED else "cpu-interpreter",
        "mode": runtime.mode(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "timings_meaningful": timing_is_meaningful(),
    }


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
