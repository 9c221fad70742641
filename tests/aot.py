"""Ahead-of-time compilation of every kernel specialisation the test suite launched, for the H100.

The interpreter accepts programs the real compiler rejects (plain globals, some shape rules), so
CI proves each launched specialisation compiles for ``sm_90``. A :class:`SpecRecorder` observes
``runtime.launch`` and notes each kernel's argument types and constexprs; ``compile_specs`` then
compiles them in subprocesses with the interpreter off (an interpreted kernel cannot be compiled).
A :class:`BackgroundCompiler` compiles specs while the tests run, so that the final check finds
most of them in Triton's cache (on a cold cache compiling dominates the suite's time).

Run as a script, it reads one JSON spec per line on stdin and prints one JSON result per spec.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

    def __init__(self, on_new=None):
        self.specs = {}
        self.on_new = on_new  # called with each spec the first time it is seen

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
        key = json.dumps(spec, sort_keys=True)
        if key not in self.specs:
            self.specs[key] = spec
            if self.on_new is not None:
                self.on_new(spec)
        return run()


def _jsonable(value):
    if hasattr(value, "value"):  # tl.constexpr
        value = value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _worker(*flags, **pipes) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *flags], stdin=subprocess.PIPE, text=True, cwd=_ROOT,
                            env=dict(os.environ, TRITON_INTERPRET="0"), **pipes)


def compile_specs(specs, jobs: int = 2, timeout: float = 600.0):
    """Compile specs for sm_90 in ``jobs`` subprocesses side by side; return the failure messages.

    Each worker takes the next spec when it has answered the last (one thread per worker), so a
    few slow kernels (a pool tile can take 5 s) do not leave one worker busy while the other idles.
    """
    specs = list(specs)
    if not specs:
        return []
    pending = queue.SimpleQueue()
    for spec in specs:
        pending.put(spec)
    procs = [_worker(stdout=subprocess.PIPE, stderr=tempfile.TemporaryFile(mode="w+"))
             for _ in range(min(jobs, len(specs)))]
    watchdog = threading.Timer(timeout, lambda: [proc.kill() for proc in procs])
    watchdog.start()

    def drive(proc):
        failures = []
        while True:
            try:
                spec = pending.get_nowait()
            except queue.Empty:
                break
            try:
                proc.stdin.write(json.dumps(spec) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except OSError:
                line = ""
            if not line:  # the worker died (or the watchdog killed it)
                proc.wait()
                proc.stderr.seek(0)
                return failures + [f"compiler subprocess exited {proc.returncode} at "
                                   f"{spec['module']}.{spec['kernel']}: {proc.stderr.read()[-3000:]}"]
            result = json.loads(line)
            if not result["ok"]:
                failures.append(f"{result['kernel']} {result['constexprs']}: {result['error']}")
        proc.stdin.close()
        proc.wait()
        return failures

    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            return [failure for failures in pool.map(drive, procs) for failure in failures]
    finally:
        watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


class BackgroundCompiler:
    """Compiles specs for sm_90 in one low-priority subprocess while the tests run.

    The interpreter keeps one core busy and leaves the other idle; this fills it. It only warms
    Triton's cache: the final ``compile_specs`` compiles every spec again and judges them, finding
    the ones compiled here cached. ``submit`` never blocks the test (a thread feeds the worker).
    """

    def __init__(self):
        self._specs = queue.SimpleQueue()
        self._proc = None
        self._feeder = None

    def submit(self, spec) -> None:
        if self._proc is None:
            self._proc = _worker("--nice", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._feeder = threading.Thread(target=self._feed, daemon=True)
            self._feeder.start()
        self._specs.put(spec)

    def _feed(self) -> None:
        while (spec := self._specs.get()) is not None:
            try:
                self._proc.stdin.write(json.dumps(spec) + "\n")
                self._proc.stdin.flush()
            except (OSError, ValueError):  # the worker was stopped
                return

    def stop(self) -> None:
        """Kill the worker (a compile cut short leaves nothing in the cache) and its feeder."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._specs.put(None)
        self._feeder.join(timeout=10)
        self._proc = self._feeder = None


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
    if "--nice" in sys.argv:  # the background warmer yields the CPU to the tests
        os.nice(10)
    for line in sys.stdin:
        spec = json.loads(line)
        try:
            _compile_one(spec)
            result = {"ok": True}
        except Exception as exc:  # report every failure, not just the first
            result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        result.update(kernel=f"{spec['module']}.{spec['kernel']}", constexprs=spec["constexprs"])
        print(json.dumps(result), flush=True)
