"""Where the CIFAR-shaped bf16 convolutions lose to cuDNN: a GPU sweep, device time only.

bench_conv (H100, 2026-11-27) measured the bf16 CIFAR forwards at 0.24-0.30x cuDNN NCHW, and
0.33-0.45x cuDNN channels_last when both read channels_last inputs. This script splits that up,
every number a CUDA-graph replay (triton.testing.do_bench_cudagraph, device time):

- the channels-last forward kernel over a wider set of tiles than the autotuner's list, on
  channels_last inputs (its output is then channels-last too);
- the same GEMM in cuBLAS (torch.mm [M, K] x [K, N]), the ceiling an implicit GEMM aims at;
- the NCHW path's parts: staging x as NHWC alone, and the whole NCHW call (staging + kernel
  with the NCHW store);
- the packed kernel (RGB stem, 3 input channels) over its tiles;
- LeNet's weight gradients against cuDNN's, over the number of pixel splits.

    python benchmarks/conv_sweep.py [--out DIR] [--budget-s 100]

Writes conv_sweep.json after every row. Under the interpreter it runs one tiny case (smoke).
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

# (name, C_in, C_out, H, batch): bench_conv's CIFAR layers, 3x3 pad 1
LAYERS = [("64->128 16x16", 64, 128, 16, 512), ("128->256 8x8", 128, 256, 8, 512)]
STEM = ("3->64 32x32", 3, 64, 32, 512)
# (name, C_in, C_out, H, batch): LeNet's layers, 5x5 no padding; their weight gradients are a long
# reduction over pixels into 150-2400 weights, split across programs (wgrad_split)
LENET = [("LeNet conv1 1->6 28x28", 1, 6, 28, 256), ("LeNet conv2 6->16 14x14", 6, 16, 14, 256)]
SPLITS = [64, 128, 256, 512, 1024]
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
CL_TILES = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 128, 32, 4, 5),
            (256, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
            (256, 64, 64, 8, 4), (64, 64, 64, 4, 4)]
PACKED_TILES = [(128, 64, 32, 8, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 3), (256, 64, 32, 8, 3),
                (128, 32, 32, 4, 3), (64, 32, 32, 4, 4)]


def device_ms(fn):
    import triton.testing

    if runtime.INTERPRETED:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=20)


def tiles(t):
    return {"BLOCK_M": t[0], "BLOCK_N": t[1], "BLOCK_K": t[2], "num_warps": t[3], "num_stages": t[4]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--budget-s", type=float, default=100.0)
    args = parser.parse_args(argv)
    print(runtime.describe())
    started = time.perf_counter()
    rows = []
    path = os.path.join(args.out, "conv_sweep.json")

    def record(**row):
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        with open(path, "w") as f:
            json.dump({"environment": runtime.describe(), "rows": rows}, f, indent=1)

    global LAYERS, STEM, CL_TILES, PACKED_TILES, LENET, SPLITS
    if runtime.INTERPRETED:  # smoke: tiny layers, one tile each, timings meaningless
        LAYERS, STEM = [("tiny", 16, 16, 4, 1)], ("tiny stem", 3, 16, 4, 1)
        LENET, SPLITS = [("tiny LeNet", 1, 6, 8, 2)], [3]
        CL_TILES = PACKED_TILES = [(16, 16, 16, 4, 1)]
        print("interpreter: a smoke run on tiny layers, its timings mean nothing")
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16
    # wgrad: how many pixel splits hide the latency of these small, gather-heavy programs
    conv_bwd = torch.ops.aten.convolution_backward
    for name, c_in, c_out, h, n in LENET:
        x = torch.randn(n, c_in, h, h, device=runtime.device(), dtype=dtype)
        w = torch.randn(c_out, c_in, 5, 5, device=runtime.device(), dtype=dtype) * 0.2
        gy = torch.randn(n, c_out, h - 4, h - 4, device=runtime.device(), dtype=dtype)
        ms = device_ms(lambda: conv_bwd(gy, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]))
        record(layer=name, what="cuDNN wgrad", ms=round(ms, 4))
        ref = torch.nn.grad.conv2d_weight(x.float(), w.shape, gy.float())
        for split in [None] + [s for s in SPLITS if s <= n * (h - 4) ** 2]:
            if split is not None and time.perf_counter() - started > args.budget_s:
                break
            dw, _ = K.conv2d_weight_grad(gy, x, w.shape, split_k=split)
            err = float((dw.float() - ref).abs().max() / ref.abs().max())
            ms = device_ms(lambda: K.conv2d_weight_grad(gy, x, w.shape, split_k=split))
            used = K.wgrad_split(K.geometry(x.shape, w.shape, 1, 0, 1, 1), split)[0]
            record(layer=name, what=f"tritonnet wgrad split_k={split} ({used} splits)", ms=round(ms, 4),
                   rel_err=f"{err:.1e}")
    for name, c_in, c_out, h, n in LAYERS:
        x = torch.randn(n, c_in, h, h, device=runtime.device(), dtype=dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c_out, c_in, 3, 3, device=runtime.device(), dtype=dtype) * 0.05
        w_cl = w.contiguous(memory_format=torch.channels_last)
        flops = 2 * n * h * h * c_out * c_in * 9
        ref = torch.nn.functional.conv2d(x.float(), w.float(), padding=1)
        tf = lambda ms: round(flops / (ms * 1e-3) / 1e12, 1)  # noqa: E731
        a = torch.randn(n * h * h, c_in * 9, device=runtime.device(), dtype=dtype)
        b = torch.randn(c_in * 9, c_out, device=runtime.device(), dtype=dtype)
        ms = device_ms(lambda: torch.mm(a, b))
        record(layer=name, what="cuBLAS mm [M,K]x[K,N]", ms=round(ms, 4), tflops=tf(ms))
        for label, xx, ww in (("cuDNN NCHW", x, w), ("cuDNN channels_last", x_cl, w_cl)):
            ms = device_ms(lambda: torch.nn.functional.conv2d(xx, ww, padding=1))
            record(layer=name, what=label, ms=round(ms, 4), tflops=tf(ms))
        ms = device_ms(lambda: to_channels_last(x))
        record(layer=name, what="stage x NCHW->NHWC", ms=round(ms, 4),
               gbs=round(2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9, 1))
        ms = device_ms(lambda: K.conv2d_forward(x, w, padding=1))
        record(layer=name, what="tritonnet NCHW in+out (autotuned)", ms=round(ms, 4), tflops=tf(ms))
        ms = device_ms(lambda: K.conv2d_forward(x_cl, w, padding=1))
        record(layer=name, what="tritonnet NHWC in+out (autotuned)", ms=round(ms, 4), tflops=tf(ms))
        for t in CL_TILES:
            if t[1] > c_out or time.perf_counter() - started > args.budget_s:
                continue
            for label, xx in (("NHWC", x_cl), ("NCHW", x)):
                try:
                    y = K.conv2d_forward(xx, w, padding=1, config=tiles(t))
                    err = float((y.float() - ref).abs().max() / ref.abs().max())
                    ms = device_ms(lambda: K.conv2d_forward(xx, w, padding=1, config=tiles(t)))
                    record(layer=name, what=f"tritonnet {label} tile {t}", ms=round(ms, 4), tflops=tf(ms),
                           rel_err=f"{err:.1e}")
                except Exception as exc:  # a tile that does not fit (shared memory) is a finding too
                    record(layer=name, what=f"tritonnet {label} tile {t}", error=f"{type(exc).__name__}: {exc}"[:200])

    name, c_in, c_out, h, n = STEM
    x = torch.randn(n, c_in, h, h, device=runtime.device(), dtype=dtype)
    w = torch.randn(c_out, c_in, 3, 3, device=runtime.device(), dtype=dtype) * 0.2
    out_bytes = n * c_out * h * h * 2
    gbs = lambda ms: round(out_bytes / (ms * 1e-3) / 1e9, 1)  # noqa: E731
    for label, xx in (("cuDNN NCHW", x), ("cuDNN channels_last", x.contiguous(memory_format=torch.channels_last))):
        ms = device_ms(lambda: torch.nn.functional.conv2d(xx, w, padding=1))
        record(layer=name, what=label, ms=round(ms, 4), out_gbs=gbs(ms))
    ms = device_ms(lambda: K.conv2d_forward(x, w, padding=1))
    record(layer=name, what="tritonnet packed (autotuned)", ms=round(ms, 4), out_gbs=gbs(ms))
    for t in PACKED_TILES:
        if time.perf_counter() - started > args.budget_s:
            break
        ms = device_ms(lambda: K.conv2d_forward(x, w, padding=1, config=tiles(t)))
        record(layer=name, what=f"tritonnet packed tile {t}", ms=round(ms, 4), out_gbs=gbs(ms))
    record(done=True, elapsed_s=round(time.perf_counter() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
