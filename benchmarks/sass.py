"""Compiler evidence without a GPU: compile a kernel for sm_90 exactly as a launcher specialises it
on the GPU (its tiles, num_warps, num_stages and the divisibility-by-16 attributes Triton derives
from real argument values), then summarise what ptxas made of it: registers, local memory,
shared memory, barriers, instruction count and the global/shared memory instructions by width.

Shared by ``pool_sass.py`` and ``conv_sass.py``. Uses Triton's own launcher binder
(``create_function_from_signature``, triton 3.6); nothing is launched. Run those scripts with
``TRITON_INTERPRET=0`` (they set it) and triton 3.6, the GPU machines' version.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature, find_paths_if, get_iterable_path  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


class FakeTensor:
    """What the launchers and the binder read from a tensor: shape, strides, dtype and a
    16-byte-aligned address (the caching allocator's); no memory."""

    device = "cuda"

    def __init__(self, dtype, shape=(), strides=None):
        self.dtype, self.shape = dtype, tuple(shape)
        if strides is None:
            strides, step = [], 1
            for d in reversed(self.shape):
                strides.insert(0, step)
                step *= d
        self._strides = tuple(strides)

    def data_ptr(self):
        return 1 << 20

    def stride(self, i=None):
        return self._strides if i is None else self._strides[i]

    def element_size(self):
        return torch.empty((), dtype=self.dtype).element_size()

    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def contiguous(self):
        return self

    def is_contiguous(self):
        return True

    def __getitem__(self, key):
        if isinstance(key, slice) and len(self.shape) == 1:  # a slice of a flat buffer keeps its length
            return FakeTensor(self.dtype, (len(range(*key.indices(self.shape[0]))),))
        return self

    def view(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return FakeTensor(self.dtype, shape) if shape else self  # (a contiguous view: new shape, same memory)

    def permute(self, *dims):
        return FakeTensor(self.dtype, [self.shape[d] for d in dims], [self._strides[d] for d in dims])

    def t(self):
        return self.permute(1, 0)

    def as_strided(self, shape, strides):
        return FakeTensor(self.dtype, shape, strides)


class Recorder:
    """A runtime.launch observer that keeps (kernel, args, constexprs) and launches nothing."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel, grid, args, constexprs, info, run):
        self.launches.append((kernel, args, dict(constexprs)))


@contextlib.contextmanager
def fake_device(runtime):
    """Launchers run their host logic on FakeTensors: argument checks pass them through and
    outputs are FakeTensors; every launch is recorded, none runs."""
    recorder = Recorder()
    real_check, real_empty, real_interpreted = runtime.check_tensor, runtime.empty, runtime.INTERPRETED
    runtime.check_tensor = lambda t, *a, **kw: t
    runtime.empty = lambda shape, dt, device=None: FakeTensor(dt, tuple(shape))
    runtime.INTERPRETED = False
    try:
        with runtime.observing(recorder):
            yield recorder
    finally:
        runtime.check_tensor, runtime.empty, runtime.INTERPRETED = real_check, real_empty, real_interpreted


def compile_like_runtime(jitfn, args, constexprs):
    binder = create_function_from_signature(jitfn.signature, jitfn.params, BACKEND)
    options = {k: v for k, v in constexprs.items() if k in ("num_warps", "num_stages", "maxnreg")}
    kwargs = {k: v for k, v in constexprs.items() if k not in options}
    bound, spec, _ = binder(*args, **kwargs)
    sigvals = [x[0] for x in spec]
    signature = dict(zip([p.name for p in jitfn.params], sigvals))
    consts = {p: get_iterable_path(list(bound.values()), p) for p in find_paths_if(sigvals, lambda _, v: v == "constexpr")}
    attrvals = [x[1] for x in spec]
    attrs = {k: BACKEND.parse_attr(get_iterable_path(attrvals, k))
             for k in find_paths_if(attrvals, lambda _, x: isinstance(x, str))}
    return triton.compile(ASTSource(jitfn, signature, consts, attrs), target=TARGET, options=options or None)


def summarize(name, compiled, dump=None):
    """Print one line of what ptxas made of ``compiled``; with ``dump``, keep its TTGIR, PTX and SASS there."""
    tools = os.path.join(BIN, "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        sass = subprocess.run([tools, "-sass", cubin], capture_output=True, text=True).stdout
        usage = subprocess.run([tools, "-res-usage", cubin], capture_output=True, text=True).stdout
        # ptxas says when it had to serialise the wgmma pipeline (each HGMMA waited for): a loss
        # the register and instruction counts do not show
        info = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", "-o", os.path.join(tmp, "k.o"), ptx],
                              capture_output=True, text=True).stderr
    if dump:
        os.makedirs(dump, exist_ok=True)
        for ext, text in (("ttgir", compiled.asm["ttgir"]), ("ptx", compiled.asm["ptx"]), ("sass", sass)):
            with open(os.path.join(dump, f"{name}.{ext}"), "w") as f:
                f.write(text)
    counts = {}
    for m in re.finditer(r"\b(LDGSTS|LDG|STG|LDS|STS|LDL|STL|HGMMA|HMMA)(\.[A-Z0-9.]+)?", sass):
        key = m.group(1) if m.group(1) in ("HGMMA", "HMMA") else m.group(0)
        counts[key] = counts.get(key, 0) + 1
    serialized = re.search(r"wgmma.mma_async instructions are serialized due to ([a-z ]+?)(?: in the function|$)", info)
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    mem = " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))
    instrs = len(re.findall(r"/\*[0-9a-f]{4,}\*/", sass))
    loop = hot_loop(sass)
    loop = f"loop {loop[0]:4d} instrs, {loop[1]} LDL/STL, {loop[2]} LDGSTS, {loop[3]} LDG" if loop else ""
    print(f"{name:34s} warps {compiled.metadata.num_warps:2d} regs {regs.group(1) if regs else '?':>3} "
          f"local {local.group(1) if local else '?':>4} smem {compiled.metadata.shared:6d} "
          f"bar {sass.count('BAR.SYNC'):2d} instrs {instrs:5d}  {loop}  {mem}"
          + (f"  WGMMA SERIALIZED: {serialized.group(1)}" if serialized else ""), flush=True)
    return sass


def hot_loop(sass: str, marker=("HGMMA", "HMMA", "FFMA")):
    """The innermost loop holding the dot (a backward branch whose body contains ``marker``
    instructions): (instructions, local loads + stores, cp.async copies, plain global loads) in it,
    or None when no such loop exists."""
    lines = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = None
    for addr, text in lines:
        m = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text) or re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        body = [t for a, t in lines if target <= a <= addr]
        if any(t.split()[0].lstrip("@!P0123456789T ").startswith(marker) or any(w.startswith(marker) for w in t.split())
               for t in body):
            if best is None or len(body) < len(best):
                best = body
    if best is None:
        return None
    words = [t.split() for t in best]
    count = lambda pred: sum(1 for w in words if any(pred(x) for x in w[:2]))  # noqa: E731
    return (len(best), count(lambda x: x.startswith(("LDL", "STL"))), count(lambda x: x.startswith("LDGSTS")),
            count(lambda x: x.startswith("LDG.") or x == "LDG"))
