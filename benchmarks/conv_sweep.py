"""Where the CIFAR-shaped convolutions lose to cuDNN: a GPU sweep, device time only.

bench_conv (H100, 2026-11-27) measured the bf16 CIFAR forwards at 0.24-0.30x cuDNN NCHW, and
0.33-0.45x cuDNN channels_last when both read channels_last inputs; TF32 forwards at 0.21-0.26x.
This script splits that up, every number a CUDA-graph replay (triton.testing.do_bench_cudagraph,
device time), in order of what the next decision needs (a budget cuts the tail):

0. LeNet conv1's weight gradient, the LeNet op furthest behind cuDNN (0.56-0.64x in a CUDA graph,
   H100): the direct kernel (conv2d_wgrad_direct_kernel, the default for it now) at its CO_BLOCK
   and half of it, over ~1.5/3/6 programs an SM, against the packed GEMM's first tile and cuDNN,
   in bf16 and fp32.
0b. fp32 (IEEE, FMA) on the VGG step's wide layers (32->64 at 16x16, 64->128 at 8x8, batch 512,
   channels-last as that network runs): the VGG fp32 step is issue 5's main miss (0.81x torch
   eager) and these convolutions are most of it. cuDNN channels_last with TF32 off, ours
   autotuned, then tiles the autotuner does not keep (a 3-programs-an-SM forward, a 128x128 one,
   two wgrads).
1. bf16 CIFAR layers: the NCHW call (staging + kernel + NCHW store) and the channels-last one
   against cuDNN in both layouts and the same GEMM in cuBLAS (torch.mm [M, K] x [K, N], the
   ceiling an implicit GEMM aims at); the TMA prototype (benchmarks/conv_tma.py); staging x as
   NHWC alone; the bias gradient's column sums; the packed RGB stem.
2. TF32 (set_float32_matmul_precision("high")), the forward and dgrad now reading their weight
   K-major: autotuned against cuDNN, then over tiles (dgrad's 8-warp 128x128x32 compiles with
   serialised wgmma, 128x128x64 no longer does); wgrad's tensor-core tiles against its FMA variant.
3. LeNet's and the VGG stem's weight gradients (packed kernel: gathers, so latency-bound; the
   number of programs in flight is what hides it) against cuDNN's, over the number of pixel splits,
   autotuned and then for each of the autotuner's two tiles (LeNet's 32-deep one has the registers
   for 3-4 programs an SM, which only pays with more splits than the rule's ~2 an SM).
4. The bf16 channels-last forward and the packed stem over wider tile sets than the autotuner's.

    python benchmarks/conv_sweep.py [--out DIR] [--budget-s 100]

Writes conv_sweep.json after every row. Under the interpreter it runs tiny cases (smoke).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from tritonnet import runtime  # noqa: E402
from tritonnet.kernels import conv as K  # noqa: E402
from tritonnet.kernels.layout import to_channels_last  # noqa: E402
from tritonnet.kernels.reduce import column_sums  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_tma import box, conv2d_forward_tma  # noqa: E402

# (name, C_in, C_out, H, batch): bench_conv's CIFAR layers, 3x3 pad 1
LAYERS = [("64->128 16x16", 64, 128, 16, 512), ("128->256 8x8", 128, 256, 8, 512)]
STEM = ("3->64 32x32", 3, 64, 32, 512)
# (name, C_in, C_out, H, batch, kernel, padding): LeNet's layers and the VGG's RGB stem; their weight
# gradients are a long reduction over pixels into 150-2400 weights, split across programs (wgrad_split)
SPLIT_LAYERS = [("LeNet conv1 1->6 28x28", 1, 6, 28, 256, 5, 0), ("LeNet conv2 6->16 14x14", 6, 16, 14, 256, 5, 0),
                ("VGG stem 3->32 32x32", 3, 32, 32, 512, 3, 1)]
SPLITS = [64, 128, 256, 512, 1024, 2048]
# the TMA prototype's tile: 8 warps (sm_90 serialises the 4-warp and 128x256 ones' wgmma); one
# tile a precision, since every new kernel's compile comes out of the sweep's budget (TF32's
# 3-stage 128x128x64 pipeline takes 160 KB of shared memory: one program per SM)
TMA_TILES = [(128, 128, 64, 8, 3)]
TMA_TF32_TILES = [(128, 128, 64, 8, 3)]
# (name, C_in, C_out, H, batch): the VGG step's channels-last layers, 3x3 pad 1
VGG_FP32_LAYERS = [("VGG 32->64 16x16", 32, 64, 16, 512), ("VGG 64->128 8x8", 64, 128, 8, 512)]
# fp32 FMA tiles the autotuner's pruner drops (it keeps the two largest of <= 2048 FMAs a thread):
# sm_90, no spills; 128x64x16 takes 168 registers (three 4-warp programs an SM where 128x64x32's
# 202 allow two), 128x128x32 one 8-warp program (FFMA 85% of its loop); wgrad 128x64x32 at 145
# registers (three programs) and 64x64x32 at 93
FP32_FWD_TILES = [(128, 64, 16, 4, 4), (128, 128, 32, 8, 3)]
FP32_DGRAD_TILES = [(128, 32, 32, 4, 4)]
FP32_WGRAD_TILES = [(128, 64, 32, 4, 4), (64, 64, 32, 4, 4)]
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
CL_TILES = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 128, 32, 4, 5),
            (256, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
            (256, 64, 64, 8, 4), (64, 64, 64, 4, 4)]
PACKED_TILES = [(128, 64, 32, 8, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 3), (256, 64, 32, 8, 3),
                (128, 32, 32, 4, 3), (64, 32, 32, 4, 4)]
# TF32: a 64-element fp32 row is 256 bytes, twice the 128-byte swizzle; BLOCK_K 32 halves the
# shared memory per stage (128x128x64 x 3 stages already takes 192 KB)
TF32_FWD_TILES = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 128, 32, 8, 4), (128, 128, 32, 4, 4),
                  (128, 64, 32, 4, 5)]
# dgrad: the 8-warp 128x128x32 TF32 tile compiles with serialised wgmma (ptxas C7515); the
# listed 128x128x64 and these 4-warp and 256-row ones do not
TF32_DGRAD_TILES = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 128, 32, 4, 4), (256, 128, 32, 8, 3)]
# wgrad's tensor-core tiles fill K-major shared memory with 4-byte copies; "fma" = FMA_DOT
TF32_WGRAD_TILES = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4, "fma"), (64, 32, 64, 4, 4, "fma")]

def device_ms(fn):
    import triton.testing

    if runtime.INTERPRETED:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=20)


def tflops(flops):
    """The TFLOP/s column of a row that did ``flops`` in its time (ms)."""
    return lambda ms: round(flops / (ms * 1e-3) / 1e12, 1)


def tiles(t):
    return {"BLOCK_M": t[0], "BLOCK_N": t[1], "BLOCK_K": t[2], "num_warps": t[3], "num_stages": t[4]}


def packed_wgrad_tiles(c_out, k_w, dtype):
    """The packed wgrad configs the autotuner's pruner keeps for a layer, as tiles() tuples."""
    kernel = K.conv2d_wgrad_autotuned
    named = {"x_ptr": torch.empty(1, dtype=dtype), "K_W": k_w, "CG_OUT": c_out}
    kept = kernel.early_config_prune(kernel.configs, named, PRECISION=runtime.dot_precision(dtype))
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) for c in kept]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--budget-s", type=float, default=100.0)
    args = parser.parse_args(argv)
    print(runtime.describe())
    started = time.perf_counter()
    rows = []
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "conv_sweep.json")

    def record(**row):
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        with open(path, "w") as f:
            json.dump({"environment": runtime.describe(), "rows": rows}, f, indent=1)

    def in_budget():
        return time.perf_counter() - started <= args.budget_s

    def timed(layer, what, fn, ref=None, **extra):
        """Record fn's device time (and its error against ``ref``); a failure is a finding too
        (a tile that does not fit shared memory), recorded instead of stopping the sweep."""
        try:
            if ref is not None:
                out = fn()
                extra["rel_err"] = f"{float((out.float() - ref).abs().max() / ref.abs().max()):.1e}"
            ms = device_ms(fn)
        except Exception as exc:
            record(layer=layer, what=what, error=f"{type(exc).__name__}: {exc}"[:200])
            return None
        record(layer=layer, what=what, ms=round(ms, 4), **{k: (v(ms) if callable(v) else v) for k, v in extra.items()})
        return ms

    global LAYERS, STEM, CL_TILES, PACKED_TILES, SPLIT_LAYERS, SPLITS, TF32_FWD_TILES, TF32_DGRAD_TILES, TF32_WGRAD_TILES
    global TMA_TILES, TMA_TF32_TILES, VGG_FP32_LAYERS, FP32_FWD_TILES, FP32_DGRAD_TILES, FP32_WGRAD_TILES
    if runtime.INTERPRETED:  # smoke: tiny layers, one tile each, timings meaningless
        LAYERS, STEM = [("tiny", 16, 16, 4, 1)], ("tiny stem", 3, 16, 4, 1)
        SPLIT_LAYERS, SPLITS = [("tiny LeNet", 1, 6, 8, 2, 5, 0), ("tiny stem", 3, 8, 6, 2, 3, 1)], [3]
        CL_TILES = PACKED_TILES = TF32_FWD_TILES = TF32_DGRAD_TILES = [(16, 16, 16, 4, 1)]
        TF32_WGRAD_TILES = [(16, 16, 16, 4, 1), (16, 16, 16, 4, 1, "fma")]
        TMA_TILES = TMA_TF32_TILES = [(16, 16, 16, 4, 1)]
        VGG_FP32_LAYERS = [("tiny VGG", 16, 16, 4, 1)]
        FP32_FWD_TILES = FP32_DGRAD_TILES = FP32_WGRAD_TILES = [(16, 16, 16, 4, 1)]
        print("interpreter: a smoke run on tiny layers, its timings mean nothing")
    torch.backends.cudnn.benchmark = True
    dev = runtime.device()
    conv = torch.nn.functional.conv2d
    conv_bwd = torch.ops.aten.convolution_backward

    def layer_tensors(c_in, c_out, h, n, k, dtype, scale):
        x = torch.randn(n, c_in, h, h, device=dev, dtype=dtype)
        w = torch.randn(c_out, c_in, k, k, device=dev, dtype=dtype) * scale
        return x, x.contiguous(memory_format=torch.channels_last), w, w.contiguous(memory_format=torch.channels_last)

    # 0. LeNet conv1's weight gradient: the direct kernel against the packed GEMM and cuDNN
    name, c_in, c_out, h, n, k, pad = SPLIT_LAYERS[0]
    geo = K.geometry((n, c_in, h, h), (c_out, c_in, k, k), 1, pad, 1, 1)
    co_block = K.direct_wgrad_co_block(geo, False)
    sms = 1 if runtime.INTERPRETED else runtime.sm_count()
    for dtype in (torch.bfloat16, torch.float32) if in_budget() else ():
        x, _, w, _ = layer_tensors(c_in, c_out, h, n, k, dtype, 0.2)
        gy = torch.randn(geo.out_shape, device=dev, dtype=dtype)
        ref = torch.nn.grad.conv2d_weight(x.float(), w.shape, gy.float(), padding=pad)
        layer = f"{name} {str(dtype)[6:]}"
        timed(layer, "cuDNN wgrad",
              lambda: conv_bwd(gy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False]))
        timed(layer, f"tritonnet wgrad default ({K.wgrad_split(geo, None, co_block)[0]} splits)",
              lambda: K.conv2d_weight_grad(gy, x, w.shape, padding=pad)[0], ref)
        gemm = packed_wgrad_tiles(c_out, c_in * k * k, dtype)[0]
        timed(layer, f"packed GEMM wgrad tile {gemm}",
              lambda: K.conv2d_weight_grad(gy, x, w.shape, padding=pad, config=tiles(gemm))[0], ref)
        for block in sorted({co_block, co_block // 2} - {0}, reverse=True):
            for per_sm in (1.5, 3, 6) if dtype == torch.bfloat16 else (3,):
                split = max(1, round(per_sm * sms / runtime.cdiv(c_out, block)))
                config = {**K.DIRECT_WGRAD_TILE, "CO_BLOCK": block}
                timed(layer, f"direct wgrad CO_BLOCK={block} split_k={split} (~{per_sm} programs an SM)",
                      lambda: K.conv2d_weight_grad(gy, x, w.shape, padding=pad, split_k=split, config=config)[0], ref)

    # 0b. fp32 FMA convolutions of the VGG step, channels-last
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for name, c_in, c_out, h, n in VGG_FP32_LAYERS:
            if not in_budget():
                break
            x, x_cl, w, w_cl = layer_tensors(c_in, c_out, h, n, 3, torch.float32, 0.1)
            gy_cl = torch.randn(n, c_out, h, h, device=dev).contiguous(memory_format=torch.channels_last)
            tf = tflops(2 * n * h * h * c_out * c_in * 9)
            layer = f"{name} fp32"
            ref = conv(x.double(), w.double(), padding=1).float()
            dref = torch.nn.grad.conv2d_input(x.shape, w.double(), gy_cl.double(), padding=1).float()
            wref = torch.nn.grad.conv2d_weight(x.double(), w.shape, gy_cl.double(), padding=1).float()
            timed(layer, "cuDNN channels_last fwd", lambda: conv(x_cl, w_cl, padding=1), tflops=tf)
            for op, mask in (("dgrad", [True, False, False]), ("wgrad", [False, True, False])):
                timed(layer, f"cuDNN channels_last {op}",
                      lambda: conv_bwd(gy_cl, x_cl, w_cl, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask),
                      tflops=tf)
            fwd = lambda config=None: K.conv2d_forward(x_cl, w, padding=1, config=config)  # noqa: E731
            dgrad = lambda config=None: K.conv2d_input_grad(gy_cl, w, x.shape, padding=1,  # noqa: E731
                                                            channels_last=True, config=config)
            wgrad = lambda config=None: K.conv2d_weight_grad(gy_cl, x_cl, w.shape, padding=1, config=config)[0]  # noqa: E731
            for op, fn, r, extra in (("fwd", fwd, ref, FP32_FWD_TILES), ("dgrad", dgrad, dref, FP32_DGRAD_TILES),
                                     ("wgrad", wgrad, wref, FP32_WGRAD_TILES)):
                timed(layer, f"tritonnet NHWC {op} (autotuned)", fn, r, tflops=tf)
                width = c_in if op == "dgrad" else c_out
                for t in extra:
                    if t[1] <= width and in_budget():
                        timed(layer, f"tritonnet NHWC {op} tile {t}", lambda: fn(tiles(t)), r, tflops=tf)
    finally:
        torch.backends.cudnn.allow_tf32 = saved

    # 1. bf16 CIFAR layers: NCHW and channels-last paths against cuDNN and cuBLAS
    dtype = torch.bfloat16
    cifar = {}  # name: (x, x channels-last, w, w channels-last, TFLOP/s column, fp32 reference y)
    for name, c_in, c_out, h, n in LAYERS:
        x, x_cl, w, w_cl = layer_tensors(c_in, c_out, h, n, 3, dtype, 0.05)
        tf = tflops(2 * n * h * h * c_out * c_in * 9)
        ref = conv(x.float(), w.float(), padding=1)
        cifar[name] = (x, x_cl, w, w_cl, tf, ref)
        a = torch.randn(n * h * h, c_in * 9, device=dev, dtype=dtype)
        b = torch.randn(c_in * 9, c_out, device=dev, dtype=dtype)
        timed(name, "cuBLAS mm [M,K]x[K,N]", lambda: torch.mm(a, b), tflops=tf)
        timed(name, "cuDNN NCHW", lambda: conv(x, w, padding=1), tflops=tf)
        timed(name, "cuDNN channels_last", lambda: conv(x_cl, w_cl, padding=1), tflops=tf)
        timed(name, "stage x NCHW->NHWC", lambda: to_channels_last(x),
              gbs=lambda ms: round(2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9, 1))
        timed(name, "tritonnet NCHW in+out (autotuned)", lambda: K.conv2d_forward(x, w, padding=1), ref, tflops=tf)
        timed(name, "tritonnet NHWC in+out (autotuned)", lambda: K.conv2d_forward(x_cl, w, padding=1), ref, tflops=tf)
        for t in TMA_TILES:  # the TMA prototype (benchmarks/conv_tma.py), not yet in the library
            if t[1] <= c_out and box(h, h, t[0]):
                timed(name, f"prototype TMA NHWC tile {t}",
                      lambda: conv2d_forward_tma(x_cl, w, padding=1, config=t), ref, tflops=tf)
        # dgrad (stride 1) is the forward of dy with the weight transposed and flipped, padding
        # k - 1 - pad: the same prototype times what a TMA dgrad would take
        gy_cl = torch.randn(n, c_out, h, h, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w_flip = w.transpose(0, 1).flip(2, 3).contiguous()
        dref = torch.nn.grad.conv2d_input(x.shape, w.float(), gy_cl.float(), padding=1)
        timed(name, "cuDNN channels_last dgrad",
              lambda: conv_bwd(gy_cl, x_cl, w_cl, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]),
              tflops=tf)
        timed(name, "tritonnet NHWC dgrad (autotuned)",
              lambda: K.conv2d_input_grad(gy_cl, w, x.shape, padding=1, channels_last=True), dref, tflops=tf)
        for t in TMA_TILES:
            if t[1] <= c_in and box(h, h, t[0]):
                timed(name, f"prototype TMA NHWC dgrad tile {t}",
                      lambda: conv2d_forward_tma(gy_cl, w_flip, padding=1, config=t), dref, tflops=tf)
        # the channels-last bias gradient, summed apart from the wgrad GEMM
        dy_rows = torch.randn(n * h * h, c_out, device=dev, dtype=dtype)
        timed(name, "tritonnet bias grad (column sums of NHWC dy)", lambda: column_sums(dy_rows),
              dy_rows.float().sum(0), gbs=lambda ms: round(dy_rows.numel() * 2 / (ms * 1e-3) / 1e9, 1))
    name, c_in, c_out, h, n = STEM
    x_stem, x_stem_cl, w_stem, _ = layer_tensors(c_in, c_out, h, n, 3, dtype, 0.2)
    gbs = lambda ms: round(n * c_out * h * h * 2 / (ms * 1e-3) / 1e9, 1)  # noqa: E731  (output bytes)
    timed(name, "cuDNN NCHW", lambda: conv(x_stem, w_stem, padding=1), out_gbs=gbs)
    timed(name, "cuDNN channels_last", lambda: conv(x_stem_cl, w_stem, padding=1), out_gbs=gbs)
    timed(name, "tritonnet packed (autotuned)", lambda: K.conv2d_forward(x_stem, w_stem, padding=1),
          conv(x_stem.float(), w_stem.float(), padding=1), out_gbs=gbs)

    # 2. TF32: forward and dgrad with the weight read K-major, wgrad's tensor-core tiles against its
    # FMA variant; the autotuned calls of every layer first, then the tiles
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    tn_precision = runtime.get_float32_matmul_precision()
    runtime.set_float32_matmul_precision("high")
    try:
        cases = []
        for name, c_in, c_out, h, n in LAYERS:
            x, x_cl, w, w_cl = (t.float() for t in cifar[name][:4])  # .float() keeps channels_last
            gy = torch.randn(n, c_out, h, h, device=dev)
            cases.append(dict(
                layer=f"{name} tf32", c_in=c_in, c_out=c_out, x=x, x_cl=x_cl, w=w, w_cl=w_cl, gy=gy,
                gy_cl=gy.contiguous(memory_format=torch.channels_last),
                tf=cifar[name][4],
                ref=conv(x.double(), w.double(), padding=1).float(),
                dref=torch.nn.grad.conv2d_input(x.shape, w.double(), gy.double(), padding=1).float(),
                wref=torch.nn.grad.conv2d_weight(x.double(), w.shape, gy.double(), padding=1).float()))
        for case in cases:
            if not in_budget():
                break
            layer, x, x_cl, w, w_cl, gy, gy_cl, tf = (case[k] for k in ("layer", "x", "x_cl", "w", "w_cl", "gy",
                                                                        "gy_cl", "tf"))
            timed(layer, "cuDNN NCHW fwd", lambda: conv(x, w, padding=1), tflops=tf)
            timed(layer, "cuDNN channels_last fwd", lambda: conv(x_cl, w_cl, padding=1), tflops=tf)
            timed(layer, "tritonnet NCHW fwd (autotuned)", lambda: K.conv2d_forward(x, w, padding=1), case["ref"],
                  tflops=tf)
            timed(layer, "tritonnet NHWC fwd (autotuned)", lambda: K.conv2d_forward(x_cl, w, padding=1), case["ref"],
                  tflops=tf)
            for t in TMA_TF32_TILES:
                if t[1] <= case["c_out"] and box(x.shape[2], x.shape[3], t[0]):
                    timed(layer, f"prototype TMA NHWC fwd tile {t}",
                          lambda: conv2d_forward_tma(x_cl, w, padding=1, config=t), case["ref"], tflops=tf)
            for op, mask in (("dgrad", [True, False, False]), ("wgrad", [False, True, False])):
                for label, g, xx, ww in (("NCHW", gy, x, w), ("channels_last", gy_cl, x_cl, w_cl)):
                    timed(layer, f"cuDNN {label} {op}",
                          lambda: conv_bwd(g, xx, ww, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask), tflops=tf)
            timed(layer, "tritonnet NCHW dgrad (autotuned)",
                  lambda: K.conv2d_input_grad(gy, w, x.shape, padding=1), case["dref"], tflops=tf)
            timed(layer, "tritonnet NHWC dgrad (autotuned)",
                  lambda: K.conv2d_input_grad(gy_cl, w, x.shape, padding=1, channels_last=True), case["dref"],
                  tflops=tf)
            timed(layer, "tritonnet NHWC wgrad (autotuned)",
                  lambda: K.conv2d_weight_grad(gy_cl, x_cl, w.shape, padding=1)[0], case["wref"], tflops=tf)
        for case in cases:
            layer, x, x_cl, w, gy_cl, tf = (case[k] for k in ("layer", "x", "x_cl", "w", "gy_cl", "tf"))
            for t in TF32_FWD_TILES:
                if t[1] <= case["c_out"] and in_budget():
                    timed(layer, f"tritonnet NHWC fwd tile {t}",
                          lambda: K.conv2d_forward(x_cl, w, padding=1, config=tiles(t)), case["ref"], tflops=tf)
            for t in TF32_DGRAD_TILES:
                if t[1] <= case["c_in"] and in_budget():
                    timed(layer, f"tritonnet NHWC dgrad tile {t}",
                          lambda: K.conv2d_input_grad(gy_cl, w, x.shape, padding=1, channels_last=True,
                                                      config=tiles(t)), case["dref"], tflops=tf)
            for t in TF32_WGRAD_TILES:
                if t[1] <= max(32, case["c_in"]) and in_budget():
                    config = {**tiles(t[:5]), **({"FMA_DOT": True} if t[5:] else {})}
                    timed(layer, f"tritonnet NHWC wgrad tile {t}",
                          lambda: K.conv2d_weight_grad(gy_cl, x_cl, w.shape, padding=1, config=config)[0],
                          case["wref"], tflops=tf)
    finally:
        runtime.set_float32_matmul_precision(tn_precision)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    # 3. packed wgrads: how many pixel splits hide the latency of these small, gather-heavy programs
    for name, c_in, c_out, h, n, k, pad in SPLIT_LAYERS:
        if not in_budget():
            break
        x, _, w, _ = layer_tensors(c_in, c_out, h, n, k, dtype, 0.2)
        oh = h + 2 * pad - k + 1
        gy = torch.randn(n, c_out, oh, oh, device=dev, dtype=dtype)
        timed(name, "cuDNN wgrad",
              lambda: conv_bwd(gy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False]))
        ref = torch.nn.grad.conv2d_weight(x.float(), w.shape, gy.float(), padding=pad)
        splits = [None] + [s for s in SPLITS if s <= n * oh * oh]
        for split in splits:
            if split is not None and not in_budget():
                break
            used = K.wgrad_split(K.geometry(x.shape, w.shape, 1, pad, 1, 1), split)[0]
            timed(name, f"tritonnet wgrad split_k={split} ({used} splits)",
                  lambda: K.conv2d_weight_grad(gy, x, w.shape, padding=pad, split_k=split)[0], ref)
        # the autotuner's two candidates for this layer at every split: it tunes once per layer (the
        # split is not in its key), and a leaner tile (more programs an SM) may want more splits
        for t in packed_wgrad_tiles(c_out, c_in * k * k, dtype):
            for split in splits:
                if not in_budget():
                    break
                timed(name, f"tritonnet wgrad split_k={split} tile {t}",
                      lambda: K.conv2d_weight_grad(gy, x, w.shape, padding=pad, split_k=split, config=tiles(t))[0],
                      ref)

    # 4. bf16 tile sweeps
    for name, c_in, c_out, h, n in LAYERS:
        x, x_cl, w, _, tf, ref = cifar[name]
        for t in CL_TILES:
            if t[1] > c_out or not in_budget():
                continue
            for label, xx in (("NHWC", x_cl), ("NCHW", x)):
                timed(name, f"tritonnet {label} tile {t}",
                      lambda: K.conv2d_forward(xx, w, padding=1, config=tiles(t)), ref, tflops=tf)
    name = STEM[0]
    for t in PACKED_TILES:
        if not in_budget():
            break
        timed(name, f"tritonnet packed tile {t}", lambda: K.conv2d_forward(x_stem, w_stem, padding=1, config=tiles(t)),
              out_gbs=gbs)
    record(done=True, elapsed_s=round(time.perf_counter() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
