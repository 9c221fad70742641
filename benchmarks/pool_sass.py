"""Compiler evidence for the max-pool kernels without a GPU: compile each kernel for sm_90 exactly
as the launcher specialises it on the GPU for the benchmark shapes (the GPU's tiles, num_warps and
the divisibility-by-16 attributes Triton derives from real argument values), then report what
ptxas made of it: registers, shared memory, global load/store widths, barriers, instruction count.

Usage: TRITON_INTERPRET=0 python3 benchmarks/pool_sass.py [--dump DIR]
(``--dump`` keeps the PTX and SASS of every specialisation). Uses Triton's own launcher binder
(``create_function_from_signature``), present in triton 3.6; nothing is launched.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature, find_paths_if, get_iterable_path  # noqa: E402

from tritonnet.kernels import pool as P  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
SHAPES = {"vgg": (256, 64, 32, 32), "lenet": (256, 6, 28, 28), "optable": (512, 64, 16, 16)}


class FakeTensor:
    """What the launcher binder reads from a tensor argument: its dtype and a 16-byte-aligned
    address (the caching allocator's), no memory."""

    def __init__(self, dtype, shape=(), strides=()):
        self.dtype, self.shape, self._strides = dtype, shape, strides

    def data_ptr(self):
        return 1 << 20

    def stride(self, i=None):
        return self._strides if i is None else self._strides[i]

    def element_size(self):
        return torch.empty((), dtype=self.dtype).element_size()

    device = "cuda"

    def contiguous(self):
        return self

    def is_contiguous(self):
        return True


class Recorder:
    """A runtime.launch observer that keeps (kernel, args, constexprs) and launches nothing."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel, grid, args, constexprs, info, run):
        self.launches.append((kernel, args, dict(constexprs)))


def compile_like_runtime(jitfn, args, constexprs):
    binder = create_function_from_signature(jitfn.signature, jitfn.params, BACKEND)
    options = {k: v for k, v in constexprs.items() if k in ("num_warps", "num_stages")}
    bound, spec, _ = binder(*args, **constexprs)
    sigvals = [x[0] for x in spec]
    signature = dict(zip([p.name for p in jitfn.params], sigvals))
    consts = {p: get_iterable_path(list(bound.values()), p) for p in find_paths_if(sigvals, lambda _, v: v == "constexpr")}
    attrvals = [x[1] for x in spec]
    attrs = {k: BACKEND.parse_attr(get_iterable_path(attrvals, k))
             for k in find_paths_if(attrvals, lambda _, x: isinstance(x, str))}
    return triton.compile(ASTSource(jitfn, signature, consts, attrs), target=TARGET, options=options or None)


def summarize(name, compiled, dump):
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", cubin], capture_output=True,
                               text=True).stdout
    if dump:
        os.makedirs(dump, exist_ok=True)
        for ext, text in (("ptx", compiled.asm["ptx"]), ("sass", sass)):
            with open(os.path.join(dump, f"{name}.{ext}"), "w") as f:
                f.write(text)
    counts = {}
    for m in re.finditer(r"\b(LDG|STG|LDS|STS|LDL|STL)(\.[A-Z0-9.]+)?", sass):
        counts[m.group(0)] = counts.get(m.group(0), 0) + 1
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    mem = " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))
    instrs = len(re.findall(r"/\*[0-9a-f]{4}\*/", sass))
    print(f"{name:34s} warps {compiled.metadata.num_warps:2d} regs {regs.group(1) if regs else '?':>3} "
          f"local {local.group(1) if local else '?':>2} smem {compiled.metadata.shared:5d} "
          f"bar {sass.count('BAR.SYNC'):2d} instrs {instrs:5d}  {mem}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", help="directory for each specialisation's PTX and SASS")
    args = parser.parse_args(argv)
    P._INTERPRETER_TILES = False  # the GPU's tiles and hints
    from tritonnet import runtime

    for shape_name, shape in SHAPES.items():
        for k in (2, 3):
            for dtype in (torch.float32, torch.bfloat16):
                n, c, h, w = shape
                x = FakeTensor(dtype, shape, (c * h * w, h * w, w, 1))
                recorder = Recorder()
                geo = P.pool_geometry(shape, k, 2)
                with runtime.observing(recorder):
                    _launch_all(x, geo, k, dtype)
                for kernel, kargs, constexprs in recorder.launches:
                    label = f"{kernel.__name__.replace('max_pool2d_', '').replace('_kernel', '')} {shape_name} " \
                            f"{k}x{k} {str(dtype)[6:]}"
                    summarize(label.replace(" ", "_"), compile_like_runtime(kernel, kargs, constexprs), args.dump)


def _launch_all(x, geo, k, dtype):
    """The launchers' own choices, recorded through runtime.launch (argument checks and output
    allocation bypassed: the fake tensors carry only what the launchers and the binder read)."""
    real_check, real_empty = P.runtime.check_tensor, P.runtime.empty
    P.runtime.check_tensor = lambda t, *a, **kw: t
    P.runtime.empty = lambda shape, dt, device=None: FakeTensor(dt, tuple(shape))
    try:
        P.max_pool2d_forward(x, k, 2)
        P.max_pool2d_backward(FakeTensor(dtype, geo.output_shape), FakeTensor(geo.argmax_dtype, geo.output_shape),
                              geo)
    finally:
        P.runtime.check_tensor, P.runtime.empty = real_check, real_empty


if __name__ == "__main__":
    main()
