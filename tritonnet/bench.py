"""Timing core shared by every benchmark: medians of device-event timings, measured ceilings.

On a GPU, ``time_op`` times each call with a pair of CUDA events, L2 flushed before it and the
input sets rotated so caches do not flatter anyone, and reports p20/p50/p80 in milliseconds.
Each call is queued behind a head start of GPU work longer than the host needs to launch it, so
the events time the GPU's work, not the host's launch calls: small ops and small nets' steps are
launch-bound, and triton's ``do_bench`` (events right after the flush) timed torch's launch path
against ours as much as the kernels. The user-visible time, launches included, is a separate
measurement (``workloads.wall_ms_per_call``). Under the interpreter it times wall clock, and every
result carries ``"meaningful": False``.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
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
    elif not hasattr(torch.cuda, "_sleep"):  # no spin kernel in this torch build: events after the flush
        import triton.testing

        p = triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=list(quantiles))
    else:
        p = _queued_device_ms(call, warmup_ms, rep_ms, quantiles)
    return {"p20": p[0], "p50": p[1], "p80": p[2]}


_FLUSH: dict = {}
KERNEL_TIMING = "queued behind a head start"
TORCH_CHANNELS_LAST = "torch channels_last"  # torch eager with the model and the batch channels-last
TRITONNET_NCHW = "tritonnet+graph NCHW"  # tritonnet's graphed step with its channels-last default turned off
# extra step columns, run only where tritonnet's network is channels-last: the layout comparison
LAYOUT_IMPLS = (TORCH_CHANNELS_LAST, TRITONNET_NCHW)


def _queued_device_ms(call, warmup_ms, rep_ms, quantiles):
    """Quantiles of ``call``'s device time (ms): per call, flush L2 (a 256 MB write, as do_bench
    does), queue a head start (``profile.keep_gpu_busy``) of twice the host's time for one call,
    then the call between two events. If more than a tenth of the calls still found the GPU idle
    when their launches returned (the host was slower than measured), measure again with a
    four times longer head start."""
    from .profile import keep_gpu_busy

    if "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(64 * 2**20, dtype=torch.int32, device=runtime.device())
    flush = _FLUSH["buf"]
    call()
    torch.cuda.synchronize()
    t = time.perf_counter()
    call()
    host_ms = (time.perf_counter() - t) * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        call()
    end.record()
    end.synchronize()
    per_call_ms = max(start.elapsed_time(end) / 5, 1e-3)  # flush included, host-bound or not
    head_ms = 2 * host_ms + 0.02
    for _ in range(2):
        per_rep_ms = per_call_ms + head_ms
        for _ in range(max(1, int(warmup_ms / per_rep_ms))):
            call()
        reps = max(5, min(1000, int(rep_ms / per_rep_ms)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        idle = 0
        for i in range(reps):
            flush.zero_()
            keep_gpu_busy(head_ms)
            starts[i].record()
            call()
            idle += starts[i].query()
            ends[i].record()
        torch.cuda.synchronize()
        if idle <= reps // 10:
            break
        head_ms *= 4
    times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=torch.float64)
    return [float(v) for v in torch.quantile(times, torch.tensor(list(quantiles), dtype=torch.float64))]


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

    # A copied working tree (the GPU check's) has no .git: the caller passes the commit instead.
    commit = os.environ.get("TRITONNET_COMMIT", "")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
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
        # how kernel times were taken; results without it (before 2026-11-27, night) used
        # triton's do_bench, whose events could include the host's launch calls
        "kernel_timing": KERNEL_TIMING,
    }


def script_parser(doc: str, name: str, quick_help: str):
    """The command line every ``benchmarks/bench_<name>.py`` shares: ``--out DIR`` (where
    ``bench_<name>.json`` goes) and ``--quick``; scripts add their own options to it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0])
    parser.add_argument("--out", required=True, help=f"directory for bench_{name}.json")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def announce_mode(name: str) -> bool:
    """Say, under the interpreter, that this is a smoke run whose timings mean nothing; return
    whether it is one."""
    if runtime.INTERPRETED:
        print(f"bench_{name}: running under Triton's interpreter (no GPU): a smoke run on tiny shapes; "
              "its timings mean nothing.", flush=True)
    return runtime.INTERPRETED


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


# ============================================================================= `tritonnet bench`
#
# The op suite and whole training steps, tritonnet against torch eager (cuDNN/cuBLAS) and
# torch.compile on the same inputs in the same process. Two views of time, both reported: kernel
# time (``time_op``: CUDA events around each call, L2 cleared in between, p20/p50/p80) and the wall
# time a user sees per call, Python and launch overhead included (``wall_ms_per_call``). Each op's
# floor comes from its launches' analytic FLOPs and minimum bytes (recorded by the profiler) against
# this device's measured peaks. torch.compile runs after the eager measurements of each section,
# inside a time budget, so a slow compiler costs rows, not the whole run; its compile time and its
# failures are recorded too.

ALL_DTYPES = ("fp32", "tf32", "bf16")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


class Skip(Exception):
    """An op or step that cannot run here (an op not built yet, a failed capture): recorded, not fatal."""


def _functional():
    from . import functional as F

    return F


def _need(module, name):
    fn = getattr(module, name, None)
    if fn is None:
        raise Skip(f"{module.__name__}.{name} is not available yet")
    return fn


def _rand(shape, dtype, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen).to(runtime.device(), dtype)
    return t.requires_grad_(requires_grad) if requires_grad else t


def _labels(n, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=gen).to(runtime.device())


def _backward_of(out):
    """The backward closure the tape recorded for ``out`` (re-callable: only ``Tensor.backward``
    frees it), so a backward kernel can be timed alone, without its forward."""
    node = getattr(out, "_node", None)
    if node is None or node.backward_fn is None:
        raise Skip("the op recorded no backward on the tape")
    return node.backward_fn


def _tn(data, requires_grad=False):
    from .tape import Tensor

    return Tensor(data.detach(), requires_grad=requires_grad)


def _torch_conv_backward(g, x, w, has_bias, padding, mask):
    return torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]] if has_bias else None, [1, 1],
                                               [padding, padding], [1, 1], False, [0, 0], 1, mask)


def _op_cases(quick: bool):
    """(name, shape text, builder) for each op; ``builder(impl, dtype, seed)`` returns ``(fn, args)``
    with ``fn(*args)`` one timed call. Shapes are layers of the benchmarked nets (VGG-style CIFAR
    net at batch 512, LeNet-5 at batch 256)."""
    if quick:
        pool_x, conv_x, conv_w, lenet_x, lenet_w, lin, ce = ((2, 3, 8, 8), (2, 3, 8, 8), (4, 3, 3, 3),
                                                              (2, 1, 12, 12), (3, 1, 5, 5), (4, 32, 16), (4, 10))
    else:
        pool_x, conv_x, conv_w, lenet_x, lenet_w, lin, ce = ((512, 64, 16, 16), (512, 32, 16, 16), (64, 32, 3, 3),
                                                              (256, 1, 28, 28), (6, 1, 5, 5), (512, 2048, 256),
                                                              (512, 10))
    tnn = torch.nn.functional
    aten = torch.ops.aten

    def pool_fwd(impl, dtype, seed):
        x = _rand(pool_x, dtype, seed, requires_grad=True)
        if impl == "tritonnet":
            return _need(_functional(), "max_pool2d"), (_tn(x, True), 2)
        return (lambda x: tnn.max_pool2d(x, 2)), (x,)

    def pool_bwd(impl, dtype, seed):
        x = _rand(pool_x, dtype, seed, requires_grad=True)
        if impl == "tritonnet":
            y = _need(_functional(), "max_pool2d")(_tn(x, True), 2)
            return _backward_of(y), (_rand(tuple(y.shape), dtype, seed + 1),)
        with torch.no_grad():
            y, idx = aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
        g = _rand(tuple(y.shape), dtype, seed + 1)
        return (lambda g, x, idx: aten.max_pool2d_with_indices_backward(g, x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                        False, idx)), (g, x.detach(), idx)

    def conv_inputs(dtype, seed, xs, ws):
        return _rand(xs, dtype, seed), _rand(ws, dtype, seed + 1) * 0.2, _rand((ws[0],), dtype, seed + 2)

    def conv_fwd(xs, ws, activation, pool=False):
        """The conv's forward (+ activation; with ``pool``, then a 2x2 max pool: one kernel of ours)."""
        padding = ws[-1] // 2

        def build(impl, dtype, seed):
            x, w, b = conv_inputs(dtype, seed, xs, ws)
            if impl == "tritonnet":
                conv = _need(_functional(), "conv2d_max_pool2d" if pool else "conv2d")
                return (lambda x, w, b: conv(x, w, b, padding=padding, activation=activation)), \
                    (_tn(x, True), _tn(w, True), _tn(b, True))
            x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)

            def torch_conv(x, w, b):
                y = tnn.conv2d(x, w, b, padding=padding)
                y = torch.relu(y) if activation == "relu" else y
                return tnn.max_pool2d(y, 2) if pool else y
            return torch_conv, (x, w, b)
        return build

    def conv_bwd(which, activation=None):
        padding = conv_w[-1] // 2
        need = {"dgrad": (True, False, False), "wgrad": (False, True, True), "all": (True, True, True)}[which]

        def build(impl, dtype, seed):
            x, w, b = conv_inputs(dtype, seed, conv_x, conv_w)
            if impl == "tritonnet":
                conv = _need(_functional(), "conv2d")
                y = conv(_tn(x, need[0]), _tn(w, need[1]), _tn(b, need[2]), padding=padding, activation=activation)
                return _backward_of(y), (_rand(tuple(y.shape), dtype, seed + 3),)
            with torch.no_grad():
                y = tnn.conv2d(x, w, b, padding=padding)
                if activation == "relu":
                    y = torch.relu(y)
            g = _rand(tuple(y.shape), dtype, seed + 3)
            if activation == "relu":
                return (lambda g, y, x, w: _torch_conv_backward(aten.threshold_backward(g, y, 0), x, w, True,
                                                                padding, list(need))), (g, y, x, w)
            return (lambda g, x, w: _torch_conv_backward(g, x, w, need[2], padding, list(need))), (g, x, w)
        return build

    def linear_fwd(impl, dtype, seed):
        n, k, m = lin
        x, w, b = _rand((n, k), dtype, seed), _rand((m, k), dtype, seed + 1) * 0.05, _rand((m,), dtype, seed + 2)
        if impl == "tritonnet":
            linear = _need(_functional(), "linear")
            return (lambda x, w, b: linear(x, w, b, activation="relu")), (_tn(x, True), _tn(w, True), _tn(b, True))
        x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
        return (lambda x, w, b: torch.relu(tnn.linear(x, w, b))), (x, w, b)

    def linear_bwd(impl, dtype, seed):
        n, k, m = lin
        x, w, b = _rand((n, k), dtype, seed), _rand((m, k), dtype, seed + 1) * 0.05, _rand((m,), dtype, seed + 2)
        g = _rand((n, m), dtype, seed + 3)
        if impl == "tritonnet":
            y = _need(_functional(), "linear")(_tn(x, True), _tn(w, True), _tn(b, True))
            return _backward_of(y), (g,)
        return (lambda g, x, w: (g @ w, g.t() @ x, g.sum(0))), (g, x, w)

    def cross_entropy(impl, dtype, seed):
        logits, y = _rand(ce, dtype, seed, requires_grad=True), _labels(ce[0], ce[1], seed + 1)
        if impl == "tritonnet":
            loss_fn = _need(_functional(), "cross_entropy")

            def fwd_bwd(logits, y):
                loss = loss_fn(logits, y)
                return _backward_of(loss)(torch.ones((), dtype=dtype, device=runtime.device()))
            return fwd_bwd, (_tn(logits, True), y)

        # torch.compile cannot trace torch.autograd.grad; compiling the loss lets AOTAutograd compile
        # its forward and backward, which is what a compiled training step gets
        loss_fn = compiled(tnn.cross_entropy) if impl == "torch.compile" else tnn.cross_entropy

        def torch_fwd_bwd(logits, y):
            return torch.autograd.grad(loss_fn(logits, y), logits)
        torch_fwd_bwd.compiled = impl == "torch.compile"
        return torch_fwd_bwd, (logits, y)

    shape = lambda s: "x".join(map(str, s))  # noqa: E731
    conv_shape = f"{shape(conv_x)} * {shape(conv_w)}"
    lenet_shape = f"{shape(lenet_x)} * {shape(lenet_w)}"
    return [
        ("max_pool2d fwd", f"{shape(pool_x)} k2", pool_fwd),
        ("max_pool2d bwd", f"{shape(pool_x)} k2", pool_bwd),
        ("conv2d fwd", conv_shape, conv_fwd(conv_x, conv_w, None)),
        ("conv2d fwd +bias+relu", conv_shape, conv_fwd(conv_x, conv_w, "relu")),
        ("conv2d fwd +bias+relu+maxpool2", conv_shape, conv_fwd(conv_x, conv_w, "relu", pool=True)),
        ("conv2d fwd +bias+relu (LeNet conv1)", lenet_shape, conv_fwd(lenet_x, lenet_w, "relu")),
        ("conv2d dgrad", conv_shape, conv_bwd("dgrad")),
        ("conv2d wgrad (+bias grad)", conv_shape, conv_bwd("wgrad")),
        ("conv2d bwd relu-fused (dgrad+wgrad)", conv_shape, conv_bwd("all", "relu")),
        ("linear fwd +bias+relu", f"{lin[0]}x{lin[1]} -> {lin[2]}", linear_fwd),
        ("linear bwd", f"{lin[0]}x{lin[1]} -> {lin[2]}", linear_bwd),
        ("cross_entropy fwd+bwd", shape(ce), cross_entropy),
    ]


class _Budget:
    def __init__(self, seconds):
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return self.seconds - self.elapsed()


def _error(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def _measure(call, timed=None, timed_args=None, rep_ms=40.0):
    """Time ``call()`` (which rotates its inputs itself): first-call seconds (JIT compiles, and all
    of torch.compile's compiling, land there), kernel-time quantiles and user-visible wall time.

    ``timed(*args)`` over ``timed_args`` is what ``time_op`` rotates through (defaults to ``call``).
    Under the interpreter a couple of calls stand in for the quantiles: the numbers mean nothing
    there and every call costs the interpreter's time.
    """
    from .workloads import synchronize, wall_ms_per_call

    t = time.perf_counter()
    first = call()
    synchronize()
    result = {"first_call_s": time.perf_counter() - t}
    if runtime.INTERPRETED:
        samples = []
        for _ in range(2):
            t = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t) * 1e3)
        samples.sort()
        result.update(p20=samples[0], p50=sum(samples) / 2, p80=samples[-1], wall_ms=sum(samples) / 2)
    else:
        if timed is None:
            result.update(time_op(call, warmup_ms=10, rep_ms=rep_ms))
        else:
            result.update(time_op(timed, timed_args, warmup_ms=10, rep_ms=rep_ms))
        result["wall_ms"] = wall_ms_per_call(call, reps=30, warmup=3)
    return result, first


def _rotating(fn, args_sets):
    state = {"i": 0}

    def call():
        args = args_sets[state["i"] % len(args_sets)]
        state["i"] += 1
        return fn(*args)
    return call


def _floor_of(fn, args, peaks):
    """Launch count, FLOPs, bytes and the roofline floor of one tritonnet call, from its launches."""
    from .profile import Profiler, roofline_ms

    with Profiler(peaks=peaks) as prof:
        fn(*args)
    floor = 0.0
    for launch in prof.launches:
        floor += roofline_ms(launch.flops, launch.bytes, launch.dtype, launch.precision, peaks) or 0.0
    return {"launches": len(prof.launches), "flops": sum(l.flops for l in prof.launches),
            "bytes": sum(l.bytes for l in prof.launches), "floor_ms": floor if peaks else None,
            "kernels": sorted({l.kernel for l in prof.launches})}


def compiled(fn):
    """``torch.compile`` with static shapes (every benchmarked shape is fixed) and room for one
    compiled graph per shape and dtype of a shared function."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(fn, dynamic=False)


def _run_op(row, builder, impl, quick, peaks):
    from .workloads import DTYPES, precision

    dtype_name = row["dtype"]
    try:
        with precision(dtype_name):
            sets = []
            for s in range(2 if quick else 3):
                fn, args = builder(impl, DTYPES[dtype_name], 100 * s)
                sets.append(args)
            if impl == "torch.compile" and not getattr(fn, "compiled", False):
                fn = compiled(fn)
            result, _ = _measure(_rotating(fn, sets), fn, sets, rep_ms=10 if quick else 40)
            if impl == "tritonnet":
                row.update(_floor_of(fn, sets[0], peaks))
        row["impls"][impl] = result
    except Skip as exc:
        row["impls"][impl] = {"skipped": str(exc)}
    except Exception as exc:  # one broken op (or compiler) must not sink the suite
        row["impls"][impl] = {"error": _error(exc)}


def _run_step(row, impl, quick, peaks):
    from .profile import Profiler, head_start_for
    from .workloads import build_step

    try:
        t = time.perf_counter()
        graphed = impl in ("tritonnet+graph", TRITONNET_NCHW)
        step = build_step(row["model"], row["batch"], row["dtype"], impl="torch.compile" if impl == "torch.compile"
                          else ("torch" if impl.startswith("torch") else "tritonnet"),
                          cuda_graph=graphed, n_batches=2 if quick else 4,
                          channels_last={TORCH_CHANNELS_LAST: True, TRITONNET_NCHW: False}.get(impl))
        if graphed and step.graph is None:
            row["impls"][impl] = {"skipped": f"CUDA graph: {step.graph_error}"}
            return
        build_s = time.perf_counter() - t
        result, loss = _measure(step, rep_ms=10 if quick else 100)
        result["first_call_s"] += build_s
        # the first step's loss: same weights and batch for tritonnet, torch and torch.compile (a
        # graphed step's first replay comes after its warm-up steps, so it differs)
        result["first_loss"] = float(loss.data if hasattr(loss, "_node") else loss.detach())
        if impl == "tritonnet":  # where a step's time goes: GPU time inside kernels vs. the rest
            with Profiler(peaks=peaks, head_start_ms=head_start_for(result["wall_ms"])) as prof:
                step()
            result["launches"] = len(prof.launches)
            result["kernel_sum_ms"] = sum(l.ms for l in prof.launches)
            result["kernel_idle_launches"] = prof.idle_launches
            result["top_kernels"] = [
                {k: r[k] for k in ("op", "kernel", "dtype", "count", "total_ms", "roofline_pct")}
                for r in prof.summary()[:6]]
        row["impls"][impl] = result
    except Skip as exc:
        row["impls"][impl] = {"skipped": str(exc)}
    except ImportError as exc:  # a module another engineer is still writing
        row["impls"][impl] = {"skipped": f"not available yet: {_error(exc)}"}
    except Exception as exc:
        row["impls"][impl] = {"error": _error(exc)}


def _ratios(row):
    impls = row["impls"]

    def ms(name, key):
        r = impls.get(name) or {}
        return r.get(key)

    key = "wall_ms" if row["kind"] == "step" else "p50"
    ours = [v for v in (ms("tritonnet", key), ms("tritonnet+graph", key)) if v]
    best = min(ours) if ours else None
    row["tritonnet_best_ms"] = best
    for other, name in (("torch", "x_vs_torch"), ("torch.compile", "x_vs_compile"),
                        (TORCH_CHANNELS_LAST, "x_vs_torch_channels_last")):
        theirs = ms(other, key)
        row[name] = theirs / best if best and theirs else None
    nchw, torch_ms = ms(TRITONNET_NCHW, key), ms("torch", key)
    if nchw and torch_ms:
        row["x_vs_torch_nchw_network"] = torch_ms / nchw
    if row["kind"] == "op" and row.get("floor_ms") and ms("tritonnet", "p50"):
        row["pct_of_floor"] = 100.0 * row["floor_ms"] / ms("tritonnet", "p50")


def _warm(items, quick=False) -> int:
    """Run each tritonnet item once (a training step, or an op in a dtype) so every kernel it
    launches is compiled into Triton's on-disk cache; returns how many ran. Failures are ignored:
    the measuring process meets and records them itself."""
    from .workloads import DTYPES, build_step, precision, synchronize

    cases = _op_cases(quick)
    done = 0
    for item in items:
        try:
            if item[0] == "step":
                _, model, batch, dtype_name, *layout = item  # layout: [channels_last], or [] for the default
                build_step(model, batch, dtype_name, impl="tritonnet", cuda_graph=False, n_batches=1,
                           channels_last=layout[0] if layout else None)()
            else:
                _, index, dtype_name = item
                with precision(dtype_name):
                    fn, args = cases[index][2]("tritonnet", DTYPES[dtype_name], 0)
                    fn(*args)
            synchronize()
            done += 1
        except Exception:  # noqa: BLE001 - see the docstring
            pass
    return done


def precompile(items, workers: int, timeout_s: float, quick=False) -> str:
    """Compile the kernels ``items`` need in ``workers`` parallel processes before measuring.

    Triton compiles one kernel specialisation at a time, a second or more each, and the suite
    needs dozens (every kernel x tile config x dtype); the measuring process then finds them all
    in Triton's on-disk cache. Returns a one-line account for the results' notes.
    """
    import subprocess

    start = time.perf_counter()
    groups = [items[i::workers] for i in range(workers) if items[i::workers]]
    procs = [subprocess.Popen([sys.executable, "-m", "tritonnet", "bench", "--warm", json.dumps(g)]
                              + (["--quick"] if quick else []),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
             for g in groups]
    failed = 0
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        failed += proc.returncode != 0
    return (f"precompiled {len(items)} items' kernels in {len(groups)} processes in "
            f"{time.perf_counter() - start:.0f} s ({failed} failed; their kernels compile on first use instead)")


COMPILE_RESERVE_S = 25.0
TARGETS = {"lenet": 1.5, "vgg": 1.0}  # required step speed-up over torch eager (issue 5)


def run_suite(quick=False, dtypes=None, models=None, cuda_graph=True, compile=True, ops=True, steps=True,
              budget_s=None, progress=print, on_phase=None, precompile_workers=None):
    """Run the benchmark; return the results dict (see ``write_outputs``)."""
    from .workloads import MODELS, channels_last_by_default, default_batch

    dtypes = list(dtypes or (("fp32",) if quick else ALL_DTYPES))
    models = list(models or (("digits",) if quick else ("lenet", "vgg")))
    budget = _Budget(budget_s if budget_s is not None else (60 if quick else 170))
    peaks = None
    if not runtime.INTERPRETED:
        from .profile import device_peaks

        peaks = device_peaks()
    results = {"environment": environment(), "quick": quick, "meaningful": timing_is_meaningful(), "peaks": peaks,
               "budget_s": budget.seconds, "rows": [], "notes": []}
    if not timing_is_meaningful():
        results["notes"].append("Triton interpreter on a CPU: these timings mean nothing about GPU performance; "
                                "this run only proves the benchmark works end to end.")
    if quick:
        results["notes"].append("--quick: tiny shapes and few repetitions.")
    rows = results["rows"]
    op_rows = []
    if ops:
        for name, shape, builder in _op_cases(quick):
            for dtype_name in dtypes:
                row = {"kind": "op", "name": name, "shape": shape, "dtype": dtype_name, "impls": {}}
                op_rows.append((row, builder))
                rows.append(row)
    step_rows = []
    if steps:
        for model in models:
            batch = 2 if quick and runtime.INTERPRETED else default_batch(model)
            for dtype_name in dtypes:
                row = {"kind": "step", "name": f"train step {model}", "model": model, "batch": batch,
                       "shape": f"batch {batch} x {'x'.join(map(str, MODELS[model][1]))}", "dtype": dtype_name,
                       "tritonnet_channels_last": channels_last_by_default(model), "impls": {}}
                step_rows.append(row)
                rows.append(row)

    def over_budget(row, impl):
        # a torch.compile run is only started with room left for a typical compile
        if budget.left() > (COMPILE_RESERVE_S if impl == "torch.compile" and not quick else 0):
            return False
        row["impls"][impl] = {"skipped": f"outside the {budget.seconds:.0f} s time budget (--budget-s)"}
        return True

    # The steps first (the headline), each against torch eager, then torch.compile on them; then the
    # ops likewise. torch.compile's compile time is the unpredictable part: the budget check before
    # every measurement turns whatever no longer fits into a recorded skip.
    compile_skip = None if compile else "disabled (--no-compile)"
    if compile and quick:
        compile_skip = "skipped in --quick (compiling takes longer than the whole smoke run)"

    def run_all(items, impls, run):
        for item in items:
            row = item[0] if isinstance(item, tuple) else item
            for impl in impls:
                # torch in channels-last beside tritonnet's channels-last networks only (the target
                # stays torch's default, NCHW; where tritonnet runs NCHW that is the like for like)
                if impl in LAYOUT_IMPLS and not row.get("tritonnet_channels_last"):
                    continue
                if impl == "torch.compile" and compile_skip:
                    row["impls"][impl] = {"skipped": compile_skip}
                elif not over_budget(row, impl):
                    progress(f"[{budget.elapsed():6.1f}s] {row['name']} {row['dtype']} {impl}")
                    run(item, impl)
        if on_phase:
            for row in rows:
                _ratios(row)
            on_phase(results)

    if precompile_workers is None:
        precompile_workers = 0 if runtime.INTERPRETED or quick else min(8, max(1, (os.cpu_count() or 2) // 2))
    if precompile_workers > 0:
        items = [("step", r["model"], r["batch"], r["dtype"]) for r in step_rows]
        items += [("step", r["model"], r["batch"], r["dtype"], False) for r in step_rows
                  if cuda_graph and r["tritonnet_channels_last"]]  # the NCHW network's own kernels
        cases = [c[0] for c in _op_cases(quick)]
        items += [("op", cases.index(r["name"]), r["dtype"]) for r, _ in op_rows]
        progress(f"[{budget.elapsed():6.1f}s] precompiling kernels in {precompile_workers} processes")
        try:
            note = precompile(items, precompile_workers, timeout_s=min(120.0, budget.left() / 2), quick=quick)
        except Exception as exc:  # the measurements compile on first use anyway
            note = f"precompile failed: {_error(exc)}"
        progress(f"[{budget.elapsed():6.1f}s] {note}")
        results["notes"].append(note)

    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # cuDNN's best algorithm for each shape: the fair opponent
    try:
        step_impls = ["tritonnet"] + (["tritonnet+graph"] if cuda_graph else []) + ["torch"]
        run_step = lambda row, impl: _run_step(row, impl, quick, peaks)  # noqa: E731
        run_op = lambda item, impl: _run_op(item[0], item[1], impl, quick, peaks)  # noqa: E731
        # dtype-major, so a budget that runs out costs both models their last precision, not one model all
        step_order = sorted(step_rows, key=lambda r: dtypes.index(r["dtype"]))
        run_all(step_order, step_impls, run_step)
        run_all(step_order, ["torch.compile"], run_step)  # the targets' second comparison first
        run_all(step_order, [TORCH_CHANNELS_LAST] + ([TRITONNET_NCHW] if cuda_graph else []), run_step)
        run_all(op_rows, ["tritonnet", "torch"], run_op)
        run_all(op_rows, ["torch.compile"], run_op)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
    for row in rows:
        _ratios(row)
    results["targets"] = []
    for row in step_rows:
        need = TARGETS.get(row["model"])
        if need is not None:
            got = row.get("x_vs_torch")
            results["targets"].append({"model": row["model"], "dtype": row["dtype"], "required_x_vs_torch": need,
                                       "x_vs_torch": got, "x_vs_compile": row.get("x_vs_compile"),
                                       "met": bool(got is not None and got >= need)})
    results["elapsed_s"] = budget.elapsed()
    return results


# ----------------------------------------------------------------------------- outputs


def _ms(r, key="p50"):
    if not r:
        return "–"
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "error"
    v = r.get(key)
    return "–" if v is None else f"{v:.3f}"


def _pct(v):
    return "–" if v is None else f"{v:.0f}%"


def _x(v):
    return "–" if v is None else f"{v:.2f}x"


def markdown(results) -> str:
    """The results as markdown: environment, step table, op table, targets, skips and errors."""
    env = results["environment"]
    queued = env.get("kernel_timing") == KERNEL_TIMING
    lines = [f"**{env['device']}** · torch {env['torch']} · triton {env['triton']} · commit `{env['commit']}` · "
             f"{env['date']}", ""]
    for note in results.get("notes", []):
        lines += [f"> {note}", ""]
    peaks = results.get("peaks")
    if peaks:
        mm = peaks["matmul_tflops"]
        lines += ["Measured on this card: copy " f"{peaks['copy_gbs']:.0f} GB/s; cuBLAS matmul "
                  + ", ".join(f"{k} {mm[k]:.0f}" for k in ("fp32", "tf32", "fp16", "bf16") if k in mm)
                  + " TFLOP/s.", ""]
    steps = [r for r in results["rows"] if r["kind"] == "step"]
    if steps:
        if queued:
            gpu_time = ("GPU time = CUDA events around one step queued behind a head start of GPU work (device "
                        "time, host launch time excluded; L2 cleared between steps); in kernels = the sum of "
                        "tritonnet's kernel durations in one eager step, its launches queued behind a head start "
                        "so that the events time the kernels, not the host's launch calls.")
        else:
            gpu_time = ("GPU time = CUDA events around one step (L2 cleared between steps); in kernels = the sum "
                        "of tritonnet's kernel durations in one step (the rest is launch gaps). These results "
                        "predate the queued timing: where the GPU waited for the host, both include the host's "
                        "launch calls.")
        lines += ["Training step (forward, cross-entropy, backward, SGD with momentum): wall time per step as a "
                  "user sees it (ms, Python and launch overhead included, 30 back-to-back steps). Speed-up = torch "
                  "time / best tritonnet time. Every step is given the same NCHW batch; tritonnet runs a network "
                  "on images of several channels channels-last (the copy of the batch is part of its step), and "
                  "torch eager is shown that way too (model and batch channels-last, the copy in its step; "
                  "speed-up in brackets); the targets are against torch's default, NCHW. " + gpu_time,
                  "",
                  "| model | input | dtype | tritonnet CUDA graph | tritonnet eager | torch eager | torch.compile "
                  "| vs eager | vs compile | torch eager channels-last | tritonnet GPU time p50 (p20–p80) "
                  "| in kernels | launches |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in steps:
            i = r["impls"]
            tn = i.get("tritonnet") or {}
            ks = tn.get("kernel_sum_ms")
            band = f"{tn['p50']:.3f} ({tn['p20']:.3f}–{tn['p80']:.3f})" if "p50" in tn else "–"
            cl = i.get(TORCH_CHANNELS_LAST)
            cl = f"{_ms(cl, 'wall_ms')} ({_x(r.get('x_vs_torch_channels_last'))})" if cl else "–"
            shape = r["shape"] + (" (tritonnet channels-last)" if r.get("tritonnet_channels_last") else "")
            lines.append(f"| {r['model']} | {shape} | {r['dtype']} | {_ms(i.get('tritonnet+graph'), 'wall_ms')} "
                         f"| {_ms(tn, 'wall_ms')} | {_ms(i.get('torch'), 'wall_ms')} "
                         f"| {_ms(i.get('torch.compile'), 'wall_ms')} | {_x(r.get('x_vs_torch'))} "
                         f"| {_x(r.get('x_vs_compile'))} | {cl} | {band} | {'–' if ks is None else f'{ks:.3f}'} "
                         f"| {tn.get('launches', '–')} |")
        lines.append("")
        nchw = [f"{r['model']} {r['dtype']} {_ms(r['impls'][TRITONNET_NCHW], 'wall_ms')} ms "
                f"({_x(r.get('x_vs_torch_nchw_network'))} torch eager)"
                for r in steps if TRITONNET_NCHW in r["impls"]]
        if nchw:
            lines += ["The same networks run NCHW by tritonnet (its channels-last default turned off; CUDA graph): "
                      + "; ".join(nchw) + ".", ""]
    ops = [r for r in results["rows"] if r["kind"] == "op"]
    if ops:
        lines += ["Ops, kernel time p50 (ms; CUDA events around each call"
                  + (" queued behind a head start of GPU work, so host launch time is excluded for torch and "
                     "tritonnet alike" if queued else ", started right after an L2 flush (triton's do_bench): "
                     "where a call's launches outlast the flush, host time is included")
                  + "; L2 cleared between calls, inputs rotated). Floor = "
                  "analytic FLOPs and minimum bytes against this card's measured matmul peak and copy bandwidth.",
                  "",
                  "| op | shape | dtype | tritonnet | torch eager | torch.compile | vs eager | vs compile "
                  "| floor | % of floor | launches |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ops:
            i = r["impls"]
            floor = r.get("floor_ms")
            lines.append(f"| {r['name']} | {r['shape']} | {r['dtype']} | {_ms(i.get('tritonnet'))} "
                         f"| {_ms(i.get('torch'))} | {_ms(i.get('torch.compile'))} | {_x(r.get('x_vs_torch'))} "
                         f"| {_x(r.get('x_vs_compile'))} | {'–' if floor is None else f'{floor:.4f}'} "
                         f"| {_pct(r.get('pct_of_floor'))} "
                         f"| {r.get('launches', '–')} |")
        lines.append("")
    if results.get("targets"):
        lines += ["Targets (training step vs torch eager): " + "; ".join(
            f"{t['model']} {t['dtype']} {_x(t['x_vs_torch'])} (need {t['required_x_vs_torch']:.1f}x: "
            f"{'met' if t['met'] else 'missed'})" for t in results["targets"]), ""]
        for t in results["targets"]:
            if not t["met"]:
                lines.append(f"- {_where_the_time_goes(results, t['model'], t['dtype'])}")
        if any(not t["met"] for t in results["targets"]):
            lines.append("")
    problems = [f"- {r['name']} {r['dtype']} {impl}: {v.get('skipped') or v.get('error')}"
                for r in results["rows"] for impl, v in r["impls"].items() if "skipped" in v or "error" in v]
    if problems:
        lines += ["<details><summary>Skipped or failed</summary>", "", *problems, "", "</details>", ""]
    return "\n".join(lines)


def _where_the_time_goes(results, model, dtype) -> str:
    """For a step that missed its target: how much of the step is kernels vs. launch gaps, and the
    kernels that take the most time (from one profiled step)."""
    row = next((r for r in results["rows"] if r["kind"] == "step" and r["model"] == model and r["dtype"] == dtype), None)
    tn = (row or {}).get("impls", {}).get("tritonnet") or {}
    if "kernel_sum_ms" not in tn:
        return f"{model} {dtype}: no tritonnet timing ({tn.get('skipped') or tn.get('error') or 'not run'})"
    best = row.get("tritonnet_best_ms") or tn["wall_ms"]
    share = 100.0 * tn["kernel_sum_ms"] / best if best else 0.0
    graph = row["impls"].get("tritonnet+graph") or {}
    top = ", ".join(f"{k['op']} {k['total_ms']:.3f} ms"
                    + (f" ({k['roofline_pct']:.0f}% of roofline)" if k.get("roofline_pct") is not None else "")
                    for k in tn.get("top_kernels", [])[:4])
    text = (f"{model} {dtype}: {tn['launches']} launches, {tn['kernel_sum_ms']:.3f} ms in kernels of a "
            f"{best:.3f} ms step ({share:.0f}%; the rest is Python and launch gaps)")
    if tn.get("kernel_idle_launches"):
        text += (f" ({tn['kernel_idle_launches']} launches found the GPU idle: their times include the host's "
                 "launch)")
    if "skipped" in graph:
        text += f"; {graph['skipped']}"
    return text + (f"; slowest kernels: {top}" if top else "")


def chart(results, path: str) -> None:
    """A bar chart of speed-ups (torch time / tritonnet time) vs torch eager and torch.compile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in results["rows"] if r.get("x_vs_torch") or r.get("x_vs_compile")]
    rows.sort(key=lambda r: r["kind"] != "step")  # the training steps, the headline, on top
    labels = [f"{'step ' + r['model'] if r['kind'] == 'step' else r['name']} [{r['dtype']}]" for r in rows]
    height = max(3.0, 0.32 * len(rows) + 2.0)
    fig, ax = plt.subplots(figsize=(10, height))
    ys = list(range(len(rows)))
    for offset, key, label in ((-0.2, "x_vs_torch", "vs torch eager (cuDNN)"), (0.2, "x_vs_compile", "vs torch.compile")):
        values = [r.get(key) for r in rows]
        bars = ax.barh([y + offset for y in ys], [v or 0 for v in values], height=0.4, label=label)
        for bar, v in zip(bars, values):
            if v:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.3g}", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    if rows:
        ax.set_xscale("log", base=2)  # 2x faster and 2x slower are the same distance from 1
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2, numticks=8))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of tritonnet (>1: tritonnet faster)")
    env = results["environment"]
    title = f"tritonnet vs torch on {env['device']} (commit {env['commit']})"
    if not results.get("meaningful", True):
        title += "\nTriton interpreter: timings mean nothing"
    ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))  # room for the legend below the axis
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results, out_dir: str) -> dict:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "bench.json"), "md": os.path.join(out_dir, "bench.md"),
             "png": os.path.join(out_dir, "bench.png")}
    write_json(paths["json"], results)
    with open(paths["md"], "w") as f:
        f.write(markdown(results))
    chart(results, paths["png"])
    return paths


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def update_readme(results_dir: str, readme: str | None = None, force: bool = False) -> str:
    """Copy ``bench.json``/``bench.md``/``bench.png`` from ``results_dir`` into
    ``benchmarks/results/<card>/`` next to the README and rewrite the README's Results section
    (between ``<!-- results:start -->`` and ``<!-- results:end -->``) from them. Refuses an
    interpreter run unless ``force``. Returns the README path."""
    import re
    import shutil

    with open(os.path.join(results_dir, "bench.json")) as f:
        results = json.load(f)
    if not results.get("meaningful") and not force:
        raise ValueError(f"{results_dir}/bench.json is from the Triton interpreter; its timings mean nothing "
                         "(pass --force to use it anyway)")
    readme = readme or os.path.join(_repo_root(), "README.md")
    root = os.path.dirname(os.path.abspath(readme))
    env = results["environment"]
    card = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower() or "device"
    dest = os.path.join(root, "benchmarks", "results", card)
    os.makedirs(dest, exist_ok=True)
    for name in ("bench.json", "bench.md", "bench.png"):
        src = os.path.join(results_dir, name)
        if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(os.path.join(dest, name)):
            shutil.copyfile(src, os.path.join(dest, name))
    if not os.path.exists(os.path.join(dest, "bench.png")):
        chart(results, os.path.join(dest, "bench.png"))
    rel = os.path.relpath(dest, root).replace(os.sep, "/")
    section = "\n".join([
        README_START,
        f"Generated by `tritonnet bench --update-readme {rel}` from `{rel}/bench.json`; "
        "do not edit by hand (rerun `tritonnet bench --out DIR` on a GPU, then this command).",
        "",
        f"![tritonnet speed-up over torch]({rel}/bench.png)",
        "",
        markdown(results).rstrip(),
        README_END,
    ])
    with open(readme) as f:
        text = f.read()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + section + "\n"
    with open(readme, "w") as f:
        f.write(text)
    return readme


# ----------------------------------------------------------------------------- the command


def add_arguments(parser) -> None:
    import argparse

    parser.add_argument("--out", default=".", help="directory for bench.json, bench.md, bench.png")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (what CI runs under the interpreter)")
    parser.add_argument("--dtypes", default=None, help="comma-separated from fp32,tf32,bf16 (default: all; fp32 "
                        "with --quick)")
    parser.add_argument("--models", default=None, help="comma-separated from lenet,vgg,digits (default lenet,vgg; "
                        "digits with --quick)")
    parser.add_argument("--only", choices=["ops", "steps"], default=None, help="run only the op suite or the steps")
    parser.add_argument("--no-cuda-graph", action="store_true", help="do not time the CUDA-graphed step")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget; what is left when it runs out is recorded as skipped "
                        "(default 170 s, 60 s with --quick)")
    parser.add_argument("--update-readme", metavar="RESULTS_DIR", default=None,
                        help="instead of benchmarking: rewrite README.md's Results section from RESULTS_DIR/bench.json "
                        "(+ bench.png), copying them under benchmarks/results/<card>/")
    parser.add_argument("--readme", default=None, help="README to update (default: the repository's)")
    parser.add_argument("--precompile", type=int, default=None, metavar="N",
                        help="compile the kernels in N parallel processes before measuring (default: on a GPU, "
                        "half the CPU cores up to 8; 0 turns it off)")
    parser.add_argument("--warm", default=None, help=argparse.SUPPRESS)  # a precompile worker's items (JSON)
    parser.add_argument("--force", action="store_true", help="let --update-readme use an interpreter run")


def main(args) -> int:
    from .workloads import resolve

    if args.warm is not None:
        _warm([tuple(item) for item in json.loads(args.warm)], quick=args.quick)
        return 0
    if args.update_readme:
        try:
            path = update_readme(args.update_readme, args.readme, force=args.force)
        except (OSError, ValueError) as exc:
            print(f"tritonnet bench --update-readme: {exc}", file=sys.stderr)
            return 2
        print(f"updated {path}")
        return 0
    print(runtime.describe())
    if not timing_is_meaningful():
        print("NOTE: Triton interpreter on the CPU: the timings below mean nothing about GPU performance.")
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None  # noqa: E731
    dtypes = split(args.dtypes)
    for d in dtypes or ():
        if d not in ALL_DTYPES:
            raise SystemExit(f"--dtypes: {d!r} is not one of {', '.join(ALL_DTYPES)}")
    models = [resolve(m) for m in split(args.models) or ()] or None
    results = run_suite(quick=args.quick, dtypes=dtypes, models=models, cuda_graph=not args.no_cuda_graph,
                        compile=not args.no_compile, ops=args.only != "steps", steps=args.only != "ops",
                        budget_s=args.budget_s, precompile_workers=args.precompile, on_phase=lambda r: write_json(os.path.join(args.out, "bench.json"), r))
    paths = write_outputs(results, args.out)
    print(markdown(results))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    import argparse

    _parser = argparse.ArgumentParser(prog="python -m tritonnet.bench", description="tritonnet vs torch")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
