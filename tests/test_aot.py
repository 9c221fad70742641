"""The ahead-of-time check's own machinery (tests/aot.py): it must report what the real compiler
rejects, and its background worker must leave compiled kernels in Triton's cache."""
import time

import triton
import triton.language as tl

from aot import BackgroundCompiler, compile_specs

SCALE = 2  # a plain global: the interpreter reads it, the real compiler refuses it


@triton.jit
def _copy_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs))


@triton.jit
def _scaled_copy_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs) * SCALE)


def _spec(kernel, block):
    return {"module": __name__, "kernel": kernel, "constexprs": {"BLOCK": block}, "options": {"num_warps": 1},
            "signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}}


def test_compile_specs_reports_each_kernel_the_compiler_rejects():
    specs = [_spec("_copy_kernel", 32), _spec("_scaled_copy_kernel", 32), _spec("_copy_kernel", 64)]
    failures = compile_specs(specs, jobs=2)
    assert len(failures) == 1 and "_scaled_copy_kernel" in failures[0], failures
    assert compile_specs([specs[0], specs[2]], jobs=2) == []
    assert compile_specs([]) == []


def test_background_compiler_fills_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    background = BackgroundCompiler()
    background.submit(_spec("_copy_kernel", 128))
    try:
        deadline = time.monotonic() + 120
        while not any(p.suffix == ".cubin" for p in tmp_path.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        background.stop()
    assert any(p.suffix == ".cubin" for p in tmp_path.rglob("*")), "no kernel was compiled into the cache"
    background.stop()  # stopping twice is harmless
