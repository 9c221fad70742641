"""Compiler evidence for the conv kernels without a GPU: each kernel compiled for sm_90 exactly as
the launchers specialise it for a layer (see ``sass.py``), one line per specialisation.

What to look for: the channels-last kernels' operand loads should be ``LDGSTS.E.BYPASS.128``
(16-byte cp.async into shared memory, pipelined over num_stages) and no ``LDG.E.U16`` (the
one-element gathers that made the NCHW kernels latency-bound); ``local 0`` (no spills).

Usage: /opt/venv36/bin/python benchmarks/conv_sass.py [--layer 64,128,16] [--dtype bf16|tf32|fp32]
       [--which fwd,dgrad,wgrad,stage] [--channels-last] [--pool] [--dump DIR]
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
from tritonnet.kernels import conv as K  # noqa: E402

DTYPES = {"bf16": (torch.bfloat16, "highest"), "tf32": (torch.float32, "high"), "fp32": (torch.float32, "highest")}


def _tiles(cfg):
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="64,128,16", help="C_in,C_out,H[,K,pad,batch] (default 3x3, pad 1, batch 512)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--which", default="fwd,dgrad,wgrad,stage")
    parser.add_argument("--channels-last", action="store_true",
                        help="x and grad_out laid out channels-last (no staging; NHWC outputs)")
    parser.add_argument("--pool", action="store_true",
                        help="the forward with its 2x2 max pool fused (conv2d_max_pool2d_forward)")
    parser.add_argument("--dump", help="directory for each specialisation's PTX and SASS")
    args = parser.parse_args(argv)
    layer = [int(v) for v in args.layer.split(",")]
    c_in, c_out, h, k, pad, batch = layer + [3, 1, 512][len(layer) - 3:]  # defaults for K, pad, batch
    dtype, precision = DTYPES[args.dtype]
    which = set(args.which.split(","))
    tn.set_float32_matmul_precision(precision)
    def tensor(shape):
        if not args.channels_last:
            return FakeTensor(dtype, shape)
        n, c, hh, ww = shape
        return FakeTensor(dtype, shape, (hh * ww * c, 1, ww * c, c))

    x = tensor((batch, c_in, h, h))
    w = FakeTensor(dtype, (c_out, c_in, k, k))
    b = FakeTensor(dtype, (c_out,))
    geo = K.geometry(x.shape, w.shape, 1, pad, 1, 1)
    dy = tensor(geo.out_shape)
    mask = FakeTensor(torch.uint8, geo.relu_mask_shape)
    runtime.sm_count = lambda: 132
    seen = set()
    runs = []
    def configs(channels, packed, cl):  # the list the launcher's autotuner would use for this layer
        return cl if geo.channels_last(channels) else packed

    for kind, channels in (("fwd", c_in), ("dgrad", c_out)):
        for cfg in configs(channels, K.FWD_CONFIGS, K.CL_CONFIGS) if kind in which else []:
            tiles = _tiles(cfg)
            if not geo.channels_last(channels):  # as the packed kernels' pruner runs a one-step reduction
                tiles = K._one_step(tiles, channels * k * k)
            with fake_device(runtime) as rec:
                if kind == "fwd" and args.pool:
                    K.conv2d_max_pool2d_forward(x, w, b, padding=pad, activation="relu", config=tiles)
                elif kind == "fwd":
                    K.conv2d_forward(x, w, b, padding=pad, activation="relu", save_relu_mask=True, config=tiles)
                else:
                    K.conv2d_input_grad(dy, w, x.shape, padding=pad, relu_mask=mask, config=tiles,
                                        channels_last=args.channels_last)
            runs.append((cfg, rec.launches))
    wgrad_cl = K.WGRAD_CL_CONFIGS + (K.WGRAD_CL_FMA_CONFIGS if args.dtype == "tf32" else [])
    for cfg in configs(c_in, K.WGRAD_CONFIGS, wgrad_cl) if "wgrad" in which else []:
        with fake_device(runtime) as rec:
            K.conv2d_weight_grad(dy, x, w.shape, padding=pad, relu_mask=mask, bias_grad=True, config=_tiles(cfg))
        runs.append((cfg, rec.launches))
    # the direct wgrad where the layer takes it (its default CO_BLOCK and half of it)
    co_block = K.direct_wgrad_co_block(geo, True) if "wgrad" in which else 0
    for block in sorted({co_block, co_block // 2} - {0}, reverse=True):
        with fake_device(runtime) as rec:
            K.conv2d_weight_grad(dy, x, w.shape, padding=pad, relu_mask=mask, bias_grad=True,
                                 config={**K.DIRECT_WGRAD_TILE, "CO_BLOCK": block})
        runs.append((None, rec.launches))
    for cfg, launches in runs:
        for kernel, kargs, constexprs in launches:
            name = kernel.__name__.replace("_kernel", "")
            if name == "to_channels_last" and "stage" not in which:
                continue
            key = (name, tuple(sorted((k, str(v)) for k, v in constexprs.items())))
            if key in seen:
                continue
            seen.add(key)
            tile = "x".join(str(constexprs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "CO_BLOCK", "T_BLOCK",
                                                          "BLOCK_P") if k in constexprs)
            fma = "_fma" if constexprs.get("FMA_DOT") else ""
            pooled = "_pool" if constexprs.get("POOL") else ""
            label = f"{name}{pooled}_{args.dtype}_{tile}_s{constexprs.get('num_stages', '')}{fma}"
            summarize(label, compile_like_runtime(kernel, kargs, constexprs), args.dump)


if __name__ == "__main__":
    main()
