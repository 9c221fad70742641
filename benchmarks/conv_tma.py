"""A prototype: the channels-last conv forward with its operand tiles fetched by Hopper's tensor
memory accelerator (TMA), for conv_sweep to time against the library's kernel. Not wired into
tritonnet: the library switches only after an H100 says it is faster.

Why it may be: an implicit-GEMM tile of BLOCK_M output pixels that are whole output rows of one
or more images is, for each kernel tap, a 4-D box of the NHWC input, [images, rows, OW, BLOCK_K]
starting at (n, oh0 + kh - pad, kw - pad, c0); TMA fetches such a box in one instruction and fills
what lies outside the tensor with zeros, which is exactly the padding. No address arithmetic, no
masks, no cp.async per thread: compiled for sm_90 (triton 3.6), the 128x128x64 bf16 tile's loop
is 143 instructions at 106 registers (`UTMALDG.4D` for x, `UTMALDG.2D` for the weight), against
214 at 128 registers for conv2d_fwd_cl_kernel's. The bias and ReLU epilogue is the library's.

Limits of the prototype: stride 1, dilation 1, groups 1, NHWC input, NHWC output, no ReLU mask
for backward; the tile must be whole output rows of whole images or a whole number of rows
inside one image (BLOCK_M divisible by OW, and OH divisible by BLOCK_M / OW or BLOCK_M by OH*OW).
TMA needs 16-byte aligned strides: C_in a multiple of 8 (16-bit) or 4 (fp32), C_out likewise.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from tritonnet import runtime  # noqa: E402
from tritonnet.kernels.layout import to_channels_last  # noqa: E402


@triton.jit
def conv2d_fwd_tma_kernel(x_desc, w_desc, b_ptr, y_ptr, M, OH, C_IN, C_OUT,
                          KH: tl.constexpr, KW: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                          IMAGES: tl.constexpr, ROWS: tl.constexpr, OW: tl.constexpr,
                          HAS_BIAS: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[m, co] = act(sum over (kh, kw, ci) of x[n, oh + kh - PAD_H, ow + kw - PAD_W, ci] * w + b[co]).

    x_desc: [N, H, W, C_IN] (NHWC) with block [IMAGES, ROWS, OW, BLOCK_K], zero outside; w_desc:
    [KH*KW*C_IN, C_OUT] (row = tap*C_IN + ci) with block [BLOCK_K, BLOCK_N]; b: (C_OUT,); y: [M, C_OUT]
    contiguous, M = N*OH*OW. Program (i, j): output pixels [i*BLOCK_M, (i+1)*BLOCK_M), BLOCK_M =
    IMAGES*ROWS*OW (whole rows: image i*BLOCK_M // (OH*OW), first row its remainder // OW), out
    channels [j*BLOCK_N, ...). UPCAST: fp32 operands for tl.dot (bf16 under the interpreter, whose
    bf16 dots are wrong). Grid: (cdiv(M, BLOCK_M), cdiv(C_OUT, BLOCK_N)).
    """
    BLOCK_M: tl.constexpr = IMAGES * ROWS * OW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    first = pid_m * BLOCK_M
    n0 = first // (OH * OW)
    oh0 = (first - n0 * (OH * OW)) // OW
    chunks = tl.cdiv(C_IN, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for step in range(KH * KW * chunks):
        tap = step // chunks
        c0 = (step - tap * chunks) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        a = x_desc.load([n0, oh0 + kh - PAD_H, kw - PAD_W, c0])
        a = tl.reshape(a, [BLOCK_M, BLOCK_K])
        b = w_desc.load([tap * C_IN + c0, pid_n * BLOCK_N])
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    offs_m = first + tl.arange(0, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co < C_OUT, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * C_OUT + co[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m < M)[:, None] & (co < C_OUT)[None, :])


def box(OH: int, OW: int, block_m: int):
    """(IMAGES, ROWS) of a BLOCK_M tile of whole output rows, or None when the shape has none."""
    if block_m % OW:
        return None
    rows = block_m // OW
    if rows <= OH:
        return (1, rows) if OH % rows == 0 else None
    return (rows // OH, OH) if rows % OH == 0 else None


def conv2d_forward_tma(x, weight, bias=None, padding=0, activation=None, config=(128, 128, 64, 8, 3)):
    """y (NHWC memory, [N, C_out, OH, OW] shape) = act(conv2d(x, weight, bias, padding)) for x
    laid out channels-last; ``config`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
    OH, OW = H + 2 * pad_h - KH + 1, W + 2 * pad_w - KW + 1
    block_m, block_n, block_k, warps, stages = config
    shape = box(OH, OW, block_m)
    if shape is None:
        raise ValueError(f"a {block_m}-pixel tile is no whole number of {OW}-pixel rows of {OH}-row images")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("x must be laid out channels-last")
    images, rows = shape
    x_nhwc = x.permute(0, 2, 3, 1)  # the same memory, indexed [N, H, W, C]
    w_rows = to_channels_last(weight.permute(2, 0, 3, 1), name="weight").reshape(KH * KW * C_in, C_out)
    y = torch.empty((N, OH, OW, C_out), dtype=x.dtype, device=x.device)
    x_desc = TensorDescriptor(x_nhwc, list(x_nhwc.shape), list(x_nhwc.stride()), [images, rows, OW, block_k])
    w_desc = TensorDescriptor(w_rows, list(w_rows.shape), list(w_rows.stride()), [block_k, block_n])
    M = N * OH * OW
    grid = (triton.cdiv(M, block_m), triton.cdiv(C_out, block_n))
    conv2d_fwd_tma_kernel[grid](x_desc, w_desc, bias if bias is not None else y, y, M, OH, C_in, C_out,
                                KH=KH, KW=KW, PAD_H=pad_h, PAD_W=pad_w, IMAGES=images, ROWS=rows, OW=OW,
                                HAS_BIAS=bias is not None, RELU=activation == "relu",
                                PRECISION=runtime.dot_precision(x.dtype),
                                UPCAST=runtime.INTERPRETED and x.dtype == torch.bfloat16, BLOCK_N=block_n, BLOCK_K=block_k,
                                num_warps=warps, num_stages=stages)
    return y.permute(0, 3, 1, 2)
