"""Host-side overhead per op of a LeNet-5 training step: the Python path tritonnet runs around each
kernel launch (validation, geometry, output allocation, grid and argument packing, tape recording,
autotuner dispatch), in microseconds per call.

Small CNN training steps are launch-bound on a GPU (a LeNet step is ~27 launches whose kernels
take a few microseconds each), so this path, not the kernels, decides the step time.

Two modes:
- ``stub`` (default under Triton's interpreter): the kernel is never executed. Triton's
  ``InterpretedFunction.run`` / ``JITFunction.run`` is replaced by a function that returns at once,
  so ``runtime.launch``'s own path (with no observer) and ``kernel[grid]`` are still timed but
  neither the interpreter nor Triton's argument specialisation / cache lookup is. Outputs hold
  garbage; the one value the host reads back (cross-entropy's count of bad labels) is zeroed.
  On the GPU the remaining cost of Triton's own launch (~20-40 us in triton 3.6) comes on top.
- ``real`` (default on a GPU): nothing is stubbed; each timing loop ends with a device
  synchronisation, so a launch-bound op shows its wall time per call as a user sees it.

Usage: python3 benchmarks/bench_host_overhead.py --out DIR [--quick] [--mode stub|real] [--batch 256]
                                                [--conv-autotune] [--label NAME]
On a GPU run it twice, ``--mode stub`` and ``--mode real`` (different --out): the difference per
op is Triton's own launch cost plus any kernel time not hidden behind the host.
Writes ``host_overhead.json`` to DIR and prints a table. Under the interpreter the numbers are
the interpreter-mode Python path on this CPU; on the GPU the path differs slightly (CUDA caching
allocator instead of CPU malloc, Triton's launcher, no ``item()`` on a CPU tensor).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tritonnet  # noqa: E402,F401  (chooses GPU or interpreter before triton is imported)
from tritonnet import bench, runtime, workloads  # noqa: E402
from tritonnet import functional as F  # noqa: E402
from tritonnet.kernels import conv as conv_kernels  # noqa: E402
from tritonnet.kernels import linear as linear_kernels  # noqa: E402
from tritonnet.kernels import pool as pool_kernels  # noqa: E402
from tritonnet.tape import Tensor  # noqa: E402

LAUNCHES = [0]


def _stub_kernels():
    """Replace Triton's run() with one that only counts (and zeroes a read-back counter)."""
    import triton.runtime.jit as jit

    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass

    def stub_run(self, *args, grid=None, warmup=False, **kwargs):
        LAUNCHES[0] += 1
        names = getattr(self, "arg_names", None) or getattr(getattr(self, "fn", None), "arg_names", ())
        if "bad_count_ptr" in names:  # cross-entropy: the host reads this count back
            args[list(names).index("bad_count_ptr")].zero_()
        return None

    originals = [(cls, cls.run) for cls in classes]
    for cls in classes:
        cls.run = stub_run
    return originals


def _NO_TIMING(fn, quantiles=None):
    """The Autotuner's timing, stubbed: every config 'takes' 1 ms (the kernels are stubbed too)."""
    fn()
    return [1.0, 1.0, 1.0]


def _stub_autotuning():
    """Turn conv autotuning on under the interpreter (as on a GPU) with no timing."""
    for tuner in (conv_kernels.conv2d_fwd_autotuned, conv_kernels.conv2d_dgrad_autotuned,
                  conv_kernels.conv2d_wgrad_autotuned):
        tuner.do_bench = _NO_TIMING
    conv_kernels.AUTOTUNE = True


def _sync():
    if not runtime.INTERPRETED:
        torch.cuda.synchronize()


def time_us(fn, reps: int, repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean wall time of ``reps`` back-to-back calls, in us."""
    fn()
    fn()
    _sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync()
        samples.append((time.perf_counter() - start) * 1e6 / reps)
    return statistics.median(samples)


def lenet_cases(batch: int, dtype_name: str = "fp32"):
    """(name, callable, launches per call) for each op of a LeNet-5 step, then the whole step."""
    step = workloads.build_step("lenet", batch, dtype_name, impl="tritonnet", cuda_graph=False)
    net, opt = step.net, step.optimizer
    x0, y0 = step.batches[0]
    layers = list(net.children()) if hasattr(net, "children") else list(net)
    conv1, conv2 = [m for m in layers if type(m).__name__ == "Conv2d"]
    fc1, fc2, fc3 = [m for m in layers if type(m).__name__ == "Linear"]
    dtype = x0.dtype
    dev = runtime.device()

    def rand(*shape):
        return torch.randn(shape, device=dev, dtype=dtype)

    # Activations of the real step's shapes.
    a1 = Tensor(rand(batch, 6, 14, 14), requires_grad=True)
    c2 = rand(batch, 16, 10, 10)
    flat = Tensor(rand(batch, 400), requires_grad=True)
    x_fc2 = rand(batch, 120)
    logits = Tensor(rand(batch, 10), requires_grad=True)

    # Saved state for the backward launchers.
    _, mask2 = conv_kernels.conv2d_forward(a1.data, conv2.weight.data, conv2.bias.data, activation="relu",
                                           save_relu_mask=True)
    _, argmax, geo = pool_kernels.max_pool2d_forward(c2, 2, None, 0, 1, False)
    g_pool = rand(batch, 16, 5, 5)
    g_c2 = rand(batch, 16, 10, 10)
    y_fc2 = rand(batch, 84)
    g_fc2 = rand(batch, 84)

    def conv2_forward():
        return F.conv2d(a1, conv2.weight, conv2.bias, activation="relu")

    def conv2_backward():
        conv_kernels.conv2d_input_grad(g_c2, conv2.weight.data, tuple(a1.shape), relu_mask=mask2)
        conv_kernels.conv2d_weight_grad(g_c2, a1.data, tuple(conv2.weight.shape), relu_mask=mask2, bias_grad=True)

    def pool_forward():
        return F.max_pool2d(Tensor(c2, requires_grad=True), 2)

    def pool_backward():
        return pool_kernels.max_pool2d_backward(g_pool, argmax, geo)

    def linear_forward():
        return F.linear(flat, fc1.weight, fc1.bias, activation="relu")

    def linear_backward():
        return linear_kernels.linear_backward(g_fc2, x_fc2, fc2.weight.data, y_fc2, need_input=True,
                                              need_weight=True, need_bias=True)

    def cross_entropy():
        return F.cross_entropy(logits, y0)

    def cross_entropy_backward():
        loss = F.cross_entropy(logits, y0)
        loss.backward()
        logits.grad = None

    def forward():
        with workloads.precision(dtype_name):
            return F.cross_entropy(net(Tensor(x0)), y0)

    def backward_only():
        # the graph must be rebuilt per call: time forward+backward and subtract the forward (below)
        opt.zero_grad()
        loss = forward()
        loss.backward()

    def sgd_step():
        opt.step()

    def whole_step():
        step()

    # One real step so every parameter has a gradient and momentum buffers exist.
    step()
    cases = []
    if (runtime.INTERPRETED and conv_kernels.conv2d_fwd_autotuned.do_bench is _NO_TIMING
            and hasattr(conv_kernels, "_forward_plan")):  # (the launch plans, absent in older versions)
        # The GPU's conv path: Autotuner dispatch on every call against the launcher's bypass
        # (the tuned config launched directly), both with the kernel stubbed out.
        tensors = (a1.data, conv2.weight.data, conv2.bias.data, c2, mask2)
        geo2, plan = conv_kernels._forward_plan(
            a1.shape, a1.data.stride(), conv2.weight.shape, conv2.weight.data.stride(), True, dtype, 1, 0, 1, 1,
            True, True, runtime.dot_precision(dtype), True, None)[:2]
        plan(tensors)  # tunes, then plan.direct holds the chosen config

        def conv2_fwd_through_autotuner():
            runtime.launch(plan.kernel, plan.grid, tensors + plan.tail, plan.consts, plan.info)

        def conv2_fwd_direct():
            plan(tensors)

        cases += [("conv2d fwd launch via Autotuner.run (GPU path)", conv2_fwd_through_autotuner),
                  ("conv2d fwd launch, tuned config direct", conv2_fwd_direct)]
    cases += [
        ("conv2d fwd+relu (conv2, tape)", conv2_forward),
        ("conv2d backward: dgrad+wgrad (conv2)", conv2_backward),
        ("max_pool2d fwd (pool2, tape)", pool_forward),
        ("max_pool2d bwd (pool2)", pool_backward),
        ("linear fwd+relu (fc1, tape)", linear_forward),
        ("linear bwd: dx+dw+db (fc2)", linear_backward),
        ("cross_entropy fwd (tape)", cross_entropy),
        ("cross_entropy fwd+backward()", cross_entropy_backward),
        ("SGD step (10 params, momentum)", sgd_step),
        ("LeNet forward + loss", forward),
        ("LeNet forward + loss + backward()", backward_only),
        ("LeNet whole step (zero_grad, fwd, bwd, SGD)", whole_step),
    ]
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--mode", choices=("stub", "real"), default=None,
                        help="stub: kernels not executed (default under the interpreter); real: GPU default")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--conv-autotune", action="store_true",
                        help="stub mode: conv launches autotuned as on a GPU (timing stubbed)")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before/after)")
    args = parser.parse_args(argv)
    mode = args.mode or ("stub" if runtime.INTERPRETED else "real")
    if mode == "real" and runtime.INTERPRETED:
        print("note: --mode real under the interpreter times the interpreter's kernels, not host overhead")
    if not runtime.INTERPRETED:
        conv_kernels.set_autotune(True)
    originals = _stub_kernels() if mode == "stub" else []
    if mode == "stub" and args.conv_autotune:
        _stub_autotuning()
    try:
        return _measure(args, mode)
    finally:
        for cls, run in originals:
            cls.run = run


def _measure(args, mode) -> int:
    cases = lenet_cases(args.batch)
    reps = 20 if args.quick else 200
    if mode == "real" and runtime.INTERPRETED:
        reps = 1
    rows = []
    for name, fn in cases:
        before = LAUNCHES[0]
        fn()
        launches = LAUNCHES[0] - before if mode == "stub" else None
        per = reps if "LeNet" not in name else max(1, reps // 10)
        us = time_us(fn, per, repeats=3 if args.quick else 7)
        rows.append({"op": name, "us_per_call": us, "launches": launches,
                     "us_per_launch": (us / launches) if launches else None})
    fwd = next(r["us_per_call"] for r in rows if r["op"] == "LeNet forward + loss")
    fb = next(r["us_per_call"] for r in rows if r["op"] == "LeNet forward + loss + backward()")
    rows.insert(len(rows) - 1, {"op": "LeNet backward() alone (difference)", "us_per_call": fb - fwd,
                                "launches": None, "us_per_launch": None})
    what = ("host Python path, kernels stubbed out (Triton's run() not called)" if mode == "stub"
            else "wall time per call including kernels, device synchronised per timing loop")
    if mode == "stub" and args.conv_autotune:
        what += "; conv autotuned as on a GPU (Autotuner timing stubbed)"
    print(f"# tritonnet host overhead, LeNet-5 batch {args.batch} fp32, mode={mode}: {what}")
    print(f"# {runtime.describe()}")
    print(f"{'op':48s} {'us/call':>10s} {'launches':>9s} {'us/launch':>10s}")
    for r in rows:
        launches = "" if r["launches"] is None else str(r["launches"])
        per_launch = "" if r["us_per_launch"] is None else f"{r['us_per_launch']:.1f}"
        print(f"{r['op']:48s} {r['us_per_call']:10.1f} {launches:>9s} {per_launch:>10s}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "host_overhead.json")
    bench.write_json(path, {"benchmark": "host_overhead", "mode": mode, "what": what, "label": args.label,
                            "batch": args.batch, "environment": bench.environment(), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
