"""conv2d kernels against cuDNN (torch eager, NCHW and channels_last) and torch.compile.

Ops, each at real small-CNN shapes (LeNet-5 at batch 256, CIFAR-style VGG blocks at batch 512):
- ``fwd``: conv2d without bias or activation;
- ``fwd+bias+relu``: tritonnet's single fused launch against cuDNN's conv (with bias) followed by
  torch's separate ReLU (and against torch.compile of the same, which can fuse the epilogue);
- ``dgrad`` and ``wgrad``: the input and weight gradients on their own;
- ``bwd+bias+relu``: the backward of the fused op (ReLU derivative gated inside the kernels, bias
  gradient fused into wgrad) against torch's threshold_backward + convolution_backward.
Precisions: ``fp32`` (IEEE; cuDNN with TF32 off), ``tf32`` (tritonnet "high"; cuDNN TF32 on),
``bf16`` (fp32 accumulation). The input layer of each net has no dgrad row (its input needs no
gradient in training).

Each row: median ms, TFLOP/s, percent of the measured matmul peak for that precision (cuBLAS
8192^3), cuDNN NCHW and channels_last times, the speed ratio cuDNN NCHW time / tritonnet time
(> 1 means tritonnet is faster), and the floor max(FLOPs / peak, minimum bytes / copy bandwidth)
with the percentage of it reached. Every row is also timed replayed from CUDA graphs (both
sides), which separates host launch cost from device time, and ops that stage their operands as
channels-last are also timed on channels_last inputs against cuDNN's channels_last. The targets
of issue 3 are evaluated at the end, on the eager and on the graph ratios.

Usage: python3 benchmarks/bench_conv.py --out DIR [--quick]
Under Triton's interpreter it runs a tiny smoke version whose timings mean nothing.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tritonnet as tn  # noqa: E402
from tritonnet import bench, runtime  # noqa: E402
from tritonnet.kernels import conv as K  # noqa: E402

# (net, name, N, C_in, H, W, C_out, kernel, padding)
SHAPES = [
    ("lenet", "conv1 1->6 5x5 28x28", 256, 1, 28, 28, 6, 5, 0),
    ("lenet", "conv2 6->16 5x5 14x14", 256, 6, 14, 14, 16, 5, 0),
    ("cifar", "conv 3->64 3x3 32x32", 512, 3, 32, 32, 64, 3, 1),
    ("cifar", "conv 64->128 3x3 16x16", 512, 64, 16, 16, 128, 3, 1),
    ("cifar", "conv 128->256 3x3 8x8", 512, 128, 8, 8, 256, 3, 1),
]
SMOKE_SHAPES = [("lenet", "smoke 3->5 3x3 8x8", 2, 3, 8, 8, 5, 3, 1), ("cifar", "smoke 32->32 3x3 4x4", 2, 32, 4, 4, 32, 3, 1)]
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
# Which ops run at which precision: everything in bf16 (the training precision on an H100), the
# forward ops in fp32/tf32. Keeps the run (compiles + autotuning + timing) under ~90 s.
OPS = {"bf16": ("fwd", "fwd+bias+relu", "dgrad", "wgrad", "bwd+bias+relu"),
       "tf32": ("fwd", "fwd+bias+relu", "wgrad"),
       "fp32": ("fwd", "fwd+bias+relu")}
# torch.compile runs last (its first compile alone can take ~20 s on a fresh machine) and only
# while the whole run is younger than this, so the script stays inside its 90 s slot.
COMPILE_DEADLINE_S = 70.0


class Launches:
    """Observer summing the analytic FLOPs/bytes of tritonnet's launches and their floor in ms.
    Channels-last staging copies are counted as launches but not in the floor: they are work
    tritonnet chooses to do, not work the convolution needs."""

    def __init__(self, peak_tflops, copy_gbs):
        self.peak, self.copy, self.flops, self.bytes, self.floor_ms, self.count = peak_tflops, copy_gbs, 0, 0, 0.0, 0
        self.staging = 0

    def __call__(self, kernel, grid, args, constexprs, info, run):
        if info is not None:
            self.count += 1
            if info.op == "to_channels_last":
                self.staging += 1
                return run()
            self.flops += info.flops
            self.bytes += info.bytes
            self.floor_ms += 1e3 * max(info.flops / (self.peak * 1e12), info.bytes / (self.copy * 1e9))
        return run()


def _rand(shape, dtype, scale=1.0, channels_last=False):
    t = (torch.randn(shape, device=runtime.device()) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _median(fn, sets, quick):
    return bench.time_op(fn, sets, warmup_ms=3 if quick else 5, rep_ms=15 if quick else 30)["p50"]


def _make_sets(shape, dtype, count, channels_last=False):
    _, _, n, c_in, h, w, c_out, k, pad = shape
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    sets = []
    for _ in range(count):
        x = _rand((n, c_in, h, w), dtype, 1.0, channels_last)
        wt = _rand((c_out, c_in, k, k), dtype, (c_in * k * k) ** -0.5, channels_last)
        b = _rand((c_out,), dtype, 0.1)
        gy = _rand((n, c_out, oh, ow), dtype, 1.0, channels_last)
        sets.append((x, wt, b, gy))
    return sets


def _ops(pad):
    """name -> (tritonnet fn, torch fn); each takes (x, w, b, gy, y, mask): y is the ReLU output torch
    saves for its backward, mask the 1-bit-per-output ReLU gate tritonnet's training forward saves."""
    conv_bwd = torch.ops.aten.convolution_backward

    def t_fwd(x, w, b, gy, y, mask):
        return K.conv2d_forward(x, w, None, padding=pad)

    def r_fwd(x, w, b, gy, y, mask):
        return torch.nn.functional.conv2d(x, w, None, padding=pad)

    def t_fused(x, w, b, gy, y, mask):
        return K.conv2d_forward(x, w, b, padding=pad, activation="relu")

    def r_fused(x, w, b, gy, y, mask):
        return torch.relu(torch.nn.functional.conv2d(x, w, b, padding=pad))

    # dx in x's layout, as torch returns it (and as the tape asks for it)
    def t_dgrad(x, w, b, gy, y, mask):
        return K.conv2d_input_grad(gy, w, x.shape, padding=pad,
                                   channels_last=K.prefers_channels_last(x.shape, x.stride()))

    def r_dgrad(x, w, b, gy, y, mask):
        return conv_bwd(gy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False])

    def t_wgrad(x, w, b, gy, y, mask):
        return K.conv2d_weight_grad(gy, x, w.shape, padding=pad)

    def r_wgrad(x, w, b, gy, y, mask):
        return conv_bwd(gy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False])

    def t_bwd(x, w, b, gy, y, mask, need_dx=True):  # what the tape runs: grad_out staged once for both
        return K.conv2d_backward(gy, x, w, x.shape, w.shape, padding=pad, relu_mask=mask, input_grad=need_dx,
                                 bias_grad=True, input_channels_last=K.prefers_channels_last(x.shape, x.stride()))

    def r_bwd(x, w, b, gy, y, mask, need_dx=True):
        gz = torch.ops.aten.threshold_backward(gy, y, 0)
        return conv_bwd(gz, x, w, [w.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                        [need_dx, True, True])

    return {"fwd": (t_fwd, r_fwd), "fwd+bias+relu": (t_fused, r_fused), "dgrad": (t_dgrad, r_dgrad),
            "wgrad": (t_wgrad, r_wgrad), "bwd+bias+relu": (t_bwd, r_bwd)}


def _set_precision(name):
    tn.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    if not runtime.INTERPRETED:
        torch.backends.cudnn.allow_tf32 = name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"


def _flops(shape, op):
    _, _, n, c_in, h, w, c_out, k, pad = shape
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    macs = n * oh * ow * c_out * c_in * k * k
    if op == "bwd+bias+relu":
        return 2 * macs * (1 if c_in <= 3 else 2)
    return 2 * macs


def run(quick: bool, interpreted: bool, save):
    """Time every row; ``save(rows, peaks)`` is called after each, so a timeout keeps what was done."""
    start = time.perf_counter()
    shapes = SMOKE_SHAPES if interpreted else (SHAPES[1:4] if quick else SHAPES)
    precisions = ["fp32", "bf16"] if interpreted else (["bf16", "tf32"] if quick else ["bf16", "tf32", "fp32"])
    copy_gbs = bench.copy_bandwidth_gbs()
    peaks = {"fp32": bench.matmul_peak_tflops(torch.float32, tf32=False),
             "tf32": bench.matmul_peak_tflops(torch.float32, tf32=True),
             "bf16": bench.matmul_peak_tflops(torch.bfloat16)}
    if not interpreted:
        torch.backends.cudnn.benchmark = True
    rows, compile_jobs = [], []
    peak_info = {"copy_gbs": round(copy_gbs, 1), "matmul_tflops": {k: round(v, 1) for k, v in peaks.items()}}
    try:
        for prec in precisions:
            _set_precision(prec)
            dtype = PRECISIONS[prec]
            for shape in shapes:
                net, name = shape[0], shape[1]
                pad, c_in = shape[8], shape[3]
                sets = _make_sets(shape, dtype, 1 if interpreted else 3)
                sets_cl = [tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in s)
                           for s in sets]
                ops = _ops(pad)
                # what each side's backward gates with: torch's saved ReLU output, tritonnet's bit mask
                sets, sets_cl = ([s + (ops["fwd+bias+relu"][1](*s, None, None),
                                       K.conv2d_forward(*s[:3], padding=pad, activation="relu", save_relu_mask=True)[1])
                                  for s in group] for group in (sets, sets_cl))
                for op in OPS[prec]:
                    if op == "dgrad" and c_in <= 3:
                        continue
                    t_fn, r_fn = ops[op]
                    if op == "bwd+bias+relu" and c_in <= 3:
                        t_fn = lambda *a, _f=ops[op][0]: _f(*a, need_dx=False)  # noqa: E731
                        r_fn = lambda *a, _f=ops[op][1]: _f(*a, need_dx=False)  # noqa: E731
                    counter = Launches(peaks[prec], copy_gbs)
                    with runtime.observing(counter):
                        t_fn(*sets[0])  # also autotunes and compiles outside the timed region
                    r_fn(*sets[0])  # cuDNN's algorithm search (cudnn.benchmark) outside it too
                    r_fn(*sets_cl[0])
                    ms = _median(t_fn, sets, quick)
                    row = {"net": net, "shape": name, "precision": prec, "op": op, "tritonnet_ms": round(ms, 5),
                           "launches": counter.count, "staging_launches": counter.staging, "flops": _flops(shape, op)}
                    row["tflops"] = round(row["flops"] / (ms * 1e-3) / 1e12, 2)
                    row["pct_matmul_peak"] = round(100 * row["tflops"] / peaks[prec], 1)
                    row["floor_ms"] = round(counter.floor_ms, 5)
                    row["pct_of_floor"] = round(100 * counter.floor_ms / ms, 1)
                    row["cudnn_nchw_ms"] = round(_median(r_fn, sets, quick), 5)
                    row["cudnn_channels_last_ms"] = round(_median(r_fn, sets_cl, quick), 5)
                    row["speedup_vs_cudnn_nchw"] = round(row["cudnn_nchw_ms"] / ms, 3)
                    row["speedup_vs_cudnn_best"] = round(min(row["cudnn_nchw_ms"], row["cudnn_channels_last_ms"]) / ms, 3)
                    if counter.staging:
                        # the same op on channels_last tensors: tritonnet reads them without staging,
                        # the like-for-like comparison with cuDNN's channels_last time
                        row["tritonnet_channels_last_ms"] = round(_median(t_fn, sets_cl, quick), 5)
                        row["speedup_channels_last_vs_cudnn_channels_last"] = round(
                            row["cudnn_channels_last_ms"] / row["tritonnet_channels_last_ms"], 3)
                    if not interpreted:  # device time alone: a channels-last op is 3 launches
                        _graph_times(row, t_fn, r_fn, sets[0])
                    if op == "fwd+bias+relu" and prec == "bf16":
                        compile_jobs.append((row, r_fn, sets))
                    rows.append(row)
                    print(_format(row), flush=True)
                    save(rows, peak_info)
                del sets, sets_cl
        _set_precision("bf16")
        for row, r_fn, sets in compile_jobs:
            _compiled_row(row, r_fn, sets, quick, interpreted, time.perf_counter() - start)
            save(rows, peak_info)
    finally:
        _set_precision("fp32")
    return rows, peak_info, time.perf_counter() - start


def _graph_times(row, t_fn, r_fn, args):
    """Kernels of microseconds to tens of microseconds (LeNet; the channels-last CIFAR layers,
    three launches each with their staging) can be host-bound eagerly, so eager timings may
    include the host's launch cost; replaying both sides from a CUDA graph shows device time."""
    import triton.testing

    for key, fn in (("tritonnet_graph_ms", t_fn), ("cudnn_nchw_graph_ms", r_fn)):
        try:
            row[key] = round(triton.testing.do_bench_cudagraph(lambda: fn(*args), rep=20), 5)
        except Exception as exc:  # capture can fail; the eager timing stands
            row[key] = None
            row[key.replace("_ms", "_note")] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if row.get("tritonnet_graph_ms") and row.get("cudnn_nchw_graph_ms"):
        row["speedup_vs_cudnn_graph"] = round(row["cudnn_nchw_graph_ms"] / row["tritonnet_graph_ms"], 3)


def _compiled_row(row, r_fn, sets, quick, interpreted, elapsed):
    """Time torch.compile of the torch reference (it can fuse bias+ReLU into its own epilogue)."""
    if interpreted:
        row["torch_compile_ms"] = None
        row["torch_compile_note"] = "skipped under the interpreter"
        return
    if elapsed > COMPILE_DEADLINE_S:
        row["torch_compile_ms"] = None
        row["torch_compile_note"] = f"skipped: the run passed {COMPILE_DEADLINE_S} s before this compile"
        return
    try:
        compiled = torch.compile(r_fn, dynamic=False)
        compiled(*sets[0])
        torch.cuda.synchronize()
        row["torch_compile_ms"] = round(_median(compiled, sets, quick), 5)
        row["speedup_vs_torch_compile"] = round(row["torch_compile_ms"] / row["tritonnet_ms"], 3)
    except Exception as exc:  # record and continue: compile failures must not end the benchmark
        row["torch_compile_ms"] = None
        row["torch_compile_note"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(f"torch.compile {row['shape']}: {row.get('torch_compile_ms')} ms", flush=True)


def _format(row):
    extra = f" compile {row['torch_compile_ms']}" if row.get("torch_compile_ms") else ""
    return (f"{row['precision']:5s} {row['shape']:24s} {row['op']:14s} tritonnet {row['tritonnet_ms']:.4f} ms "
            f"{row['tflops']:7.2f} TFLOP/s ({row['pct_matmul_peak']:5.1f}% peak, {row['pct_of_floor']:5.1f}% floor) "
            f"cudnn nchw {row['cudnn_nchw_ms']:.4f} cl {row['cudnn_channels_last_ms']:.4f} "
            f"x{row['speedup_vs_cudnn_nchw']:.2f}{extra}"
            + (f" | NHWC in: tritonnet {row['tritonnet_channels_last_ms']:.4f} ms "
               f"x{row['speedup_channels_last_vs_cudnn_channels_last']:.2f} vs cudnn cl"
               if "tritonnet_channels_last_ms" in row else ""))


# Issue 3's speed targets on the H100: (name, threshold, which rows).
TARGETS = [
    ("bf16 conv fwd >= 0.9x cuDNN on CIFAR shapes", 0.9,
     lambda r: r["net"] == "cifar" and r["precision"] == "bf16" and r["op"] == "fwd"),
    ("fused conv+bias+ReLU fwd >= 1.2x cuDNN conv + separate bias/ReLU (bf16)", 1.2,
     lambda r: r["precision"] == "bf16" and r["op"] == "fwd+bias+relu"),
    ("LeNet shapes >= 1.0x (bf16, every op)", 1.0,
     lambda r: r["net"] == "lenet" and r["precision"] == "bf16"),
]


def targets(rows):
    """Each target with the measured ratios (cuDNN NCHW time / ours): eagerly, then with both
    sides replayed from CUDA graphs (rows that have graph times)."""
    result = []
    for key, suffix in (("speedup_vs_cudnn_nchw", ""),
                        ("speedup_vs_cudnn_graph", ", both sides replayed from CUDA graphs (device time only, NCHW)")):
        for name, thr, pred in TARGETS:
            rs = [r[key] for r in rows if pred(r) and r.get(key) is not None]
            result.append({"target": name + suffix, "threshold": thr, "min_ratio": min(rs) if rs else None,
                           "ratios": rs, "met": bool(rs) and min(rs) >= thr})
    return result


def main(argv=None):
    args = bench.script_parser(__doc__, "conv", "fewer shapes and precisions, shorter timings").parse_args(argv)
    interpreted = bench.announce_mode("conv")
    path = os.path.join(args.out, "bench_conv.json")
    environment = bench.environment()
    started = time.perf_counter()

    def save(rows, peaks, complete=False):
        result = {"benchmark": "conv2d", "environment": environment, "peaks": peaks,
                  "cudnn": {"benchmark": True, "version": torch.backends.cudnn.version() if not interpreted else None,
                            "tf32": "on for the tf32 rows only, off for fp32 (matched to tritonnet's mode)"},
                  "autotune": {"fwd_dgrad_configs": [str(c) for c in K.FWD_CONFIGS],
                               "wgrad_configs": [str(c) for c in K.WGRAD_CONFIGS],
                               "channels_last_fwd_dgrad_configs": [str(c) for c in K.CL_CONFIGS],
                               "channels_last_wgrad_configs": [str(c) for c in K.WGRAD_CL_CONFIGS]},
                  "rows": rows, "targets": targets(rows), "complete": complete,
                  "elapsed_s": round(time.perf_counter() - started, 1), "timings_meaningful": not interpreted}
        bench.write_json(path, result)
        return result

    rows, peaks, elapsed = run(args.quick, interpreted, save)
    result = save(rows, peaks, complete=True)
    for t in result["targets"]:
        print(f"target: {t['target']}: min ratio {t['min_ratio']} -> {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {path} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
