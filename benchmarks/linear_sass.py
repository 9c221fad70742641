"""Compiler evidence for the linear kernels without a GPU: compile the VGG classifier's products
(fc1 512x2048 -> 256: forward, input grad, weight grad) for sm_90 exactly as the launcher
specialises them on an H100 (132 SMs: fc1's forward splits K in 4), for each tuned tile, and
report what ptxas made of them (see ``sass.py``).

Usage: python3 benchmarks/linear_sass.py [--dtype fp32|tf32|bf16] [--dump DIR]
(triton 3.6, the GPU machines' version; nothing is launched).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sass import FakeTensor, compile_like_runtime, fake_device, summarize  # noqa: E402  (sets TRITON_INTERPRET=0)

import torch  # noqa: E402

import tritonnet as tn  # noqa: E402
from tritonnet import runtime  # noqa: E402
from tritonnet.kernels import linear as L  # noqa: E402

DTYPES = {"fp32": (torch.float32, "highest"), "tf32": (torch.float32, "high"), "bf16": (torch.bfloat16, "highest")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dump", help="directory for each specialisation's TTGIR, PTX and SASS")
    args = parser.parse_args(argv)
    dtype, precision = DTYPES[args.dtype]
    tn.set_float32_matmul_precision(precision)
    runtime.sm_count = lambda: 132  # the H100's
    M, K, N = args.batch, 2048, 256
    x, w, y = FakeTensor(dtype, (M, K)), FakeTensor(dtype, (N, K)), FakeTensor(dtype, (M, N))
    b = FakeTensor(dtype, (N,))
    for cfg in L.TUNE_CONFIGS[4 if dtype == torch.float32 else 2]:
        with fake_device(runtime) as recorder:
            L.linear_forward(x, w, b, "relu", blocks=cfg)
            L.linear_backward(y, x, w, y, need_bias=True, blocks=cfg)
        products = iter(["fwd", "dx", "dw"])  # the matmul launches in order; the rest by kernel
        # TF32 backward: the gated g, then transposed copies of the K-major operands
        others = {"split_k_sum_kernel": "fwd_sum", "relu_backward_kernel": "gate", "to_channels_last_kernel": "stage"}
        for kernel, kargs, constexprs in recorder.launches:
            name = next(products) if kernel.__name__ == "matmul_kernel" else others[kernel.__name__]
            label = f"fc1_{name}_{args.dtype}_{'x'.join(map(str, cfg[:3]))}_w{cfg[3]}s{cfg[4]}"
            summarize(label, compile_like_runtime(kernel, kargs, constexprs), args.dump)


if __name__ == "__main__":
    main()
