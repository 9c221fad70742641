"""Linear, cross-entropy and optimizer kernels against torch eager and torch.compile.

Rows (each at the shapes of the benchmarked nets' classifiers):
- linear forward with fused bias + ReLU, and its backward (input grad, weight grad, bias grad,
  the ReLU derivative gating the gradient inside the kernels), for fp32 (IEEE), tf32 and bf16:
  LeNet-5's classifier at batch 256 (400->120->84->10) and a VGG-style classifier at batch 512
  (4096->512->10);
- fused softmax cross-entropy, loss and logits' gradient (fp32);
- one optimizer step (SGD with momentum, Adam) over all of LeNet-5's or the VGG classifier's
  parameters: tritonnet's single multi-tensor launch against torch.optim's foreach and fused
  implementations. Also checks that changing the learning rate compiles nothing new.

Each tritonnet row carries its floor -- sum over its launches of max(FLOPs / measured matmul peak,
minimum bytes / measured copy bandwidth), from the launchers' analytic LaunchInfo -- and the
percentage of that floor reached (floor / time), plus the ratio torch time / tritonnet time.

Usage: python3 benchmarks/bench_linear.py --out DIR [--quick]
Under Triton's interpreter it runs a tiny smoke version whose timings mean nothing.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tritonnet as tn  # noqa: E402
import tritonnet.functional as F  # noqa: E402
from tritonnet import bench, optim, runtime  # noqa: E402
from tritonnet.workloads import precision  # noqa: E402

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
LENET_FC = [(400, 120), (120, 84), (84, 10)]
LENET_PARAMS = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]
VGG_FC = [(4096, 512), (512, 10)]
VGG_PARAMS = [(512, 4096), (512,), (10, 512), (10,)]
COMPILE_BUDGET_S = 22.0  # torch.compile rows stop here, so the whole run stays under ~40 s


class Launches:
    """A runtime.launch observer that sums the launches' analytic FLOPs, bytes and floors."""

    def __init__(self, peaks):
        self.peaks, self.count, self.flops, self.bytes, self.floor_ms = peaks, 0, 0, 0, 0.0

    def __call__(self, kernel, grid, args, constexprs, info, run):
        if info is not None:
            self.count += 1
            self.flops += info.flops
            self.bytes += info.bytes
            tflops = self.peaks["tflops"].get(_peak_key(info.dtype))
            compute = info.flops / (tflops * 1e12) if info.flops and tflops else 0.0
            self.floor_ms += 1e3 * max(compute, info.bytes / (self.peaks["copy_gbs"] * 1e9))
        return run()


def _peak_key(dtype):
    if dtype == torch.float32:
        return "tf32" if runtime.get_float32_matmul_precision() == "high" else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "bf16"}.get(dtype)


def measure_peaks():
    return {"copy_gbs": bench.copy_bandwidth_gbs(),
            "tflops": {"fp32": bench.matmul_peak_tflops(torch.float32, tf32=False),
                       "tf32": bench.matmul_peak_tflops(torch.float32, tf32=True),
                       "bf16": bench.matmul_peak_tflops(torch.bfloat16)}}


def _time(fn, sets, quick):
    r = bench.time_op(fn, sets, warmup_ms=5 if quick else 10, rep_ms=20 if quick else 50)
    return round(r["p50"], 5)


def _floor(fn, args, peaks):
    counter = Launches(peaks)
    with runtime.observing(counter):
        fn(*args)
    return counter


def _rand(shape, dtype, scale=1.0):
    return (torch.randn(shape, device=runtime.device()) * scale).to(dtype)


def linear_cases(batch, fin, fout, dtype):
    """(name, tritonnet fn, torch fn, argument sets for each) for the forward and the backward."""
    sets = [(_rand((batch, fin), dtype), _rand((fout, fin), dtype, fin ** -0.5), _rand((fout,), dtype, 0.1))
            for _ in range(3)]
    tn_fwd_sets = [tuple(tn.Tensor(t, requires_grad=True) for t in s) for s in sets]
    torch_fwd_sets = [tuple(t.clone().requires_grad_() for t in s) for s in sets]

    def tn_fwd(x, w, b):
        return F.linear(x, w, b, activation="relu")

    def torch_fwd(x, w, b):
        return torch.relu(torch.nn.functional.linear(x, w, b))

    tn_bwd_sets, torch_bwd_sets = [], []
    for x, w, b in sets:
        y = tn_fwd(tn.Tensor(x, requires_grad=True), tn.Tensor(w, requires_grad=True), tn.Tensor(b, requires_grad=True))
        g = _rand((batch, fout), dtype)
        tn_bwd_sets.append((y._node.backward_fn, g))  # the recorded closure, callable again
        torch_bwd_sets.append((g, torch_fwd(x, w, b).detach(), x, w))

    def tn_bwd(backward_fn, g):
        return backward_fn(g)

    def torch_bwd(g, y, x, w):
        gz = torch.ops.aten.threshold_backward(g, y, 0)
        return gz @ w, gz.t() @ x, gz.sum(0)

    return [("linear fwd +bias+relu", tn_fwd, tn_fwd_sets, torch_fwd, torch_fwd_sets),
            ("linear bwd (relu-gated dgrad+wgrad+bias)", tn_bwd, tn_bwd_sets, torch_bwd, torch_bwd_sets)]


def cross_entropy_case(batch, classes):
    sets = [(_rand((batch, classes), torch.float32, 3.0), torch.randint(0, classes, (batch,), device=runtime.device()))
            for _ in range(3)]
    tn_sets = [(tn.Tensor(z, requires_grad=True), t) for z, t in sets]
    torch_sets = [(z.clone().requires_grad_(), t) for z, t in sets]

    def tn_fn(z, t):
        z.grad = None
        F.cross_entropy(z, t).backward()
        return z.grad

    def torch_fn(z, t):
        return torch.autograd.grad(torch.nn.functional.cross_entropy(z, t), z)

    def torch_compiled_fn(z, t, _loss=[]):  # noqa: B006  (one compiled loss, made on first use)
        if not _loss:
            _loss.append(torch.compile(torch.nn.functional.cross_entropy, dynamic=False))
        return torch.autograd.grad(_loss[0](z, t), z)

    return tn_fn, tn_sets, torch_fn, torch_sets, torch_compiled_fn


def op_rows(quick, interpreted, peaks, start):
    rows = []
    everything = ["fp32", "tf32", "bf16"]
    if interpreted:
        linear_shapes, ce_shapes = [(8, 32, 16, ["fp32"])], [(8, 10)]
    elif quick:
        linear_shapes, ce_shapes = [(256, 400, 120, ["fp32", "bf16"]), (512, 4096, 512, ["fp32", "bf16"])], [(512, 10)]
    else:  # every precision for the largest layer of each net, fp32 for the others
        (lenet_in, lenet_out), (vgg_in, vgg_out) = LENET_FC[0], VGG_FC[0]
        linear_shapes = ([(256, lenet_in, lenet_out, everything)] + [(256, i, o, ["fp32"]) for i, o in LENET_FC[1:]]
                         + [(512, vgg_in, vgg_out, everything)] + [(512, i, o, ["fp32"]) for i, o in VGG_FC[1:]])
        ce_shapes = [(256, 10), (512, 10), (512, 1000)]

    def run_row(name, shape, dtype_name, tn_fn, tn_sets, torch_fn, torch_sets, compiled_fn=None):
        row = {"op": name, "shape": shape, "dtype": dtype_name}
        with precision(dtype_name):
            try:
                t0 = time.perf_counter()
                tn_fn(*tn_sets[0])  # first call: JIT compile and the tile tuner
                row["tritonnet_first_call_s"] = round(time.perf_counter() - t0, 3)
                row["tritonnet_ms"] = _time(tn_fn, tn_sets, quick)
                counter = _floor(tn_fn, tn_sets[0], peaks)
                row.update(launches=counter.count, flops=counter.flops, bytes=counter.bytes,
                           floor_ms=round(counter.floor_ms, 5))
                row["pct_of_floor"] = round(100 * counter.floor_ms / row["tritonnet_ms"], 1)
            except Exception as exc:  # a failing row is recorded, not fatal
                row["tritonnet_error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["torch_ms"] = _time(torch_fn, torch_sets, quick)
            if interpreted:
                row["torch.compile"] = "skipped: interpreter smoke run"
            elif time.perf_counter() - start > COMPILE_BUDGET_S:
                row["torch.compile"] = "skipped: time budget"
            else:
                try:
                    fn = compiled_fn or torch.compile(torch_fn, dynamic=False)
                    t0 = time.perf_counter()
                    fn(*torch_sets[0])
                    row["torch.compile_first_call_s"] = round(time.perf_counter() - t0, 2)
                    row["torch.compile_ms"] = _time(fn, torch_sets, quick)
                except Exception as exc:
                    row["torch.compile"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
        if "tritonnet_ms" in row:
            row["torch_over_tritonnet"] = round(row["torch_ms"] / row["tritonnet_ms"], 3)
        rows.append(row)
        print(_format(row), flush=True)

    for batch, fin, fout, dtypes in linear_shapes:
        for dtype_name in dtypes:
            for name, tn_fn, tn_sets, torch_fn, torch_sets in linear_cases(batch, fin, fout, DTYPES[dtype_name]):
                run_row(name, f"{batch}x{fin}->{fout}", dtype_name, tn_fn, tn_sets, torch_fn, torch_sets)
    for batch, classes in ce_shapes:
        tn_fn, tn_sets, torch_fn, torch_sets, compiled_fn = cross_entropy_case(batch, classes)
        run_row("cross_entropy fwd+bwd", f"{batch}x{classes}", "fp32", tn_fn, tn_sets, torch_fn, torch_sets,
                compiled_fn)
    return rows


def _compiled_variants(kernel):
    """How many compiled variants a JIT kernel holds (None where this triton does not say)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        return None
    total = 0
    for value in caches.values():
        first = value[0] if isinstance(value, tuple) else value
        total += len(first) if hasattr(first, "__len__") else 0
    return total


def optimizer_rows(quick, interpreted, peaks):
    from tritonnet.kernels import optim as optim_kernels

    rows = []
    nets = [("lenet5", LENET_PARAMS)] if interpreted or quick else [("lenet5", LENET_PARAMS),
                                                                     ("vgg classifier", VGG_PARAMS)]
    for net, shapes in nets:
        numel = sum(torch.Size(s).numel() for s in shapes)
        for name, kwargs, streams in (("SGD", dict(lr=0.01, momentum=0.9), 5), ("Adam", dict(lr=1e-3), 7)):
            row = {"op": f"{name} step", "shape": f"{net}: {len(shapes)} tensors, {numel} values", "dtype": "fp32"}
            params = [tn.Tensor(_rand(s, torch.float32), requires_grad=True) for s in shapes]
            for p in params:
                p.grad = _rand(p.shape, torch.float32, 1e-2)
            opt = getattr(optim, name)(params, **kwargs)
            opt.step()
            row["tritonnet_ms"] = _time(opt.step, None, quick)
            counter = _floor(opt.step, (), peaks)
            floor_ms = 1e3 * streams * 4 * numel / (peaks["copy_gbs"] * 1e9)
            row.update(launches=counter.count, bytes=counter.bytes, floor_ms=round(floor_ms, 5),
                       pct_of_floor=round(100 * floor_ms / row["tritonnet_ms"], 1))
            kernel = optim_kernels.sgd_kernel if name == "SGD" else optim_kernels.adam_kernel
            before = _compiled_variants(kernel)
            for lr in (0.5, 1e-4, 3):
                opt.lr = lr
                opt.step()
            after = _compiled_variants(kernel)
            row["compiled_variants_before_after_lr_changes"] = [before, after]
            for variant in ("foreach", "fused"):
                tparams = [p.data.clone().requires_grad_() for p in params]
                for tp, p in zip(tparams, params):
                    tp.grad = p.grad.clone()
                try:
                    topt = getattr(torch.optim, name)(tparams, **kwargs, **{variant: True})
                    topt.step()
                    row[f"torch_{variant}_ms"] = _time(topt.step, None, quick)
                    row[f"torch_{variant}_over_tritonnet"] = round(row[f"torch_{variant}_ms"] / row["tritonnet_ms"], 3)
                except Exception as exc:  # fused is CUDA-only
                    row[f"torch_{variant}"] = f"error: {type(exc).__name__}: {str(exc)[:150]}"
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _format(row):
    parts = [f"{row['op']:<42} {row['shape']:<36} {row['dtype']:<5}"]
    for key in ("tritonnet_ms", "torch_ms", "torch.compile_ms", "torch_foreach_ms", "torch_fused_ms", "floor_ms"):
        if key in row:
            parts.append(f"{key.replace('_ms', '')}={row[key]:.4f}ms")
    for key in ("torch_over_tritonnet", "pct_of_floor", "launches"):
        if key in row:
            parts.append(f"{key}={row[key]}")
    for key in ("tritonnet_error", "torch.compile"):
        if key in row:
            parts.append(f"{key}: {row[key]}")
    return "  ".join(parts)


def main(argv=None):
    args = bench.script_parser(__doc__, "linear", "fewer shapes and dtypes, shorter timing").parse_args(argv)
    interpreted = bench.announce_mode("linear")
    start = time.perf_counter()
    torch.manual_seed(0)
    peaks = measure_peaks()
    print(f"peaks: copy {peaks['copy_gbs']:.0f} GB/s, matmul TFLOP/s "
          + ", ".join(f"{k} {v:.1f}" for k, v in peaks["tflops"].items()), flush=True)
    rows = op_rows(args.quick, interpreted, peaks, start)
    rows += optimizer_rows(args.quick, interpreted, peaks)
    payload = {"benchmark": "linear", "environment": bench.environment(), "peaks": peaks,
               "timings_meaningful": bench.timing_is_meaningful(), "quick": bool(args.quick),
               "unit": "ms (median)", "rows": rows, "wall_s": round(time.perf_counter() - start, 1)}
    path = os.path.join(args.out, "bench_linear.json")
    bench.write_json(path, payload)
    print(f"wrote {path} in {payload['wall_s']} s")


if __name__ == "__main__":
    main()
