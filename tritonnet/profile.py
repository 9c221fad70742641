"""Per-kernel profiling: every launch timed, its FLOPs and bytes modelled, set against the device's
measured peaks; a table, a Chrome/Perfetto trace and a CSV; and the ``tritonnet profile`` command.

Use::

    import tritonnet as tn
    with tn.profile(out="prof/") as prof:     # out is optional; prof.save(dir) does the same later
        train_step()
    prof.print_table()

Naming: ``tn.profile`` is the context-manager *function* (``tritonnet/__init__.py`` binds it over the
submodule attribute of the same name). The module stays importable by its dotted name for
everything else: ``from tritonnet.profile import Profiler, device_peaks`` and
``importlib.import_module("tritonnet.profile")`` (what the CLI does) return the module, because
both go through ``sys.modules``; only attribute access ``tritonnet.profile`` gives the function.

How it measures: the profiler is an observer on ``runtime.launch``, the one path every launcher
takes. On a GPU each launch is bracketed by two CUDA events recorded on the current stream; the
events are read back once, after the profiled region (one synchronisation in all, none per
launch), so the GPU runs ahead exactly as it does unprofiled.

An event pair times a kernel only if the kernel is queued before the GPU reaches the first
event. When the GPU waits for the host (a small CNN's eager step: the host needs longer to launch
a kernel than the kernel runs), the first event fires at once and the pair also times the host's
launch call: the H100 run of 2026-11-27 summed 4.7 ms "in kernels" for a VGG step whose CUDA-graph
replay took 2.9 ms. So ``head_start_ms`` keeps the GPU busy (``torch.cuda._sleep``) for that long
before the region, letting the host queue the launches ahead of it; and each launch records
whether its first event had already fired when the launch call returned (``gpu_idle``: its time
includes host latency), counted per row and in the table's title, so a head start too short to
cover the region shows rather than skewing numbers silently. Under Triton's interpreter each
launch is timed by the wall clock around it, which measures the interpreter, not a GPU, and is
labelled so everywhere. While a CUDA graph is being captured the profiler steps aside (events
recorded during capture would become graph nodes): profile eager steps, time graphed ones.

Profiling off costs nothing on the hot path: no observer is installed until a profiler is
entered, and ``runtime.launch`` with an empty observer list is a plain ``kernel[grid](...)``.

Roofline: a launch's floor is ``max(flops / matmul peak for its dtype, bytes / copy bandwidth)``
with both peaks measured on this device (a device-to-device copy; a large cuBLAS matmul per dtype:
fp32, tf32, fp16, bf16), once, and cached in ``~/.cache/tritonnet/peaks.json`` keyed by device name
(``TRITONNET_CACHE_DIR`` overrides the directory). ``% roofline = floor / measured time``.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from collections import OrderedDict

import torch

from . import runtime

# ----------------------------------------------------------------------------- device peaks

PEAK_DTYPES = ("fp32", "tf32", "fp16", "bf16")


def _cache_path() -> str:
    base = os.environ.get("TRITONNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tritonnet")
    return os.path.join(base, "peaks.json")


def device_name() -> str:
    return torch.cuda.get_device_name() if not runtime.INTERPRETED else "cpu-interpreter"


def measure_peaks() -> dict:
    """Measure this device's copy bandwidth (GB/s) and matmul rate per dtype (TFLOP/s) now."""
    from . import bench

    return {
        "copy_gbs": bench.copy_bandwidth_gbs(),
        "matmul_tflops": {
            "fp32": bench.matmul_peak_tflops(torch.float32, tf32=False),
            "tf32": bench.matmul_peak_tflops(torch.float32, tf32=True),
            "fp16": bench.matmul_peak_tflops(torch.float16),
            "bf16": bench.matmul_peak_tflops(torch.bfloat16),
        },
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
    }


def device_peaks(refresh: bool = False):
    """This GPU's measured peaks, from the per-device cache or measured once (a few seconds) and
    cached. ``None`` under the interpreter: a CPU interpreting Triton has no roofline worth the name."""
    if runtime.INTERPRETED:
        return None
    path, name = _cache_path(), device_name()
    cache = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if not refresh and isinstance(cache.get(name), dict) and "copy_gbs" in cache[name]:
        return cache[name]
    cache[name] = measure_peaks()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=2)
        os.replace(tmp, path)
    except OSError:  # a read-only home must not stop a profile
        pass
    return cache[name]


def peak_key(dtype, precision: str = "highest") -> str | None:
    """Which matmul peak bounds a launch computing in ``dtype`` (fp32 uses TF32's when allowed)."""
    if dtype == torch.float32:
        return "tf32" if precision == "high" else "fp32"
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype)


def roofline_ms(flops: float, nbytes: float, dtype, precision: str, peaks) -> float | None:
    """The least time a launch could take on this device: compute floor or memory floor."""
    if not peaks:
        return None
    floor = nbytes / (peaks["copy_gbs"] * 1e9) if nbytes else 0.0
    key = peak_key(dtype, precision)
    if flops and key and peaks["matmul_tflops"].get(key):
        floor = max(floor, flops / (peaks["matmul_tflops"][key] * 1e12))
    return floor * 1e3 if floor > 0 else None


# ----------------------------------------------------------------------------- the profiler

_NAMES: dict = {}


def kernel_name(kernel) -> str:
    """The Python name of a launched kernel (unwrapping autotuners and heuristics)."""
    name = _NAMES.get(id(kernel))
    if name is None:
        fn = kernel
        while hasattr(fn, "fn"):
            fn = fn.fn
        name = getattr(fn, "__name__", None) or type(kernel).__name__
        _NAMES[id(kernel)] = name
    return name


def _grid_of(kernel, grid, constexprs):
    if not callable(grid):
        return tuple(int(g) for g in grid)
    meta = dict(constexprs)
    best = getattr(kernel, "best_config", None)  # an Autotuner, after its first run
    if best is not None:
        meta.update(getattr(best, "all_kwargs", lambda: best.kwargs)())
    try:
        return tuple(int(g) for g in grid(meta))
    except Exception:  # a grid lambda needing a constexpr the launch did not pass
        return "callable"


@functools.lru_cache(maxsize=None)
def _sleep_cycles_per_ms() -> float:
    """The rate of ``torch.cuda._sleep``'s spin (GPU clock cycles per ms), measured once."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(10_000)
    start.record()
    torch.cuda._sleep(5_000_000)
    end.record()
    end.synchronize()
    return 5_000_000 / max(start.elapsed_time(end), 1e-3)


def keep_gpu_busy(ms: float) -> None:
    """Queue ~``ms`` milliseconds of GPU work on the current stream (a spinning kernel), so what the
    host launches next waits in the queue instead of finding the GPU idle. GPU only."""
    if ms > 0:
        torch.cuda._sleep(int(ms * _sleep_cycles_per_ms()))


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else ""


class Launch:
    """One recorded launch. ``ms`` is filled in when the profiled region ends."""

    __slots__ = ("kernel", "op", "shapes", "dtype", "precision", "grid", "flops", "bytes",
                 "host_start", "host_end", "events", "start_ms", "ms", "gpu_idle")

    def __init__(self, kernel, op, shapes, dtype, precision, grid, flops, nbytes):
        self.kernel, self.op, self.shapes, self.dtype, self.precision = kernel, op, shapes, dtype, precision
        self.grid, self.flops, self.bytes = grid, flops, nbytes
        self.host_start = self.host_end = 0.0
        self.events = None
        self.start_ms = self.ms = 0.0
        # True: the GPU had reached this launch's first event before the launch call returned, so
        # ``ms`` includes the host's launch latency; False: queued behind work; None: interpreter
        self.gpu_idle = None

    def key(self):
        return (self.kernel, self.op, str(self.shapes), _dtype_name(self.dtype), str(self.grid))


class Profiler:
    """Records every kernel launch between ``__enter__`` and ``__exit__`` (see the module doc).

    ``nvtx=True`` also wraps each launch in an NVTX range named ``op:kernel`` so Nsight Systems
    shows tritonnet's names. ``peaks`` is a dict like :func:`device_peaks` returns, ``"auto"``
    (the cached/measured peaks of this GPU; none under the interpreter) or ``None`` (no roofline).
    ``out``: a directory the table/trace/CSV are written into on exit. ``head_start_ms``: GPU work
    queued ahead of the region so its launches queue up behind it and the events time kernels, not
    launch calls (see the module doc; size it above the host's time for the region; ignored under
    the interpreter).
    """

    def __init__(self, nvtx: bool = False, peaks="auto", out: str | None = None, name: str = "profile",
                 head_start_ms: float = 0.0):
        if isinstance(head_start_ms, bool) or not isinstance(head_start_ms, (int, float)) \
                or not head_start_ms >= 0 or math.isinf(head_start_ms):
            raise ValueError(f"head_start_ms must be a finite number >= 0, got {head_start_ms!r}")
        self.head_start_ms = 0.0 if runtime.INTERPRETED else float(head_start_ms)
        self.nvtx = bool(nvtx) and not runtime.INTERPRETED
        self._peaks_arg, self.peaks = peaks, None
        self.out, self.name = out, name
        self.launches: list[Launch] = []
        self.time_source = "wall clock (Triton interpreter: not GPU time)" if runtime.INTERPRETED \
            else "CUDA events"
        self.region_ms = 0.0
        self.device = None
        self._active = False
        self._region_events = None
        self._host_t0 = 0.0

    # -- recording
    def __enter__(self):
        if self._active:
            raise RuntimeError("this profiler is already recording")
        self.peaks = device_peaks() if self._peaks_arg == "auto" else self._peaks_arg
        self.device = device_name()
        self.launches = []
        self._active = True
        self._host_t0 = time.perf_counter()
        if not runtime.INTERPRETED:
            keep_gpu_busy(self.head_start_ms)
            self._region_events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._region_events[0].record()
        runtime.add_observer(self._observe)
        return self

    def __exit__(self, *exc):
        runtime.remove_observer(self._observe)
        self._active = False
        host_end = time.perf_counter()
        if not runtime.INTERPRETED:
            start, end = self._region_events
            end.record()
            end.synchronize()  # the single read-back of the whole region
            self.region_ms = start.elapsed_time(end)
            for launch in self.launches:
                s, e = launch.events
                launch.start_ms = start.elapsed_time(s)
                launch.ms = s.elapsed_time(e)
                launch.events = None
        else:
            self.region_ms = (host_end - self._host_t0) * 1e3
            for launch in self.launches:
                launch.start_ms = (launch.host_start - self._host_t0) * 1e3
                launch.ms = (launch.host_end - launch.host_start) * 1e3
        if self.out is not None and exc[0] is None:
            self.save(self.out)
        return False

    def _observe(self, kernel, grid, args, constexprs, info, run):
        if runtime.capturing():
            return run()
        launch = Launch(kernel_name(kernel), info.op if info else "", info.shapes if info else (),
                        info.dtype if info else None, runtime.get_float32_matmul_precision(), None,
                        info.flops if info else 0, info.bytes if info else 0)
        if self.nvtx:
            torch.cuda.nvtx.range_push(f"{launch.op}:{launch.kernel}")
        launch.host_start = time.perf_counter()
        if runtime.INTERPRETED:
            try:
                return run()
            finally:
                launch.host_end = time.perf_counter()
                launch.grid = _grid_of(kernel, grid, constexprs)
                self.launches.append(launch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            return run()
        finally:
            launch.gpu_idle = start.query()  # already fired: the kernel was not queued in time
            end.record()
            launch.host_end = time.perf_counter()
            launch.events = (start, end)
            launch.grid = _grid_of(kernel, grid, constexprs)
            self.launches.append(launch)
            if self.nvtx:
                torch.cuda.nvtx.range_pop()

    # -- results
    @property
    def idle_launches(self) -> int:
        """Launches whose time includes the host's launch latency (the GPU had run dry); 0 under
        the interpreter, where no time is GPU time anyway."""
        return sum(1 for launch in self.launches if launch.gpu_idle)

    def summary(self) -> list[dict]:
        """One row per (kernel, op, shapes, dtype, grid): launches aggregated, sorted by total time."""
        rows: "OrderedDict[tuple, dict]" = OrderedDict()
        for launch in self.launches:
            row = rows.get(launch.key())
            if row is None:
                row = rows[launch.key()] = {
                    "kernel": launch.kernel, "op": launch.op, "shapes": launch.shapes,
                    "dtype": _dtype_name(launch.dtype), "precision": launch.precision, "grid": launch.grid,
                    "count": 0, "total_ms": 0.0, "total_flops": 0, "total_bytes": 0, "_torch_dtype": launch.dtype,
                    "gpu_idle": 0,
                }
            row["count"] += 1
            row["gpu_idle"] += bool(launch.gpu_idle)
            row["total_ms"] += launch.ms
            # summed, not taken from the first launch: launches sharing a key can differ in work
            # (e.g. a strided dgrad's per-phase launches)
            row["total_flops"] += launch.flops
            row["total_bytes"] += launch.bytes
        total = sum(r["total_ms"] for r in rows.values()) or 1.0
        out = []
        for row in rows.values():
            count = row["count"]
            mean = row["total_ms"] / count
            seconds = row["total_ms"] * 1e-3
            row["mean_ms"] = mean
            row["flops"] = row["total_flops"] / count  # per launch
            row["bytes"] = row["total_bytes"] / count
            if row["flops"] == int(row["flops"]) and row["bytes"] == int(row["bytes"]):
                row["flops"], row["bytes"] = int(row["flops"]), int(row["bytes"])
            row["share_pct"] = 100.0 * row["total_ms"] / total
            row["tflops"] = row["total_flops"] / seconds / 1e12 if seconds > 0 else None
            row["gbs"] = row["total_bytes"] / seconds / 1e9 if seconds > 0 else None
            floor = roofline_ms(row["flops"], row["bytes"], row.pop("_torch_dtype"), row["precision"], self.peaks)
            row["roofline_ms"] = floor  # per launch
            row["roofline_pct"] = 100.0 * floor / mean if floor and mean > 0 else None
            out.append(row)
        out.sort(key=lambda r: r["total_ms"], reverse=True)
        return out

    def table(self, limit: int | None = None):
        """A rich Table of :meth:`summary`."""
        from rich.table import Table

        rows = self.summary()
        kernel_ms = sum(r["total_ms"] for r in rows)
        title = (f"tritonnet profile: {len(self.launches)} launches, {kernel_ms:.3f} ms in kernels, "
                 f"{self.region_ms:.3f} ms region; time = {self.time_source}")
        if not runtime.INTERPRETED:
            title += (f"; {self.idle_launches} launches found the GPU idle (their times include the host's "
                      f"launch: column 'idle')" if self.idle_launches else
                      "; every launch queued before the GPU reached it (device time)")
        if limit and len(rows) > limit:
            title += f" (top {limit} of {len(rows)} rows by total time)"
        table = Table(title=title)
        for col in ("kernel", "op", "shapes", "dtype", "grid", "count", "idle", "total ms", "mean ms", "%",
                    "GFLOP/launch", "MB/launch", "TFLOP/s", "GB/s", "% roofline"):
            table.add_column(col, justify="left" if col in ("kernel", "op", "shapes", "dtype", "grid") else "right")
        for r in rows[:limit] if limit else rows:
            shapes = _fmt_shapes(r["shapes"])
            table.add_row(r["kernel"], r["op"], shapes if len(shapes) <= 40 else shapes[:39] + "…", r["dtype"], str(r["grid"]), str(r["count"]),
                          "n/a" if runtime.INTERPRETED else str(r["gpu_idle"]), f"{r['total_ms']:.3f}", f"{r['mean_ms']:.4f}", f"{r['share_pct']:.1f}",
                          f"{r['flops'] / 1e9:.3g}", f"{r['bytes'] / 1e6:.3g}", _fmt(r["tflops"], 2),
                          _fmt(r["gbs"], 1), _fmt(r["roofline_pct"], 1))
        return table

    def print_table(self, limit: int | None = None, console=None) -> None:
        from rich.console import Console

        (console or Console(width=200)).print(self.table(limit))

    def trace(self) -> dict:
        """The launches in Chrome trace format (chrome://tracing, ui.perfetto.dev): one complete
        ("X") event per launch on the device track, and its host-side launch call on a second track."""
        device_track = "GPU (CUDA events)" if not runtime.INTERPRETED else "interpreter (wall clock)"
        events = [
            {"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": device_track}},
            {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "host: launch calls"}},
        ]
        for i, launch in enumerate(self.launches):
            args = {"op": launch.op, "shapes": _fmt_shapes(launch.shapes), "dtype": _dtype_name(launch.dtype),
                    "grid": str(launch.grid), "flops": launch.flops, "bytes": launch.bytes, "index": i,
                    "gpu_idle": launch.gpu_idle}
            events.append({"name": launch.kernel, "cat": launch.op or "kernel", "ph": "X", "pid": 0, "tid": 0,
                           "ts": launch.start_ms * 1e3, "dur": launch.ms * 1e3, "args": args})
            if not runtime.INTERPRETED:
                events.append({"name": launch.kernel, "cat": "launch", "ph": "X", "pid": 1, "tid": 0,
                               "ts": (launch.host_start - self._host_t0) * 1e6,
                               "dur": (launch.host_end - launch.host_start) * 1e6, "args": {"index": i}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"time_source": self.time_source, "device": self.device,
                              "head_start_ms": self.head_start_ms, "idle_launches": self.idle_launches}}

    def save(self, out_dir: str = ".", prefix: str | None = None) -> dict:
        """Write ``<prefix>_trace.json``, ``<prefix>.csv`` and ``<prefix>.txt`` (the table) into
        ``out_dir``; return their paths."""
        prefix = prefix or self.name
        os.makedirs(out_dir, exist_ok=True)
        paths = {"trace": os.path.join(out_dir, f"{prefix}_trace.json"),
                 "csv": os.path.join(out_dir, f"{prefix}.csv"),
                 "table": os.path.join(out_dir, f"{prefix}.txt")}
        with open(paths["trace"], "w") as f:
            json.dump(self.trace(), f)
        rows = self.summary()
        columns = ["kernel", "op", "shapes", "dtype", "precision", "grid", "count", "gpu_idle", "total_ms", "mean_ms",
                   "share_pct", "flops", "bytes", "total_flops", "total_bytes", "tflops", "gbs", "roofline_ms",
                   "roofline_pct"]
        with open(paths["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns + ["time_source"])
            writer.writeheader()
            for r in rows:
                writer.writerow({**{c: (_fmt_shapes(r[c]) if c == "shapes" else r[c]) for c in columns},
                                 "time_source": self.time_source})
        from rich.console import Console

        with open(paths["table"], "w") as f:
            Console(file=f, width=200).print(self.table())
        return paths


def profile(nvtx: bool = False, peaks="auto", out: str | None = None, name: str = "profile",
            head_start_ms: float = 0.0) -> Profiler:
    """A context manager recording every tritonnet kernel launch inside it; see :class:`Profiler`."""
    return Profiler(nvtx=nvtx, peaks=peaks, out=out, name=name, head_start_ms=head_start_ms)


def head_start_for(host_ms: float) -> float:
    """A head start covering a region whose unprofiled host time is ``host_ms``: profiling's own
    events and checks roughly double the host's time per launch (the VGG step: 3.4 -> 6.4 ms),
    so three times that, plus a millisecond. Capped at 10 s of GPU spinning."""
    return min(3.0 * host_ms + 1.0, 10_000.0)


def _fmt(value, digits):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_shapes(shapes) -> str:
    try:
        return " ".join("x".join(str(d) for d in s) if isinstance(s, (tuple, list, torch.Size)) else str(s)
                        for s in shapes)
    except TypeError:
        return str(shapes)


# ----------------------------------------------------------------------------- `tritonnet profile`


def add_arguments(parser) -> None:
    from .workloads import ALIASES, MODELS

    parser.add_argument("--model", choices=sorted(MODELS) + sorted(ALIASES), default="lenet",
                        help="lenet (MNIST-shaped 1x28x28), vgg (CIFAR-shaped 3x32x32), digits (8x8 digits net)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 lenet, 512 vgg, 64 digits "
                        "(4 under the interpreter)")
    parser.add_argument("--steps", type=int, default=None, help="training steps profiled (default 10; 1 under "
                        "the interpreter)")
    parser.add_argument("--warmup", type=int, default=None, help="steps run first, unprofiled (compiles, "
                        "autotunes; default 3, 1 under the interpreter)")
    parser.add_argument("--dtype", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--nvtx", action="store_true", help="NVTX range per launch (for Nsight Systems)")
    parser.add_argument("--head-start-ms", type=float, default=None,
                        help="GPU work queued before the profiled steps so their launches queue up and the "
                        "events time kernels, not launch calls (default: sized from a warm-up step's host time; "
                        "0: none, times then include launch latency wherever the GPU waits for the host)")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="skip timing the CUDA-graphed step alongside the profiled eager steps")
    parser.add_argument("--limit", type=int, default=30, help="rows of the table printed")
    parser.add_argument("--out", default=".", help="directory for profile_<model>_<dtype>_b<batch>_trace.json "
                        "(Chrome/Perfetto trace), .csv and .txt (the table); default: the current directory")


def main(args) -> int:
    from rich.console import Console

    from .workloads import build_step, default_batch, resolve, wall_ms_per_call

    console = Console(width=200)
    interpreted = runtime.INTERPRETED
    args.model = resolve(args.model)
    batch = args.batch_size or default_batch(args.model, quick=interpreted)
    steps = args.steps or (1 if interpreted else 10)
    warmup = args.warmup if args.warmup is not None else (1 if interpreted else 3)
    console.print(runtime.describe())
    if interpreted:
        console.print("[yellow]Triton interpreter: times below are CPU wall clock of the interpreter and mean "
                      "nothing about GPU performance.[/yellow]")
    step = build_step(args.model, batch, args.dtype, cuda_graph=False)
    host_ms = 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        step()
        host_ms = (time.perf_counter() - t) * 1e3  # the last, warmest step's
    head_start = head_start_for(steps * host_ms) if args.head_start_ms is None else args.head_start_ms
    prof = Profiler(nvtx=args.nvtx, name=f"profile_{args.model}_{args.dtype}_b{batch}", head_start_ms=head_start)
    with prof:
        wall = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - wall) * 1e3
    prof.print_table(limit=args.limit, console=console)
    rows = prof.summary()
    kernel_ms = sum(r["total_ms"] for r in rows) / steps
    console.print(f"{args.model} batch {batch} {args.dtype}: {len(prof.launches) // steps} launches per step, "
                  f"{kernel_ms:.3f} ms in kernels per step ({prof.time_source}), {wall / steps:.3f} ms of host "
                  f"time per step while profiled")
    if not interpreted:
        console.print(f"head start {prof.head_start_ms:.1f} ms: " + (
            f"{prof.idle_launches} of {len(prof.launches)} launches still found the GPU idle; their times include "
            "the host's launch (raise --head-start-ms)" if prof.idle_launches else
            "every launch was queued before the GPU reached it, so the times are the kernels' own"))
    if not interpreted and not args.no_cuda_graph:
        eager = wall_ms_per_call(step, reps=20)
        graphed = build_step(args.model, batch, args.dtype, cuda_graph=True)
        if graphed.graph_error:
            console.print(f"CUDA graph: not used ({graphed.graph_error})")
        else:
            console.print(f"step wall time unprofiled: eager {eager:.3f} ms, CUDA graph "
                          f"{wall_ms_per_call(graphed, reps=20):.3f} ms")
    paths = prof.save(args.out)
    console.print("wrote " + ", ".join(paths.values()))
    return 0


__all__ = ["profile", "Profiler", "device_peaks", "measure_peaks", "roofline_ms", "kernel_name", "keep_gpu_busy",
           "head_start_for"]

