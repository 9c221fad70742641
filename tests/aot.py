"""Ahead-of-time compilation of every kernel specialisation the test suite launched, for the H100.

The interpreter accepts programs the real compiler rejects (plain globals, some shape rules), so
CI proves each launched specialisation compiles for ``sm_90``. A :class:`SpecRecorder` observes
``runtime.launch`` and notes each kernel's argument types and constexprs; ``compile_specs`` then
compiles them in a subprocess with the interpreter off (an interpreted kernel cannot be compiled).

Run as a script, it reads specs as JSON on stdin and prints one JSON result per spec.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_TORCH_TO_TRITON = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64",
    "torch.uint8": "u8", "torch.int8": "i8", "torch.int16": "i16", "torch.int32": "i32",
    "torch.int64": "i64", "torch.bool": "i1",
}
# Launch options that are not kernel arguments.
_OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _arg_type(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(value.dtype)]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot derive a triton type for {type(value).__name__}")


class SpecRecorder:
    """A ``runtime.launch`` observer that collects unique (kernel, signature, constexprs) specs."""

    def __init__(self):
        self.specs = {}

    def __call__(self, kernel, grid, args, constexprs, info, run):
        names = list(kernel.arg_names)
        python_fn = kernel
        while hasattr(python_fn, "fn"):  # Autotuner -> JITFunction/InterpretedFunction -> function
            python_fn = python_fn.fn
        signature, consts, options = {}, {}, {}
        for name, value in zip(names, args):
            signature[name] = _arg_type(value)
        for key, value in constexprs.items():
            if key in _OPTION_NAMES:
                options[key] = value
            else:
                signature[key] = "constexpr"
                consts[key] = value
        for name in names:  # defaulted constexprs the launcher did not pass
            signature.setdefault(name, "constexpr")
        spec = {"module": python_fn.__module__, "kernel": python_fn.__name__, "signature": signature,
                "constexprs": {k: _jsonable(v) for k, v in consts.items()}, "options": options}
        self.specs.setdefault(json.dumps(spec, sort_keys=True), spec)
        return run()


def _jsonable(value):
    if hasattr(value, "value"):  # tl.constexpr
        value = value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def compile_specs(specs, jobs: int = 2, timeout: float = 600.0):
    """Compile specs for sm_90 in ``jobs`` subprocesses; return a list of failure messages."""
    specs = list(specs)
    env = dict(os.environ, TRITON_INTERPRET="0")
    chunks = [specs[i::jobs] for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
             for chunk in chunks if chunk]
    failures = []
    for proc, chunk in zip(procs, [c for c in chunks if c]):
        out, err = proc.communicate(json.dumps(chunk), timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"compiler subprocess exited {proc.returncode}: {err[-3000:]}")
            continue
        for line in out.splitlines():
            result = json.loads(line)
            if not result["ok"]:
                failures.append(f"{result['kernel']} {result['constexprs']}: {result['error']}")
    return failures


def _compile_one(spec):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    while not hasattr(fn, "cache_key"):  # unwrap an Autotuner to its JITFunction
        fn = fn.fn
    src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"])
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=spec["options"] or None)
    return compiled


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    for spec in json.loads(sys.stdin.read()):
        try:
            _compile_one(spec)
            result = {"ok": True}
        except Exception as exc:  # report every failure, not just the first
            result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        result.update(kernel=f"{spec['module']}.{spec['kernel']}", constexprs=spec["constexprs"])
        print(json.dumps(result), flush=True)
