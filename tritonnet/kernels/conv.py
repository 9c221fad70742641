"""2-D convolution as implicit GEMMs: forward (+bias +ReLU), input gradient (dgrad), weight gradient (wgrad).

No im2col buffer exists in device memory: each kernel computes, per tile, which input element
every (row, reduction index) pair of its GEMM reads, and loads it straight from the operand
(out-of-image positions are masked to zero, which is what padding means).

    forward   y[n, co, oh, ow]      M = N*OH*OW pixels   x  N = C_out/g   reduce over C_in/g * KH * KW
    dgrad     dx[n, ci, ih, iw]     M = N*H*W pixels     x  N = C_in/g    reduce over C_out/g * (valid kh, kw)
    wgrad     dw[co, ci, kh, kw]    M = C_out/g          x  N = C_in/g*KH*KW   reduce over N*OH*OW

Two families of GEMM kernels, chosen per layer by the width of the GEMM's reduction over channels,
and a third for the smallest weight gradients:

- **packed** (narrow layers: < 16 channels per group on the reduced side, LeNet, the RGB stem):
  kernel window and channels are one reduction index ``k = c*KH*KW + kh*KW + kw`` (torch's weight
  layout), gathered straight from NCHW, so C_in = 1 or 3 with a 5x5 window is a reduction of 25
  or 75, not 16 padded channels per tap.
- **channels-last** (``_cl``; >= 16 channels per group, and every 1x1 stride-1 convolution, which
  is then a plain GEMM over channels): the launcher stages the activation operand as NHWC and the
  weight with the GEMM's N side contiguous (``kernels/layout.py``; skipped when x already is
  channels-last). One flat loop walks (tap, channel chunk); each step loads a [pixels, channels]
  tile whose rows are contiguous channels: 16-byte vector loads, which the compiler turns into
  multi-stage asynchronous copies. (The NCHW gather of 16-bit elements is one 2-byte load per
  lane, which cp.async cannot take: the H200 measured those layers at 0.02-0.1x cuDNN.)
- **direct** (wgrad only, ``conv2d_wgrad_direct_kernel``): a weight whose row (C_in/g*KH*KW taps,
  and the bias) fits 32 slots and whose out channels per group fit two register blocks (LeNet's
  first layer, depthwise 3x3 and 5x5). A GEMM tile would pad LeNet's 6x25 weight to 16x32 and
  gather an im2col tile per step; here each thread accumulates one pixel's products in registers.

A 2x2, stride-2 max pool after the forward can run in its epilogue (``conv2d_max_pool2d_forward``,
constexpr POOL): the GEMM's rows then come four to a pool window, so each program holds whole
windows and writes only the pooled values and the pool's one-byte argmax (kernels/pool.py's
format, scan and ReLU gate), never the convolution's output.

dgrad with stride > 1 is launched once per stride phase (input rows ``ih = ph + s*i``); within a
phase only the kernel taps that land on an output pixel contribute, so no zeros are multiplied.
wgrad splits its long reduction across programs (split-K) when the weight is small and the batch
large, writing fp32 partial sums to a workspace that a second kernel adds in a fixed order:
deterministic, no atomics. The bias gradient is a row sum of the same dy tiles, fused into the
packed wgrad (the direct one sums it in a spare slot of the weight row); on the channels-last
path it is one reduction of its own over the staged dy (fused, it doubled the wgrad's registers:
see conv2d_wgrad_cl_kernel).
The ReLU derivative is applied while loading dy (packed) or while staging dy (channels-last), so
there is no separate ReLU-backward pass. It comes from a bit mask the forward's epilogue writes
when a gradient will be needed (``save_relu_mask``, a constexpr: inference compiles and pays
nothing for it), one bit per output element instead of keeping the whole output for backward.
Its layout, ``[C_out, cdiv(M, 8)]`` uint8 with bit ``m % 8`` of byte ``m // 8`` for output pixel
``m = (n*OH + oh)*OW + ow``, follows the forward's GEMM rows: every BLOCK_M tile (a multiple of 8
pixels, aligned) packs whole bytes, so no two programs share a byte.

Tile sizes: ``triton.autotune`` on the GPU over a short config list keyed by the GEMM's N and K
sizes and the dot precision only (the direct wgrad has no tile to tune: see DIRECT_WGRAD_TILE).
A ``config=`` argument fixes the tiles (debugging, tests; for a weight gradient, BLOCK_M/N/K
choose the GEMM, BLOCK_P and CO_BLOCK the direct kernel);
``set_autotune(False)`` uses one fixed config per kernel; under the interpreter one fixed config is always used, large
there because the interpreter's cost is per program and per op. The split-K partition depends on
the shape only, never on the tile picked. One pick changes the arithmetic: in TF32 mode the
channels-last wgrad's candidates include IEEE FMAs (``FMA_DOT``, more precise than TF32), and which
of them wins the timing may differ between processes; TF32 weight gradients are then the same
within a process, and across processes with ``set_autotune(False)``.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from .. import runtime
from .layout import empty_activation, is_channels_last, prefers_channels_last, relu_gate, to_channels_last
from .pool import gate_argmax, pool_geometry, take_max
from .reduce import column_sums

# Channels per group (on the GEMM's reduction side) from which the channels-last kernels are used:
# 16 is one tl.dot depth, and a row of 16 channels is whole 16-byte vectors (32 bytes in bf16).
CHANNELS_LAST_MIN_CHANNELS = 16


# Integer arguments are not specialised (triton would otherwise compile a variant per shape for
# values equal to 1 or divisible by 16): one binary per config serves every layer of a net with
# the same window, which keeps autotuning and warm-up short. The packed kernels' gathers cannot
# use alignment anyway. The channels-last kernels leave their channel counts specialised:
# divisibility by 16 is what tells the compiler a row of channels is 16-byte aligned, so it can
# use vector loads and cp.async. The window (KH, KW) is a constexpr of the forwards and the
# channels-last dgrad: their reduction index is divided by it every step (by a constant, a
# multiply and a shift; sm_90, LeNet conv2's packed forward loop 181 -> 133 instructions).
_SHAPE_ARGS_FWD = [
    'H', 'W', 'OH', 'OW', 'ohw_div', 'ow_div', 'M', 'C_OUT', 'sxn', 'sxc', 'sxh', 'sxw', 'swo', 'swc', 'swh',
    'sww', 'stride_h', 'stride_w', 'pad_h', 'pad_w', 'dil_h', 'dil_w', 'CG_IN', 'CG_OUT', 'K_RED',
    'HAS_BIAS', 'RELU', 'MASK_ROW',
]
_SHAPE_ARGS_DGRAD = [
    'H', 'W', 'OH', 'OW', 'M', 'C_IN', 'HP', 'WP', 'hpwp_div', 'wp_div', 'PH', 'PW', 'sdn', 'sdc', 'sdh', 'sdw',
    'swo', 'swc', 'swh', 'sww', 'stride_h', 'stride_w', 'pad_h', 'pad_w', 'dil_h', 'dil_w', 'KW', 'KH0', 'KW0',
    'KSTEP_H', 'KSTEP_W', 'NKH', 'NKW', 'CG_IN', 'CG_OUT', 'K_RED', 'MASK_ROW',
]
_SHAPE_ARGS_WGRAD = [
    'H', 'W', 'OH', 'OW', 'P', 'C_OUT', 'sdn', 'sdc', 'sdh', 'sdw', 'sxn', 'sxc', 'sxh', 'sxw', 'stride_h',
    'stride_w', 'pad_h', 'pad_w', 'dil_h', 'dil_w', 'KH', 'KW', 'CG_IN', 'CG_OUT', 'K_W', 'SPLIT',
    'P_PER_SPLIT', 'SPLIT_STRIDE', 'MASK_ROW',
]
_GEOMETRY_ARGS_CL = ['H', 'W', 'OH', 'OW', 'stride_h', 'stride_w', 'pad_h', 'pad_w', 'dil_h', 'dil_w', 'KH', 'KW']
_WEIGHT_STRIDES = ['swo', 'swc', 'swh', 'sww']
# the forward's and dgrad's KH and KW are constexprs (their tap loops divide by them)
_GEOMETRY_ARGS_CL_RUNTIME = [a for a in _GEOMETRY_ARGS_CL if a not in ('KH', 'KW')]
_SHAPE_ARGS_FWD_CL = (_GEOMETRY_ARGS_CL_RUNTIME + ['M', 'ohw_div', 'ow_div', 'HAS_BIAS', 'RELU', 'MASK_ROW']
                      + _WEIGHT_STRIDES)
_SHAPE_ARGS_DGRAD_CL = _GEOMETRY_ARGS_CL_RUNTIME + ['M', 'HP', 'WP', 'hpwp_div', 'wp_div', 'PH', 'PW', 'KH0', 'KW0',
                                                    'KSTEP_H', 'KSTEP_W', 'NKH', 'NKW'] + _WEIGHT_STRIDES
_SHAPE_ARGS_WGRAD_CL = _GEOMETRY_ARGS_CL + ['P', 'K_W', 'SPLIT', 'P_PER_SPLIT', 'SPLIT_STRIDE']


@triton.jit
def _mma(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b with fp32 accumulation. DOT_FP32 converts the operands first (bf16 under the
    interpreter, where bf16 dots are broken); on the GPU bf16/fp16 go to the tensor cores as they are."""
    if DOT_FP32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _split_index(flat, H, W):
    """Flat indices of an [N, H, W] grid as (outer, row, column): pixels as (image, row, column),
    reduction indices as (channel, kernel row, kernel column). In int32: an int64 division is a
    ~70-instruction subroutine call on the GPU (the launchers check the sizes fit)."""
    n = flat // (H * W)
    rest = flat - n * (H * W)
    row = rest // W
    return n, row, rest - row * W


@triton.jit
def _divide(n, divisor):
    """n // d for int32 0 <= n < 2**31, ``divisor`` = magic_divisor(d): one 32x32->64-bit multiply
    and a shift, where a division by a runtime value is a ~20-instruction sequence per element
    (sm_90: the packed forward's pixel split was ~400 of the RGB stem's 2040 instructions a thread)."""
    multiplier = (divisor & 0xFFFFFFFF).to(tl.uint64)
    product = n.to(tl.uint32, bitcast=True).to(tl.uint64) * multiplier
    return (product >> (divisor >> 32).to(tl.uint64)).to(tl.int32)


@triton.jit
def _split_index_by(flat, H, W, hw_div, w_div):
    """_split_index with the divisions by H*W and W done by _divide (hw_div, w_div their magic)."""
    n = _divide(flat, hw_div)
    rest = flat - n * (H * W)
    row = _divide(rest, w_div)
    return n, row, rest - row * W


@triton.jit
def _pixel_walk(p_start, H, W, BLOCK: tl.constexpr):
    """(n, row, col) of pixels p_start + [0, BLOCK) of an [N, H, W] grid, and the constant step
    that _advance_pixels adds to move them on by BLOCK pixels. Dividing out once and carrying
    after: two divisions per pixel per step were a third of wgrad's loop on sm_90."""
    n, row, col = _split_index(p_start + tl.arange(0, BLOCK), H, W)
    step_n = BLOCK // (H * W)
    step_h = (BLOCK - step_n * H * W) // W
    return n, row, col, step_n, step_h, BLOCK - step_n * H * W - step_h * W


@triton.jit
def _advance_pixels(n, row, col, step_n, step_h, step_w, H, W):
    """(n, row, col) of pixels p advanced to p + step, step = step_n*H*W + step_h*W + step_w with
    step_h < H and step_w < W: two conditional carries instead of two divisions per pixel."""
    col += step_w
    carry_w = (col >= W).to(tl.int32)
    col -= carry_w * W
    row += step_h + carry_w
    carry_h = (row >= H).to(tl.int32)
    row -= carry_h * H
    return n + step_n + carry_h, row, col


@triton.jit
def _gemm_program(col_tiles):
    """(column tile, row tile, depth index) of this program. Grids are (row tiles * column tiles,
    depth): the row tiles (pixels) can number far more than the 65535 a CUDA grid's y and z axes
    allow (a 224x224 batch of 200 is 78k tiles of 128 pixels), so they share axis 0 with the
    column tiles, which run fastest: neighbouring programs read the same row tile."""
    pid = tl.program_id(0)
    pid_m = pid // col_tiles
    return pid - pid_m * col_tiles, pid_m, tl.program_id(1)


@triton.jit
def _forward_tile(M, OH, OW, ohw_div, ow_div, stride_h, stride_w, pad_h, pad_w, CG_OUT, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, POOL: tl.constexpr):
    """The forward program's tile: (pid_n, pid_m, group, pixel mask, image index, the top-left input
    row and column of each pixel's window, global out channels, channel mask).
    Rows are output pixels m = (n*OH + oh)*OW + ow; with POOL, OH x OW is the 2x2 max pool's
    output grid and rows come four to a pooled pixel q, m = 4*q + 2*dh + dw for conv output pixel
    (2*ph + dh, 2*pw + dw): each window's four pixels are neighbouring rows of one tile.
    ohw_div, ow_div: magic_divisor(OH * OW), magic_divisor(OW).
    Index math in int32 (the launchers check pixel counts and per-image extents fit): an int64
    division is a ~70-instruction subroutine call on the GPU. Only per-image bases are int64."""
    pid_n, pid_m, g = _gemm_program(tl.cdiv(CG_OUT, BLOCK_N))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if POOL:
        n_idx, ph, pw = _split_index_by(offs_m // 4, OH, OW, ohw_div, ow_div)
        oh = 2 * ph + (offs_m // 2) % 2
        ow = 2 * pw + offs_m % 2
    else:
        n_idx, oh, ow = _split_index_by(offs_m, OH, OW, ohw_div, ow_div)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return (pid_n, pid_m, g, offs_m < M, n_idx, oh * stride_h - pad_h, ow * stride_w - pad_w, g * CG_OUT + co,
            co < CG_OUT)


@triton.jit
def _forward_epilogue(acc, b_ptr, y_ptr, mask_ptr, pid_m, g, pid_n, M, C_OUT, OHW, ohw_div, CG_OUT,
                      HAS_BIAS, RELU, MASK_ROW, SAVE_MASK: tl.constexpr, OFFSETS_64: tl.constexpr,
                      OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, CH_ALIGN: tl.constexpr = 1):
    """acc [BLOCK_M pixels, BLOCK_N channels] of program (pid_n, pid_m, g) + bias, ReLU, stored
    into y (NCHW, or NHWC with OUT_NHWC) and the ReLU mask. OFFSETS_64: y has 2**31+ elements.
    PIX_POW2: a power of two dividing OHW (see _store_activation). CH_ALIGN: a power of two
    dividing C_OUT and CG_OUT, promised where they are not specialised (the packed kernel): an
    NHWC tile's rows of channels are then aligned runs, stored as vectors, not one element a thread.
    The tile's indices are derived again here rather than kept live across the main loop: that
    costs registers (sm_90, bf16: 254 instead of 239 for 128x64x64, 96 instead of 80 for 64x16x32)."""
    if CH_ALIGN > 1:
        # (v // CH_ALIGN) * CH_ALIGN == v by the launcher's promise; written so, the compiler sees it
        C_OUT = (C_OUT // CH_ALIGN) * CH_ALIGN
        CG_OUT = (CG_OUT // CH_ALIGN) * CH_ALIGN
    RUN: tl.constexpr = PIX_POW2 if PIX_POW2 < BLOCK_M else BLOCK_M
    offs_m = tl.arange(0, BLOCK_M) + pid_m * BLOCK_M
    m_mask = _run_mask(offs_m, M, RUN)
    n_idx = _divide(offs_m, ohw_div)
    y, co_g, n_mask = _bias_activation(acc, b_ptr, y_ptr, g, pid_n, CG_OUT, HAS_BIAS, RELU, BLOCK_N)
    _store_activation(y_ptr, y, n_idx, offs_m - n_idx * OHW, offs_m, co_g, m_mask, n_mask, C_OUT, OHW,
                      OFFSETS_64, OUT_NHWC, RUN)
    if SAVE_MASK:
        _store_relu_mask(mask_ptr, tl.trans(y), co_g, n_mask, m_mask, pid_m, MASK_ROW, BLOCK_M, BLOCK_N)


@triton.jit
def _bias_activation(acc, b_ptr, y_ptr, g, pid_n, CG_OUT, HAS_BIAS, RELU, BLOCK_N: tl.constexpr):
    """(act(acc + bias) in y's dtype, the tile's global out channels, their mask)."""
    co_g = tl.arange(0, BLOCK_N) + (g * CG_OUT + pid_n * BLOCK_N)
    n_mask = co_g < g * CG_OUT + CG_OUT
    if HAS_BIAS != 0:
        acc += tl.load(b_ptr + co_g, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if RELU != 0:
        acc = tl.where(acc < 0, 0.0, acc)  # written this way so NaN passes through, as in torch.relu
    return acc.to(y_ptr.dtype.element_ty), co_g, n_mask


@triton.jit
def _pool_epilogue(acc, b_ptr, y_ptr, argmax_ptr, pid_m, g, pid_n, M, C_OUT, PHW, phw_div, CG_OUT, HAS_BIAS,
                   RELU, OFFSETS_64: tl.constexpr, OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_ALIGN: tl.constexpr = 1):
    """The forward's epilogue fused with a 2x2, stride-2 max pool: acc [BLOCK_M pixels, BLOCK_N
    channels], rows four to a window (see _forward_tile), + bias, ReLU, then each window's max and
    argmax (``dh * 2 + dw``, as kernels/pool.py writes them) stored into y and argmax, [N, C_OUT,
    PH, PW] (NCHW, or NHWC with OUT_NHWC; PHW = PH*PW, phw_div its magic_divisor, M = 4*N*PHW).
    The conv's own output is never written. The pool compares the values the unfused conv would
    have stored (rounded to y's dtype), by pool.py's scan, so winners, ties and NaN are those of
    conv then max_pool2d; with RELU the argmax also carries the ReLU's gradient gate (pool.py's
    relu_gate).
    PIX_POW2: a power of two dividing PHW; CH_ALIGN: see _forward_epilogue."""
    if CH_ALIGN > 1:
        C_OUT = (C_OUT // CH_ALIGN) * CH_ALIGN
        CG_OUT = (CG_OUT // CH_ALIGN) * CH_ALIGN
    y, co_g, n_mask = _bias_activation(acc, b_ptr, y_ptr, g, pid_n, CG_OUT, HAS_BIAS, RELU, BLOCK_N)
    # [BLOCK_M, N] -> [windows, N, dh, dw], split into the window's four positions; fp32 compares
    # (exact: y is already rounded; bf16 compares are broken under the interpreter)
    quad = tl.permute(tl.reshape(y.to(tl.float32), [BLOCK_M // 4, 2, 2, BLOCK_N]), [0, 3, 1, 2])
    left, right = tl.split(quad)  # dw = 0, 1: [windows, N, dh]
    v00, v10 = tl.split(left)
    v01, v11 = tl.split(right)
    best, best_k = take_max(v01, True, 1, v00, tl.zeros(v00.shape, tl.int32))  # v00 is position 0's
    best, best_k = take_max(v10, True, 2, best, best_k)
    best, best_k = take_max(v11, True, 3, best, best_k)
    if RELU != 0:
        best_k = gate_argmax(best, best_k, 4)
    WINDOWS: tl.constexpr = BLOCK_M // 4
    RUN: tl.constexpr = PIX_POW2 if PIX_POW2 < WINDOWS else WINDOWS
    offs_q = tl.arange(0, WINDOWS) + pid_m * WINDOWS
    q_mask = _run_mask(offs_q, M // 4, RUN)
    n_idx = _divide(offs_q, phw_div)
    pixel = offs_q - n_idx * PHW
    _store_activation(y_ptr, best.to(y_ptr.dtype.element_ty), n_idx, pixel, offs_q, co_g, q_mask, n_mask, C_OUT,
                      PHW, OFFSETS_64, OUT_NHWC, RUN)
    _store_activation(argmax_ptr, best_k.to(argmax_ptr.dtype.element_ty), n_idx, pixel, offs_q, co_g, q_mask,
                      n_mask, C_OUT, PHW, OFFSETS_64, OUT_NHWC, RUN)


@triton.jit
def _run_mask(offs_m, M, RUN: tl.constexpr):
    """offs_m < M, written so that the compiler sees it constant over aligned runs of RUN rows
    (exact when RUN divides M), which lets a store over those rows be one vector store."""
    return offs_m // RUN < M // RUN


@triton.jit
def _row_runs(image_offset, pixel_offset, ROW_POW2: tl.constexpr, BLOCK: tl.constexpr):
    """image_offset + pixel_offset for one tile's pixels (consecutive pixels of an [N, H, W] grid,
    the first at a multiple of ROW_POW2), marked contiguous over aligned runs of min(ROW_POW2,
    BLOCK). The launcher sets ROW_POW2 (a power of two dividing the row length W, or 1) only where
    a row's neighbouring pixels are neighbours in memory, so no run crosses a row. Without the
    hint the div/mod index math hides all contiguity and sm_90 lays gathers out with a warp along
    the other (channel or tap) dimension: one 2-byte load per 32-byte sector. The sum is formed
    here because a hint attaches to the value computed where it is given: on a function argument
    it is silently lost."""
    RUN: tl.constexpr = ROW_POW2 if ROW_POW2 < BLOCK else BLOCK
    return tl.max_contiguous(image_offset + pixel_offset, RUN)


@triton.jit
def _store_activation(ptr, tile, n_idx, pixel, flat_pixel, channel, m_mask, n_mask, C, HW,
                      OFFSETS_64: tl.constexpr, NHWC: tl.constexpr, RUN: tl.constexpr):
    """Store tile [pixels, channels] (in ptr's dtype) at image n_idx, ``pixel`` within it
    (``flat_pixel`` = n_idx*HW + pixel), ``channel`` of a contiguous [N, C, HW] buffer, or with
    NHWC of a contiguous [N, HW, C] one (torch's channels_last).

    RUN (NCHW only; 1 promises nothing): the tile's rows come in aligned runs of RUN pixels that
    are consecutive within one image, i.e. RUN divides HW and the tile's first row, and m_mask is
    constant over each run (see _run_mask).

    Offsets are int32 unless OFFSETS_64: a 64-bit pointer per element for a 128x128 tile is 128
    registers a thread, which made every large tile spill in its epilogue on sm_90."""
    if NHWC:
        if OFFSETS_64:
            offs = flat_pixel.to(tl.int64)[:, None] * C + channel[None, :]
        else:
            offs = (flat_pixel * C)[:, None] + channel[None, :]
        tl.store(ptr + offs, tile, mask=m_mask[:, None] & n_mask[None, :])
    else:
        # NCHW is contiguous along pixels, but the division that splits pixels into images hides
        # that from the compiler, which then laid the store out with a warp across 32 channels of
        # one pixel: 2 bytes into each of 32 sectors, 123 GB/s for the 3->64 forward on an H100
        # (0.55 ms, cuDNN 0.13). The hints below say what RUN guarantees (see the docstring):
        # runs of RUN consecutive addresses starting at multiples of RUN, so threads run along
        # pixels with vector stores.
        tile_t = tl.trans(tile)
        mask = m_mask[None, :] & n_mask[:, None]
        channel_off = tl.multiple_of(channel * HW, RUN)
        if OFFSETS_64:
            base = ptr + n_idx.to(tl.int64) * C * HW + tl.max_contiguous(tl.multiple_of(pixel, RUN), RUN)
            tl.store(base[None, :] + channel_off[:, None], tile_t, mask=mask)
        else:
            pixel_off = tl.max_contiguous(tl.multiple_of(n_idx * (C * HW) + pixel, RUN), RUN)
            tl.store(ptr + (pixel_off[None, :] + channel_off[:, None]), tile_t, mask=mask)


@triton.jit
def _store_relu_mask(mask_ptr, y_t, co_g, n_mask, m_mask, pid_m, MASK_ROW,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pack the [BLOCK_N, BLOCK_M] output tile's ReLU gradient gate into BLOCK_M // 8 bytes per channel.

    The gate is torch's threshold_backward on the stored (rounded) output: pass unless y <= 0, so
    NaN passes and a tiny value rounded to 0 does not. Bits of pixels past M stay 0.
    """
    live = ((y_t.to(tl.float32) <= 0) == 0) & m_mask[None, :]  # fp32: bf16 compares break interpreted
    bits = live.to(tl.int32) << (tl.arange(0, BLOCK_M) % 8)[None, :]
    packed = tl.sum(tl.reshape(bits, [BLOCK_N, BLOCK_M // 8, 8]), axis=2)  # distinct bits: sum == or
    byte = pid_m * (BLOCK_M // 8) + tl.arange(0, BLOCK_M // 8)
    tl.store(mask_ptr + (co_g.to(tl.int64) * MASK_ROW)[:, None] + byte[None, :], packed.to(tl.uint8),
             mask=n_mask[:, None] & (byte < MASK_ROW)[None, :])


@triton.jit
def _store_input_grad(acc, dx_ptr, n_idx, ih, iw, offs_m, M, ci_g, n_mask, C_IN, H, W, OFFSETS_64: tl.constexpr,
                      OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr, BLOCK_M: tl.constexpr):
    """acc [BLOCK_M input pixels (n_idx, ih, iw), BLOCK_N channels ci_g] of rows offs_m < M stored
    into dx (NCHW, or NHWC with OUT_NHWC). PIX_POW2: a power of two dividing H*W when the rows
    are dx's pixels in order (stride 1: one phase), else 1 (see _store_activation)."""
    RUN: tl.constexpr = PIX_POW2 if PIX_POW2 < BLOCK_M else BLOCK_M
    pixel = ih * W + iw
    _store_activation(dx_ptr, acc.to(dx_ptr.dtype.element_ty), n_idx, pixel, n_idx * (H * W) + pixel, ci_g,
                      _run_mask(offs_m, M, RUN), n_mask, C_IN, H * W, OFFSETS_64, OUT_NHWC, RUN)


# ============================================================================ packed (NCHW) kernels
#
# Layout note: NCHW is contiguous along output/input pixels, so every gathered tile is built with
# the pixel index as its LAST dimension ([K, M], then tl.trans into the dot). That alone does not
# make the loads coalesce: when the div/mod index math hides all contiguity, sm_90's TTGIR lays
# these gathers out with a warp's 32 threads along K (one pixel, 32 taps). wgrad tells the compiler
# which pixels are neighbours in memory (_row_runs): its loads then run along pixels and its loop
# is half as long. The forward and dgrad keep the K-wise layout: with the same hint their loops
# grew 2-3x (each thread then holds 16 taps, whose index math is per tap), and they read few bytes;
# whether coalescing pays for that is for a GPU to say (CONV_NOTES.md).


@triton.jit(do_not_specialize=_SHAPE_ARGS_FWD)
def conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mask_ptr,
    H, W, OH, OW, ohw_div, ow_div, M, C_OUT,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    CG_IN, CG_OUT, K_RED, HAS_BIAS, RELU, MASK_ROW,
    KH: tl.constexpr, KW: tl.constexpr, SAVE_MASK: tl.constexpr, OFFSETS_64: tl.constexpr,
    OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr, CH_ALIGN: tl.constexpr, PADDED: tl.constexpr,
    POOL: tl.constexpr, DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = act(conv2d(x, w) + b), reduction over k = c*KH*KW + kh*KW + kw in BLOCK_K chunks.
    One program per (BLOCK_N out channels, BLOCK_M output pixels, group).

    x: [N, C_in, H, W] any strides (sx*). w: [C_out, CG_IN, KH, KW] any strides (sw*).
    b: [C_out] contiguous (read only if HAS_BIAS != 0). y: [N, C_out, OH, OW] contiguous, M = N*OH*OW.
    HAS_BIAS and RELU are runtime ints (0/1): the epilogue branch is free, and fewer specialisations.
    SAVE_MASK (with RELU = 1): also write the ReLU gradient's bit mask, mask: [C_OUT, MASK_ROW] uint8
    contiguous, MASK_ROW = cdiv(M, 8); bit m % 8 of byte m // 8 is set where y[m] passes a gradient.
    Padding is the top/left amount (bottom/right follow from OH, OW). K_RED = CG_IN*KH*KW.
    PADDED: some window reaches into padding; without (LeNet) the gather needs no bounds checks
    (~9 integer instructions per gathered element). PIX_POW2: see _store_activation; CH_ALIGN
    (with OUT_NHWC, else 1): see _forward_epilogue.
    POOL: a 2x2, stride-2 max pool fused into the epilogue (_pool_epilogue): OH, OW are then the
    pool's output grid, M = 4*N*OH*OW, y is the pool's output and mask the pool's argmax
    [N, C_out, OH, OW] uint8 (SAVE_MASK is off: with RELU the argmax carries the gate).
    Grid: (cdiv(CG_OUT, BLOCK_N) * cdiv(M, BLOCK_M), groups) (see _gemm_program).
    """
    pid_n, pid_m, g, m_mask, n_idx, ih0, iw0, co_g, n_mask = _forward_tile(
        M, OH, OW, ohw_div, ow_div, stride_h, stride_w, pad_h, pad_w, CG_OUT, BLOCK_M, BLOCK_N, POOL)
    # every gathered offset is (per-pixel part) + (per-k part): one add per tile element
    x_pix = x_ptr + n_idx.to(tl.int64) * sxn + (g * CG_IN * sxc + ih0 * sxh + iw0 * sxw)
    w_col = co_g * swo

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K_RED, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K_RED
        c, kh, kw = _split_index(k, KH, KW)
        dh = kh * dil_h
        dw = kw * dil_w
        ih = ih0[None, :] + dh[:, None]
        iw = iw0[None, :] + dw[:, None]
        a_mask = m_mask[None, :] & k_mask[:, None]
        if PADDED:
            a_mask = a_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_t = tl.load(x_pix[None, :] + (c * sxc + dh * sxh + dw * sxw)[:, None], mask=a_mask, other=0.0)
        b = tl.load(w_ptr + w_col[None, :] + (c * swc + kh * swh + kw * sww)[:, None],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _mma(tl.trans(a_t), b, acc, DOT_FP32, PRECISION)
    if POOL:
        _pool_epilogue(acc, b_ptr, y_ptr, mask_ptr, pid_m, g, pid_n, M, C_OUT, OH * OW, ohw_div, CG_OUT, HAS_BIAS,
                       RELU, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M, BLOCK_N, CH_ALIGN)
    else:
        _forward_epilogue(acc, b_ptr, y_ptr, mask_ptr, pid_m, g, pid_n, M, C_OUT, OH * OW, ohw_div, CG_OUT,
                          HAS_BIAS, RELU, MASK_ROW, SAVE_MASK, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M, BLOCK_N,
                          CH_ALIGN)


@triton.jit
def _load_dy(dy_img, offs, mask_ptr, co_g, bit, mask, MASK_ROW, RELU: tl.constexpr):
    """dy at pointers ``dy_img + offs`` (dy_img: per pixel, offs: the int32 rest of the offset of
    (co, oh, ow)); with RELU, zero where bit ``bit`` (output pixel (n*OH + oh)*OW + ow) of out
    channel ``co_g``'s row of the forward's bit mask (see _store_relu_mask) is clear.
    Callers build offs and bit as (per-pixel vector) + (per-k vector): one add per element."""
    dy = tl.load(dy_img + offs, mask=mask, other=0.0)
    if RELU:
        dy = relu_gate(dy, mask_ptr, co_g, bit, mask, MASK_ROW)
    return dy


@triton.jit(do_not_specialize=_SHAPE_ARGS_DGRAD)
def conv2d_dgrad_kernel(
    dy_ptr, mask_ptr, w_ptr, dx_ptr,
    H, W, OH, OW, M, C_IN, HP, WP, hpwp_div, wp_div, PH, PW,
    sdn, sdc, sdh, sdw,
    swo, swc, swh, sww,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW,
    KH0, KW0, KSTEP_H, KSTEP_W, NKH, NKW,
    CG_IN, CG_OUT, K_RED, MASK_ROW,
    RELU: tl.constexpr, OFFSETS_64: tl.constexpr, OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx = conv2d's input gradient for the input pixels of one stride phase (ih = PH + stride_h*i),
    reduction over k = co*NKH*NKW + (tap of the phase) in BLOCK_K chunks.

    dy: [N, C_out, OH, OW] any strides (sd*). mask: the forward's ReLU bit mask [C_out, MASK_ROW]
    uint8 (see conv2d_fwd_kernel), read only if RELU.
    w: [C_out, CG_IN, KH, KW] any strides (sw*). dx: [N, C_IN, H, W] contiguous.
    The phase has HP x WP input pixels per image; M = N*HP*WP; hpwp_div, wp_div: magic_divisor of
    HP*WP and WP. Its contributing taps are
    kh = KH0 + KSTEP_H*t (t < NKH), likewise kw; K_RED = CG_OUT*NKH*NKW. A phase no tap reaches
    (NKH or NKW = 0) still writes its zeros. PIX_POW2: see _store_activation.
    Grid: (cdiv(CG_IN, BLOCK_N) * cdiv(M, BLOCK_M), groups).
    """
    pid_n, pid_m, g = _gemm_program(tl.cdiv(CG_IN, BLOCK_N))

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # int32, as in the forward
    m_mask = offs_m < M
    n_idx, i_h, i_w = _split_index_by(offs_m, HP, WP, hpwp_div, wp_div)
    # dy is read at (oh, ow) = (i_h, i_w) + a per-tap constant (below): split into per-pixel parts
    dy_img = dy_ptr + n_idx.to(tl.int64) * sdn
    pix_off = i_h * sdh + i_w * sdw
    pix_bit = (n_idx * OH + i_h) * OW + i_w

    ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ci < CG_IN
    w_col = ci * swc
    co_base = g * CG_OUT

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K_RED, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K_RED
        co_r, t_h, t_w = _split_index(k, NKH, NKW)
        co_g = co_base + co_r
        kh = KH0 + t_h * KSTEP_H
        kw = KW0 + t_w * KSTEP_W
        # oh = (ih + pad_h - kh*dil_h) / stride_h with ih = PH + i_h*stride_h, an exact division
        # (the phase's taps make PH + pad_h - kh*dil_h a multiple of the stride): i_h plus a
        # per-tap constant, so the [BLOCK_K, BLOCK_M] tile needs adds, not divisions.
        doh = (PH + pad_h - kh * dil_h) // stride_h
        dow = (PW + pad_w - kw * dil_w) // stride_w
        oh = i_h[None, :] + doh[:, None]
        ow = i_w[None, :] + dow[:, None]
        a_mask = m_mask[None, :] & k_mask[:, None] & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        a_t = _load_dy(dy_img[None, :], pix_off[None, :] + (co_g * sdc + doh * sdh + dow * sdw)[:, None],
                       mask_ptr, co_g[:, None], pix_bit[None, :] + (doh * OW + dow)[:, None], a_mask,
                       MASK_ROW, RELU)
        b = tl.load(w_ptr + (co_g * swo + kh * swh + kw * sww)[:, None] + w_col[None, :],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _mma(tl.trans(a_t), b, acc, DOT_FP32, PRECISION)
    _store_input_grad(acc, dx_ptr, n_idx, PH + i_h * stride_h, PW + i_w * stride_w, offs_m, M, g * CG_IN + ci,
                      n_mask, C_IN, H, W, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M)


@triton.jit(do_not_specialize=_SHAPE_ARGS_WGRAD)
def conv2d_wgrad_kernel(
    dy_ptr, mask_ptr, x_ptr, dw_ptr,
    H, W, OH, OW, P, C_OUT,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
    CG_IN, CG_OUT, K_W, SPLIT, P_PER_SPLIT, SPLIT_STRIDE, MASK_ROW,
    RELU: tl.constexpr, HAS_BIAS: tl.constexpr, PADDED: tl.constexpr, X_ROW_POW2: tl.constexpr,
    DY_ROW_POW2: tl.constexpr, DY_ALIGNED: tl.constexpr, DY_NHWC: tl.constexpr, DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[co, k] = sum_p dy[p, co] * x_window[p, k] (and db[co] = sum_p dy[p, co]) over one split of p.

    dy: [N, C_out, OH, OW] (sd*), x: [N, C_in, H, W] (sx*), both any strides; mask: the forward's
    ReLU bit mask [C_out, MASK_ROW] uint8 (see conv2d_fwd_kernel), read only if RELU. p runs over
    P = N*OH*OW output pixels, split s of SPLIT covering [s*P_PER_SPLIT, (s+1)*P_PER_SPLIT).
    k = ci*KH*KW + kh*KW + kw, K_W = CG_IN*KH*KW.
    dw: flat buffer; split s writes dw[s*SPLIT_STRIDE + co*K_W + k] for co < C_out, and (HAS_BIAS,
    by the programs with pid_n == 0) db[co] at dw[s*SPLIT_STRIDE + C_OUT*K_W + co]. With SPLIT == 1
    this buffer is the gradient itself, otherwise an fp32 workspace [SPLIT, SPLIT_STRIDE] whose
    column sums (kernels/reduce.py) are the gradient.
    PADDED: as in conv2d_fwd_kernel. X_ROW_POW2, DY_ROW_POW2: see _row_runs (x's and dy's offsets
    along output rows, when stride_w*sxw == 1 and sdw == 1; they also divide P_PER_SPLIT).
    DY_ALIGNED: sdn, sdc and sdh are multiples of DY_ROW_POW2 too, so dy's runs are aligned (vector loads).
    DY_NHWC (0, or a power of two dividing C_OUT and CG_OUT): dy is a contiguous [N, OH, OW, C_out]
    buffer (channels-last; the strides are not read), so pixel p's channels sit at p*C_OUT + co:
    aligned runs of DY_NHWC channels, vector loads along the tile's out channels.
    Grid: (cdiv(K_W, BLOCK_N) * groups*SPLIT, cdiv(CG_OUT, BLOCK_M)).
    """
    if DY_NHWC > 1:
        # (v // DY_NHWC) * DY_NHWC == v by the launcher's promise; written so, the compiler sees it
        C_OUT = (C_OUT // DY_NHWC) * DY_NHWC
        CG_OUT = (CG_OUT // DY_NHWC) * DY_NHWC
    pid_n, pid_z, pid_m = _gemm_program(tl.cdiv(K_W, BLOCK_N))
    g = pid_z // SPLIT
    split = pid_z - g * SPLIT

    co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = co < CG_OUT
    co_g = g * CG_OUT + co

    k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = k < K_W
    ci, kh, kw = _split_index(k, KH, KW)
    ihk = kh * dil_h - pad_h
    iwk = kw * dil_w - pad_w
    x_col = (g * CG_IN + ci) * sxc + ihk * sxh + iwk * sxw  # the per-k part of every x offset
    dy_row = co_g * sdc

    p_start = split * P_PER_SPLIT  # int32 pixel indices (P < 2**31, checked by the launcher)
    p_end = tl.minimum(p_start + P_PER_SPLIT, P)
    DY_RUN: tl.constexpr = DY_ROW_POW2 if DY_ROW_POW2 < BLOCK_K else BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    bias_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_idx, oh, ow, step_n, step_h, step_w = _pixel_walk(p_start, OH, OW, BLOCK_K)
    for p0 in range(p_start, p_end, BLOCK_K):
        # p0 and p_end are multiples of DY_RUN (see DY_ROW_POW2): the mask is constant over its runs
        p = tl.multiple_of(p0 + tl.arange(0, BLOCK_K), DY_RUN)
        p_mask = _run_mask(p, p_end, DY_RUN)
        # p is the bit index of output pixel (n, oh, ow) in the ReLU mask
        tile_mask = m_mask[:, None] & p_mask[None, :]
        if DY_NHWC > 0:
            dy_offs = co_g[:, None] + p.to(tl.int64)[None, :] * C_OUT
            a = _load_dy(dy_ptr, dy_offs, mask_ptr, co_g[:, None], p[None, :], tile_mask, MASK_ROW, RELU)
        elif DY_ALIGNED:
            # runs of DY_RUN pixels contiguous and aligned: 16-byte copies the pipeliner makes
            # asynchronous (one 2-byte load per element and no pipelining for 16-bit dy without)
            dy_offs = dy_row.to(tl.int64)[:, None] + (n_idx.to(tl.int64) * sdn + oh * sdh + ow * sdw)[None, :]
            dy_offs = tl.max_contiguous(tl.multiple_of(dy_offs, [1, DY_RUN]), [1, DY_RUN])
            a = _load_dy(dy_ptr, dy_offs, mask_ptr, co_g[:, None], p[None, :], tile_mask, MASK_ROW, RELU)
        else:
            dy_pix = dy_ptr + _row_runs(n_idx.to(tl.int64) * sdn, oh * sdh + ow * sdw, DY_ROW_POW2, BLOCK_K)
            a = _load_dy(dy_pix[None, :], dy_row[:, None], mask_ptr, co_g[:, None], p[None, :], tile_mask,
                         MASK_ROW, RELU)
        if HAS_BIAS:
            bias_acc += tl.sum(a.to(tl.float32), axis=1)
        oh_s = oh * stride_h
        ow_s = ow * stride_w
        ih = oh_s[None, :] + ihk[:, None]
        iw = ow_s[None, :] + iwk[:, None]
        b_mask = p_mask[None, :] & k_mask[:, None]
        if PADDED:
            b_mask = b_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = x_ptr + _row_runs(n_idx.to(tl.int64) * sxn, oh_s * sxh + ow_s * sxw, X_ROW_POW2, BLOCK_K)
        b_t = tl.load(x_pix[None, :] + x_col[:, None], mask=b_mask, other=0.0)
        acc = _mma(a, tl.trans(b_t), acc, DOT_FP32, PRECISION)
        n_idx, oh, ow = _advance_pixels(n_idx, oh, ow, step_n, step_h, step_w, OH, OW)

    _store_split(dw_ptr, acc, split, SPLIT_STRIDE, (co_g.to(tl.int64) * K_W)[:, None] + k[None, :],
                 m_mask[:, None] & k_mask[None, :])
    if HAS_BIAS:
        if pid_n == 0:  # one program per out-channel tile stores its bias sums
            _store_split(dw_ptr, bias_acc, split, SPLIT_STRIDE, C_OUT * K_W + co_g, m_mask)


@triton.jit
def _store_split(ptr, values, split, SPLIT_STRIDE, offsets, mask):
    """``values`` at ``offsets`` into split ``split``'s slice [split*SPLIT_STRIDE, ...) of a flat
    dw (and db) buffer: the fp32 workspace of the split-K reduce, or with one split the output."""
    tl.store(ptr + split.to(tl.int64) * SPLIT_STRIDE + offsets, values.to(ptr.dtype.element_ty), mask=mask)


_SHAPE_ARGS_WGRAD_DIRECT = ['H', 'W', 'OH', 'OW', 'P', 'C_OUT', 'sdn', 'sdc', 'sdh', 'sdw', 'sxn', 'CG_OUT',
                            'GROUPS', 'P_PER_SPLIT', 'SPLIT_STRIDE', 'MASK_ROW']


@triton.jit(do_not_specialize=_SHAPE_ARGS_WGRAD_DIRECT)
def conv2d_wgrad_direct_kernel(
    dy_ptr, mask_ptr, x_ptr, dw_ptr,
    H, W, OH, OW, P, C_OUT,
    sdn, sdc, sdh, sdw, sxn,
    CG_OUT, GROUPS, P_PER_SPLIT, SPLIT_STRIDE, MASK_ROW,
    sxc: tl.constexpr, sxh: tl.constexpr, sxw: tl.constexpr,
    stride_h: tl.constexpr, stride_w: tl.constexpr, pad_h: tl.constexpr, pad_w: tl.constexpr,
    dil_h: tl.constexpr, dil_w: tl.constexpr, CG_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, HAS_BIAS: tl.constexpr, PADDED: tl.constexpr,
    CO_BLOCK: tl.constexpr, T_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dw[co, t] = sum_p dy[p, co] * x_window[p, t] (and db[co] = sum_p dy[p, co]) over one split of
    p, without a GEMM: for weights too small for one (LeNet's first layer, 6x25; depthwise 3x3), where
    a tl.dot tile pads 6 out channels to 16 and 25 taps to 32 and its im2col gather costs more than
    the products (the packed kernel spends 46-55 warp instructions a pixel on LeNet's conv1 in
    fp32, this one 15-17; sm_90, see CONV_NOTES.md).

    Each thread owns one output pixel p of a BLOCK_P step and accumulates all CO_BLOCK x T_BLOCK
    products for it in registers (acc[p, t, co]: P first, so that Triton lays every load and the
    accumulator out alike, one pixel per thread, and no layout conversion enters the loop); the
    pixel axis is summed once, after the loop. With the window, the strides of x and the geometry
    constexpr, each tap is a load at a constant offset from the pixel's address, and padded tap
    slots (t >= K_W) compile to nothing.

    dy: [N, C_out, OH, OW] (sd*), x: [N, C_in, H, W] (sxn, sxc, sxh, sxw), any strides, int32
    offsets; mask: the forward's ReLU bit mask [C_out, MASK_ROW] uint8 (see _store_relu_mask), read
    only if RELU. t = ci*KH*KW + kh*KW + kw < K_W = CG_IN*KH*KW (torch's weight layout); with
    HAS_BIAS, slot t = K_W (< T_BLOCK) multiplies dy by 1: db. p runs over P = N*OH*OW output
    pixels, split s covering [s*P_PER_SPLIT, (s+1)*P_PER_SPLIT). dw: as conv2d_wgrad_kernel's (split
    s writes dw[s*SPLIT_STRIDE + co*K_W + t] and db at [s*SPLIT_STRIDE + C_OUT*K_W + co]).
    Grid: (SPLIT * GROUPS * cdiv(CG_OUT, CO_BLOCK),), the out-channel blocks of one split and
    group next to each other (they read the same x: the second finds it in L2).
    """
    K_W: tl.constexpr = CG_IN * KH * KW
    co_tiles = tl.cdiv(CG_OUT, CO_BLOCK)
    pid = tl.program_id(0)
    block = pid // co_tiles
    co_tile = pid - block * co_tiles
    split = block // GROUPS
    g = block - split * GROUPS
    co = co_tile * CO_BLOCK + tl.arange(0, CO_BLOCK)
    co_mask = co < CG_OUT
    co_g = g * CG_OUT + co

    t = tl.arange(0, T_BLOCK)
    ci, kh, kw = _split_index(t, KH, KW)  # by constants of a constant: known per register
    tap_h, tap_w = kh * dil_h - pad_h, kw * dil_w - pad_w  # each tap's row and column offset
    ihk, iwk = tap_h[None, :, None], tap_w[None, :, None]
    x_tap = (ci * sxc + tap_h * sxh + tap_w * sxw)[None, :, None]
    # dead slots are left out of the accumulation; written as a product by 0 they would stay (NaN rules)
    tap = (t < K_W)[None, :, None]
    live = (t < K_W + HAS_BIAS)[None, :, None]
    dy_ch = co_g[None, None, :] * sdc
    co_mask3 = co_mask[None, None, :]
    x_group = x_ptr + g * CG_IN * sxc

    p_start = split * P_PER_SPLIT
    p_end = tl.minimum(p_start + P_PER_SPLIT, P)
    acc = tl.zeros([BLOCK_P, T_BLOCK, CO_BLOCK], dtype=tl.float32)
    n_idx, oh, ow, step_n, step_h, step_w = _pixel_walk(p_start, OH, OW, BLOCK_P)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P))[:, None, None]
        p_mask = p < p_end
        dy_mask = p_mask & co_mask3
        dy_pix = (n_idx * sdn + oh * sdh + ow * sdw)[:, None, None]
        dy = tl.load(dy_ptr + (dy_pix + dy_ch), mask=dy_mask, other=0.0).to(tl.float32)
        if RELU:
            dy = relu_gate(dy, mask_ptr, co_g[None, None, :], p, dy_mask, MASK_ROW)
        oh_s = (oh * stride_h)[:, None, None]
        ow_s = (ow * stride_w)[:, None, None]
        x_mask = p_mask
        if PADDED:
            # unsigned compares: a negative row is a large one, so one test covers both bounds; the
            # row's test is then one predicated compare per tap on top of each column's (with p's)
            in_row = (oh_s + ihk).to(tl.uint32, bitcast=True) < H
            x_mask = in_row & (((ow_s + iwk).to(tl.uint32, bitcast=True) < W) & p_mask)
        x_pix = x_group + (n_idx[:, None, None] * sxn + oh_s * sxh + ow_s * sxw)
        x = tl.load(x_pix + x_tap, mask=x_mask & tap, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = tl.where(t[None, :, None] == K_W, 1.0, x)
        acc = tl.where(live, acc + dy * x, acc)
        n_idx, oh, ow = _advance_pixels(n_idx, oh, ow, step_n, step_h, step_w, OH, OW)

    dw_part = tl.trans(tl.sum(acc, axis=0))  # [CO_BLOCK, T_BLOCK]
    _store_split(dw_ptr, dw_part, split, SPLIT_STRIDE, co_g[:, None] * K_W + t[None, :],
                 co_mask[:, None] & (t < K_W)[None, :])
    if HAS_BIAS:
        _store_split(dw_ptr, dw_part, split, SPLIT_STRIDE, C_OUT * K_W + co_g[:, None] + 0 * t[None, :],
                     co_mask[:, None] & (t == K_W)[None, :])


# ============================================================================ channels-last kernels
#
# Operands are staged so that the GEMM's reduction (channels) is contiguous: x or dy as NHWC
# [pixels, C], the weight with its N side contiguous. Every tile is then [rows, contiguous
# columns] with row offsets that are multiples of the (specialised) channel counts, which is what
# lets the compiler emit 16-byte vector loads and pipeline them with cp.async over num_stages.
# A single flat loop over (tap, channel chunk) keeps the loop the compiler pipelines long (a
# 3x3 tap loop around a 2-iteration channel loop would give it nothing to overlap).


@triton.jit
def _load_nhwc(ptr, pixel, C, first_channel, channel, pixel_mask, channel_mask):
    """The [pixels, channels] tile of a contiguous [pixels, C] (NHWC) operand at rows ``pixel``
    and columns first_channel + ``channel``, 0 where masked. Rows are whole 16-byte vectors
    when C and first_channel are multiples of 8 (they are specialised for that)."""
    return tl.load(ptr + (pixel.to(tl.int64) * C + first_channel)[:, None] + channel[None, :],
                   mask=pixel_mask[:, None] & channel_mask[None, :], other=0.0)


@triton.jit
def _load_weight_tap(w_ptr, rows, cols, kh, kw, KH, KW, ROW_LEN, COL_LEN, s_row, s_col, swh, sww, row_mask, col_mask,
                     W_LAYOUT: tl.constexpr):
    """The [rows, cols] (GEMM [K, N]) tile of the weight at tap (kh, kw), 0 where masked.

    W_LAYOUT 1 (N-major): the staged [rows, KH, KW, COL_LEN] contiguous copy, cols contiguous.
    W_LAYOUT 2 (K-major): the staged [cols, KH, KW, ROW_LEN] contiguous copy, rows contiguous:
    TF32 wgmma takes its B operand from shared memory K-major only, and an N-major tile reached it
    through 4-byte copies (sm_90: 96 LDGSTS.E per thread per step for the 128x128x64 forward
    instead of 24 16-byte ones).
    W_LAYOUT 0: torch's layout in place, rows and cols strided by s_row and s_col.
    (The forward's rows are in channels and cols out channels; dgrad's the other way round.)
    """
    if W_LAYOUT == 1:
        off = (((rows * KH + kh) * KW + kw) * COL_LEN)[:, None] + cols[None, :]
    elif W_LAYOUT == 2:
        off = rows[:, None] + (((cols * KH + kh) * KW + kw) * ROW_LEN)[None, :]
    else:
        off = (rows * s_row + kh * swh + kw * sww)[:, None] + (cols * s_col)[None, :]
    return tl.load(w_ptr + off, mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit(do_not_specialize=_SHAPE_ARGS_FWD_CL)
def conv2d_fwd_cl_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mask_ptr,
    H, W, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr,
    M, ohw_div, ow_div, HAS_BIAS, RELU, MASK_ROW, swo, swc, swh, sww,
    C_IN, C_OUT, CG_IN, CG_OUT,
    SAVE_MASK: tl.constexpr, OFFSETS_64: tl.constexpr, OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr,
    W_LAYOUT: tl.constexpr, POOL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = act(conv2d(x, w) + b) from channels-last operands; reduction over (tap, channel chunk).

    x: [N, H, W, C_IN] contiguous (NHWC).
    w: the GEMM's B, W_LAYOUT (see _load_weight_tap) 1: [CG_IN, KH, KW, C_OUT] contiguous (out
    channels contiguous; bf16/fp16 and IEEE fp32), 2: [C_OUT, KH, KW, CG_IN] contiguous (TF32),
    0: torch's [C_OUT, CG_IN, KH, KW] with strides sw* (neither side's rows would be whole 16-byte
    vectors, and staging would cost a launch).
    b, y, mask, M, HAS_BIAS, RELU, MASK_ROW, SAVE_MASK, POOL: as in conv2d_fwd_kernel (y is NCHW,
    or NHWC with OUT_NHWC).
    Grid: (cdiv(CG_OUT, BLOCK_N) * cdiv(M, BLOCK_M), groups).
    """
    pid_n, pid_m, g, m_mask, n_idx, ih0, iw0, co_g, n_mask = _forward_tile(
        M, OH, OW, ohw_div, ow_div, stride_h, stride_w, pad_h, pad_w, CG_OUT, BLOCK_M, BLOCK_N, POOL)
    pix0 = (n_idx * H + ih0) * W + iw0  # x's pixel under tap (0, 0); int32, may be off-image (masked)
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    chunks = tl.cdiv(CG_IN, BLOCK_K)
    # channel chunks outermost: the divisions are by the constexpr window (a multiply and a shift)
    for step in range(0, KH * KW * chunks):
        chunk, kh, kw = _split_index(step, KH, KW)
        c = chunk * BLOCK_K + offs_k
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        sp_mask = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = pix0 + (kh * dil_h * W + kw * dil_w)
        c_mask = c < CG_IN
        a = _load_nhwc(x_ptr, pix, C_IN, g * CG_IN, c, sp_mask, c_mask)
        b = _load_weight_tap(w_ptr, c, co_g, kh, kw, KH, KW, CG_IN, C_OUT, swc, swo, swh, sww, c_mask, n_mask,
                             W_LAYOUT)
        acc = _mma(a, b, acc, DOT_FP32, PRECISION)
    if POOL:
        _pool_epilogue(acc, b_ptr, y_ptr, mask_ptr, pid_m, g, pid_n, M, C_OUT, OH * OW, ohw_div, CG_OUT, HAS_BIAS,
                       RELU, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M, BLOCK_N)
    else:
        _forward_epilogue(acc, b_ptr, y_ptr, mask_ptr, pid_m, g, pid_n, M, C_OUT, OH * OW, ohw_div, CG_OUT,
                          HAS_BIAS, RELU, MASK_ROW, SAVE_MASK, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=_SHAPE_ARGS_DGRAD_CL)
def conv2d_dgrad_cl_kernel(
    dy_ptr, w_ptr, dx_ptr,
    H, W, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr,
    M, HP, WP, hpwp_div, wp_div, PH, PW, KH0, KW0, KSTEP_H, KSTEP_W, NKH, NKW, swo, swc, swh, sww,
    C_IN, C_OUT, CG_IN, CG_OUT,
    OFFSETS_64: tl.constexpr, OUT_NHWC: tl.constexpr, PIX_POW2: tl.constexpr, W_LAYOUT: tl.constexpr,
    ALL_TAPS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx for one stride phase (see conv2d_dgrad_kernel) from channels-last operands.

    dy: [N, OH, OW, C_OUT] contiguous, the ReLU gate already applied (staged with the mask).
    w: W_LAYOUT 1: [C_OUT, KH, KW, CG_IN] contiguous (in channels, the GEMM's N, contiguous),
    2: [CG_IN, KH, KW, C_OUT] contiguous (K-major, TF32), 0: torch's [C_OUT, CG_IN, KH, KW] with
    strides sw* (see conv2d_fwd_cl_kernel). dx: [N, C_IN, H, W] contiguous.
    Reduction over (out-channel chunk, tap of the phase). ALL_TAPS: this phase has every tap
    (NKH, NKW = KH, KW; KH0 = KW0 = 0, unit steps), as with stride 1.
    Grid: (cdiv(CG_IN, BLOCK_N) * cdiv(M, BLOCK_M), groups).
    """
    pid_n, pid_m, g = _gemm_program(tl.cdiv(CG_IN, BLOCK_N))

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    n_idx, i_h, i_w = _split_index_by(offs_m, HP, WP, hpwp_div, wp_div)
    pix0 = (n_idx * OH + i_h) * OW + i_w  # dy's pixel for a tap with (doh, dow) = (0, 0)

    ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ci < CG_IN
    offs_k = tl.arange(0, BLOCK_K)

    # dy's row offset of tap t_h is doh0 - t_h * doh_step; both divisions are exact (the phase's
    # taps are those where they are, KSTEP_H * dil_h is a multiple of the stride), and hoisted
    doh0 = (PH + pad_h - KH0 * dil_h) // stride_h
    dow0 = (PW + pad_w - KW0 * dil_w) // stride_w
    doh_step = KSTEP_H * dil_h // stride_h
    dow_step = KSTEP_W * dil_w // stride_w
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    chunks = tl.cdiv(CG_OUT, BLOCK_K)
    for step in range(0, NKH * NKW * chunks):
        # channel chunks outermost; with every tap in this phase (stride 1) NKH, NKW are the
        # constexpr window, and the divisions are by constants
        if ALL_TAPS:
            chunk, t_h, t_w = _split_index(step, KH, KW)
        else:
            chunk, t_h, t_w = _split_index(step, NKH, NKW)
        c = chunk * BLOCK_K + offs_k
        kh = KH0 + t_h * KSTEP_H
        kw = KW0 + t_w * KSTEP_W
        doh = doh0 - t_h * doh_step
        dow = dow0 - t_w * dow_step
        oh = i_h + doh
        ow = i_w + dow
        sp_mask = m_mask & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        pix = pix0 + (doh * OW + dow)
        c_mask = c < CG_OUT
        co_g = g * CG_OUT + c
        a = _load_nhwc(dy_ptr, pix, C_OUT, g * CG_OUT, c, sp_mask, c_mask)
        b = _load_weight_tap(w_ptr, co_g, ci, kh, kw, KH, KW, C_OUT, CG_IN, swo, swc, swh, sww, c_mask, n_mask,
                             W_LAYOUT)
        acc = _mma(a, b, acc, DOT_FP32, PRECISION)
    _store_input_grad(acc, dx_ptr, n_idx, PH + i_h * stride_h, PW + i_w * stride_w, offs_m, M, g * CG_IN + ci,
                      n_mask, C_IN, H, W, OFFSETS_64, OUT_NHWC, PIX_POW2, BLOCK_M)


@triton.jit(do_not_specialize=_SHAPE_ARGS_WGRAD_CL)
def conv2d_wgrad_cl_kernel(
    dy_ptr, x_ptr, dw_ptr,
    H, W, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
    P, K_W, SPLIT, P_PER_SPLIT, SPLIT_STRIDE,
    C_IN, C_OUT, CG_IN, CG_OUT,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FMA_DOT: tl.constexpr = False,
):
    """dw over one split of the pixels, from channels-last operands; one program per (tap,
    BLOCK_N in channels) x BLOCK_M out channels, so both operand tiles are contiguous rows.

    The bias gradient is a column sum of dy of its own (kernels/reduce.py): summed here, it
    kept the dy tile in registers as well as in shared memory in every program, though only one
    program in KH*KW*CI_TILES stores it (sm_90 bf16: 128x128x64 loop 369 -> 279 instructions and
    190 -> 127 registers without it, so two 8-warp programs fit per SM; 128x64x64 539 -> 354 and
    236 -> 126).

    FMA_DOT (an autotune variant for TF32): IEEE fp32 FMAs instead of TF32 wgmma. Both operand
    tiles here run along channels, the GEMM's M and N, but TF32 wgmma reads shared memory K-major
    only: the compiler fills it with 4-byte copies (sm_90: 192 LDGSTS.E per thread per step for
    128x128x64), and the H100 measured the TF32 64->128 wgrad at 0.70 ms against cuDNN's 0.15.
    FMAs need no transpose; the autotuner times both (FMAs are at least TF32's precision).

    dy: [P, C_OUT] = [N, OH, OW, C_OUT] contiguous, the ReLU gate already applied. x: [N, H, W, C_IN]
    contiguous. dw, SPLIT, P_PER_SPLIT, SPLIT_STRIDE, K_W = CG_IN*KH*KW: as in conv2d_wgrad_kernel.
    Grid: (KH*KW*cdiv(CG_IN, BLOCK_N) * groups*SPLIT, cdiv(CG_OUT, BLOCK_M)).
    """
    CI_TILES = tl.cdiv(CG_IN, BLOCK_N)
    pid_n, pid_z, pid_m = _gemm_program(KH * KW * CI_TILES)
    g = pid_z // SPLIT
    split = pid_z - g * SPLIT
    kh, kw, ci_tile = _split_index(pid_n, KW, CI_TILES)

    co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = co < CG_OUT
    co_g = g * CG_OUT + co
    ci = ci_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ci < CG_IN

    p_start = split * P_PER_SPLIT
    p_end = tl.minimum(p_start + P_PER_SPLIT, P)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    n_idx, oh, ow, step_n, step_h, step_w = _pixel_walk(p_start, OH, OW, BLOCK_K)
    for p0 in range(p_start, p_end, BLOCK_K):
        p = p0 + tl.arange(0, BLOCK_K)
        p_mask = p < p_end
        a_t = _load_nhwc(dy_ptr, p, C_OUT, g * CG_OUT, co, p_mask, m_mask)
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        sp_mask = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = (n_idx * H + ih) * W + iw
        b = _load_nhwc(x_ptr, pix, C_IN, g * CG_IN, ci, sp_mask, n_mask)
        if FMA_DOT:
            acc = _mma(tl.trans(a_t), b, acc, DOT_FP32, "ieee")
        else:
            acc = _mma(tl.trans(a_t), b, acc, DOT_FP32, PRECISION)
        n_idx, oh, ow = _advance_pixels(n_idx, oh, ow, step_n, step_h, step_w, OH, OW)

    _store_split(dw_ptr, acc, split, SPLIT_STRIDE,
                 (co_g.to(tl.int64) * K_W)[:, None] + ((ci * KH + kh) * KW + kw)[None, :],
                 m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------- tile configurations


def _cfg(bm, bn, bk, warps, stages, maxnreg=None, **variant):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, **variant}, num_warps=warps,
                         num_stages=stages, maxnreg=maxnreg)


# GPU candidates for the packed kernels (narrow layers). GEMM-N (out channels for fwd, in channels
# for dgrad) is small there, so the list spans BLOCK_N 16..128 and prunes by the actual size;
# BLOCK_M 128 keeps the long pixel dimension busy. Chosen from the sm_90 compiler's output
# (benchmarks/conv_sass.py; CONV_NOTES.md): every gathered element holds a 64-bit address and a
# predicate, so 128-row tiles need 8 warps not to spill (fp32 128x32x32 with 4 warps: 90 local
# loads/stores per loop iteration on the padded RGB stem, 0 with 8). Capped at 128 registers, the
# 128x64x32 tile runs two 8-warp programs per SM.
FWD_CONFIGS = [
    _cfg(128, 16, 32, 8, 3),
    _cfg(64, 16, 32, 4, 3),  # twice the programs for LeNet's dgrad (392 -> 784 on 132 SMs)
    _cfg(128, 32, 32, 8, 3),
    _cfg(128, 64, 32, 8, 3, maxnreg=128),
    _cfg(128, 64, 32, 8, 3),
    _cfg(128, 128, 32, 8, 3),
]
# (128x128x64 with 8 warps is gone: 4.1 vs 3.1 instructions per 1000 MACs in its loop, with spills.)
# wgrad: GEMM-M is out channels, GEMM-N the weight row (C_in*KH*KW), the reduction the pixels.
# The former 128x64x64/4-warp, 128x128x64 and 64x32x128 (fp32) tiles spilled in the pixel loop.
WGRAD_CONFIGS = [
    _cfg(16, 32, 64, 4, 3),  # LeNet: 16x32x128 spilled 84-108 registers in its loop (fp32/tf32), this none
    # LeNet's 6-channel weights, a latency-bound pixel loop: half the depth, 146/128 registers
    # (fp32/bf16) against 193/182, so 3-4 programs an SM instead of 2, for 14-19% more
    # instructions per pixel; the autotuner times both (the pruner keeps two 16-row tiles)
    _cfg(16, 32, 32, 4, 3),
    _cfg(32, 32, 64, 8, 3),  # the RGB stem's 32 out channels in one tile: its gather is not done twice
    _cfg(64, 32, 64, 8, 3),
    _cfg(64, 64, 32, 8, 3),
    _cfg(128, 64, 32, 8, 3),
    _cfg(128, 128, 32, 8, 3),
]
# Channels-last kernels: vector loads hold one address per 8 elements, not per element, so these
# are ordinary Hopper GEMM tiles with deeper pipelines. From the sm_90 compiler's output
# (benchmarks/conv_sass.py): none spills inside its loop, whose operand loads are all 16-byte
# cp.async; 256x128 and 128x256 tiles spilled ~150 registers around the loop and are not listed.
CL_CONFIGS = [
    _cfg(64, 16, 16, 4, 4),  # LeNet conv2's dgrad (16 out channels, 6 in): loop 2-3x leaner than packed
    _cfg(128, 16, 16, 4, 4),
    # 32 in channels (the VGG's 32->64 layer) cap BLOCK_K at 32, which left only the 16-wide tiles
    # above: 128x16x16 issues 20 warp instructions per 1000 bf16 MACs in its loop, 128x64x32 3.6
    # (fp32 FMAs: 53% -> 80% of the loop), no spills in bf16, TF32 or fp32
    _cfg(128, 32, 32, 4, 4),
    _cfg(128, 64, 32, 4, 4),
    _cfg(128, 32, 64, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(128, 128, 64, 8, 3),
    # 10% faster than 128x128x64 on the 128->256 bf16 forward (H100 sweep, 2026-11-27); it spills
    # around the loop, not in it. Its TF32 pipeline (288 KB) exceeds shared memory: pruned there.
    _cfg(128, 256, 64, 8, 3),
]
WGRAD_CL_CONFIGS = [
    _cfg(64, 32, 64, 4, 4),  # 32 in channels per tap: a 64-wide tile would mask half its columns
    _cfg(64, 64, 64, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(128, 128, 64, 8, 3),
]
# TF32 only: the same kernel with FMAs (FMA_DOT, see conv2d_wgrad_cl_kernel), tiles of <= 2048
# FMAs per thread (sm_90 fp32: no spills, FFMAs 74% of the 64x64x64 loop)
WGRAD_CL_FMA_CONFIGS = [
    _cfg(64, 32, 64, 4, 4, FMA_DOT=True),
    _cfg(64, 64, 64, 4, 4, FMA_DOT=True),
]


# The direct wgrad (conv2d_wgrad_direct_kernel) has no tile to autotune: every thread does one
# pixel's products whatever BLOCK_P is; occupancy is set by its registers (CO_BLOCK) and the pixel
# split (wgrad_split). A weight row of up to 32 slots (taps and the bias) and up to 112 fp32
# accumulators a thread (LeNet conv1: 4 x 26, 165 registers on sm_90, no spills).
DIRECT_WGRAD_TILE = {"BLOCK_P": 128, "num_warps": 4}
DIRECT_WGRAD_SLOTS = 32
DIRECT_WGRAD_ACCUMULATORS = 112


@functools.lru_cache(maxsize=None)
def _shared_memory_bytes() -> int:
    """Shared memory one program may use on this GPU (an H100's 227 KB under the interpreter)."""
    if runtime.INTERPRETED:
        return 227 * 1024
    from triton.runtime import driver

    return driver.active.utils.get_device_properties(torch.cuda.current_device())["max_shared_mem"]


def _prune(configs, width: int, depth: int, ieee: bool, esize: int, rows_key="BLOCK_N", depth_key="BLOCK_K"):
    """Keep configs whose tiles do not dwarf the GEMM-N size ``width`` and the reduction chunk
    ``depth`` and whose pipeline (num_stages operand tiles of ``esize``-byte elements) fits in
    shared memory; at most the two largest survivors (list order among equal sizes), since each
    config is a compile and a benchmark.
    An IEEE-fp32 dot is unrolled into FMAs, so there only tiles of <= 2048 FMAs per thread."""
    np2 = runtime.next_power_of_2
    limit = _shared_memory_bytes()
    kept = [c for c in configs
            if c.kwargs[rows_key] <= max(16, np2(width)) and c.kwargs[depth_key] <= max(32, np2(depth))
            and c.num_stages * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * esize <= limit]
    if ieee:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]
                <= 2048 * 32 * c.num_warps] or kept
    if not kept:
        smallest = min(c.kwargs[rows_key] for c in configs)
        kept = [c for c in configs if c.kwargs[rows_key] == smallest]
    return sorted(kept, key=lambda c: -c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])[:2]


def _pruner(width_arg, depth_arg, rows_arg=None, one_step=False):
    """An early_config_prune for a kernel whose GEMM-N size, reduction chunk size (and, for
    wgrad, GEMM-M size) are the named arguments. Configs with FMA_DOT are candidates for TF32
    only: the best-fitting one joins the two tensor-core candidates there. ``one_step``: the
    depth argument is the whole reduction (packed kernels), and a config covering it in one step
    runs unpipelined (_one_step)."""
    def prune(configs, named_args, **kwargs):
        if rows_arg is not None:
            rows = runtime.next_power_of_2(named_args[rows_arg])
            configs = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, rows)] or configs[:1]
        depth = named_args[depth_arg] if depth_arg else 1 << 30
        esize = next(v.element_size() for v in named_args.values() if isinstance(v, torch.Tensor))
        precision = kwargs.get("PRECISION")
        fma = [c for c in configs if c.kwargs.get("FMA_DOT")]
        kept = _prune([c for c in configs if not c.kwargs.get("FMA_DOT")], named_args[width_arg], depth,
                      precision == "ieee", esize)
        if fma and precision == "tf32" and esize == 4:
            kept += _prune(fma, named_args[width_arg], depth, True, esize)[:1]
        if one_step:
            kept = [c if c.kwargs["BLOCK_K"] < depth or c.num_stages == 1 else
                    triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=1, maxnreg=c.maxnreg) for c in kept]
        return kept
    return prune


def _quick_bench(fn, quantiles):
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def _autotuned(kernel, configs, key, prune):
    # PRECISION in the key: IEEE and TF32 prune to different candidates (FMA tiles, TF32 variants),
    # so a config tuned in one mode must not be reused in the other (the dtypes are keyed by Triton)
    return triton.autotune(configs, key=key + ["PRECISION"], do_bench=_quick_bench,
                           prune_configs_by={"early_config_prune": prune})(kernel)


conv2d_fwd_autotuned = _autotuned(conv2d_fwd_kernel, FWD_CONFIGS, ["CG_OUT", "K_RED"],
                                  _pruner("CG_OUT", "K_RED", one_step=True))
conv2d_dgrad_autotuned = _autotuned(conv2d_dgrad_kernel, FWD_CONFIGS, ["CG_IN", "K_RED"],
                                    _pruner("CG_IN", "K_RED", one_step=True))
conv2d_wgrad_autotuned = _autotuned(conv2d_wgrad_kernel, WGRAD_CONFIGS, ["CG_OUT", "K_W"],
                                    _pruner("K_W", None, rows_arg="CG_OUT"))
conv2d_fwd_cl_autotuned = _autotuned(conv2d_fwd_cl_kernel, CL_CONFIGS, ["CG_OUT", "CG_IN"], _pruner("CG_OUT", "CG_IN"))
conv2d_dgrad_cl_autotuned = _autotuned(conv2d_dgrad_cl_kernel, CL_CONFIGS, ["CG_IN", "CG_OUT"],
                                       _pruner("CG_IN", "CG_OUT"))
conv2d_wgrad_cl_autotuned = _autotuned(conv2d_wgrad_cl_kernel, WGRAD_CL_CONFIGS + WGRAD_CL_FMA_CONFIGS,
                                       ["CG_OUT", "CG_IN"], _pruner("CG_IN", None, rows_arg="CG_OUT"))


def _interpreter_config(kind: str) -> dict:
    """The fixed config under the interpreter: few, large programs (its cost is per program and op).

    One size per kernel, so the specialisations CI compiles for sm_90 stay few; BLOCK_M*N*K stays
    near 2**19 because an IEEE-fp32 dot is unrolled into FMAs and ptxas time grows with it
    (512x64x64 takes 10-25 s to compile; 512x32x32 and 32x32x256 with 16 warps compile in about
    a second, as 256x32x32 and 32x32x128 did). Rows and the wgrad's pixels are where the
    interpreter's programs and loop steps come from: a digits_cnn training step (batch 64) went
    from 1.8 s to 1.0 s with 512 rows, 256-pixel wgrad steps and the flat staging tiles (layout.py).
    """
    if kind == "wgrad":  # the pixels are the reduction: a deep K means fewer loop steps
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 256, "num_warps": 16, "num_stages": 1}
    if kind == "wgrad_direct":  # one pixel per thread, as on the GPU: the same registers to compile
        return {"BLOCK_P": 512, "num_warps": 16}
    return {"BLOCK_M": 512, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 16, "num_stages": 1}


# Autotuning on the GPU. Tests switch it off (set_autotune(False)): they launch many shapes once
# each, where compiling every candidate config costs far more than it saves; they then get one
# fixed GPU-sized config per kernel.
AUTOTUNE = not runtime.INTERPRETED


def set_autotune(enabled: bool) -> bool:
    """Turn GPU autotuning on or off (always off under the interpreter); returns the previous value."""
    global AUTOTUNE
    previous, AUTOTUNE = AUTOTUNE, bool(enabled) and not runtime.INTERPRETED
    return previous


def _fixed_config(kind: str) -> dict:
    """Without autotuning: modest GPU tiles (quick to compile, fine for the small shapes of tests)."""
    if runtime.INTERPRETED:
        return _interpreter_config(kind)
    if kind == "wgrad":
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2}
    if kind == "wgrad_direct":
        return DIRECT_WGRAD_TILE
    return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}


def magic_divisor(d: int) -> int:
    """(multiplier | shift << 32) such that n // d == (n * multiplier) >> shift for every
    0 <= n < 2**31 (_divide): Granlund and Montgomery's round-up method for 31-bit numerators,
    multiplier = 2**(31 + l) // d + 1 with l = ceil(log2 d), which is below 2**32. Between 2**36
    and 2**39 as a Python int, so Triton types the argument int64 whatever d is (one specialisation)."""
    if d < 1 or d >= 2**31:
        raise ValueError(f"divisor must be in [1, 2**31), got {d}")
    shift = 31 + (d - 1).bit_length()
    return (2**shift // d + 1) | shift << 32


def _one_step(config, depth):
    """``config`` with num_stages 1 when its BLOCK_K covers the whole reduction ``depth`` (None:
    unknown), else as it is. The software pipeline issues the loads of num_stages - 1 steps ahead
    of the first; a one-step loop (the RGB stem's 27, LeNet conv1's 25) then computes the gather's
    addresses and masks for steps that do not exist: sm_90, fp32 stem 128x32x32, 2832 instructions
    a thread at 3 stages, 2040 at 1; TF32 2280 -> 1552; bf16, whose gather is not pipelined, the same."""
    if depth is None or config["BLOCK_K"] < depth or config.get("num_stages") == 1:
        return config
    return {**config, "num_stages": 1}


def _split_config(config):
    config = dict(config)
    options = {k: config.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in config}
    return config, options


# ----------------------------------------------------------------------------- argument handling


class ConvGeometry:
    """Validated shapes and options of one conv2d: everything the three kernels need."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups):
        if len(x_shape) != 4:
            raise ValueError(f"x must be 4-D (N, C_in, H, W), got {len(x_shape)}-D with shape {tuple(x_shape)}")
        if len(w_shape) != 4:
            raise ValueError(f"weight must be 4-D (C_out, C_in/groups, KH, KW), got {len(w_shape)}-D "
                             f"with shape {tuple(w_shape)}")
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if groups > 65535:  # one grid row of programs per group; a CUDA grid's y axis stops there
            raise ValueError(f"groups must be at most 65535, got {groups}")
        self.N, self.C_in, self.H, self.W = (int(v) for v in x_shape)
        self.C_out, self.CG_IN, self.KH, self.KW = (int(v) for v in w_shape)
        self.groups = groups
        if self.C_in % groups:
            raise ValueError(f"groups={groups} must divide x's channels (C_in={self.C_in})")
        if self.C_out % groups:
            raise ValueError(f"groups={groups} must divide weight's out channels (C_out={self.C_out})")
        if self.CG_IN * groups != self.C_in:
            raise ValueError(f"channel mismatch: weight expects C_in = {self.CG_IN} * groups {groups} = "
                             f"{self.CG_IN * groups} input channels, x has {self.C_in}")
        if min(self.N, self.C_out, self.CG_IN, self.KH, self.KW) < 1:
            raise ValueError(f"x {tuple(x_shape)} and weight {tuple(w_shape)} must have no empty dimension")
        self.CG_OUT = self.C_out // groups
        self.stride = runtime.pair(stride, "stride")
        self.dilation = runtime.pair(dilation, "dilation")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation!r}")
        eff_h = self.dilation[0] * (self.KH - 1) + 1
        eff_w = self.dilation[1] * (self.KW - 1) + 1
        if isinstance(padding, str):
            if padding == "valid":
                pad_total = (0, 0)
            elif padding == "same":
                if self.stride != (1, 1):
                    raise ValueError(f"padding='same' needs stride 1 (as in torch), got stride={stride!r}")
                pad_total = (eff_h - 1, eff_w - 1)
            else:
                raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
            # torch puts the odd extra row/column of 'same' padding at the bottom/right
            self.padding = (pad_total[0] // 2, pad_total[1] // 2)
        else:
            self.padding = runtime.pair(padding, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"padding must be >= 0, got {padding!r}")
            pad_total = (2 * self.padding[0], 2 * self.padding[1])
        padded_h, padded_w = self.H + pad_total[0], self.W + pad_total[1]
        if eff_h > padded_h or eff_w > padded_w:
            raise ValueError(f"kernel size (dilated) {eff_h}x{eff_w} is larger than the padded input "
                             f"{padded_h}x{padded_w} (x spatial {self.H}x{self.W}, padding {padding!r})")
        self.OH = (padded_h - eff_h) // self.stride[0] + 1
        self.OW = (padded_w - eff_w) // self.stride[1] + 1

    @property
    def out_shape(self):
        return (self.N, self.C_out, self.OH, self.OW)

    @property
    def relu_mask_shape(self):
        """The ReLU gradient's bit mask: per out channel, one bit per output pixel (N*OH*OW)."""
        return (self.C_out, runtime.cdiv(self.N * self.OH * self.OW, 8))

    @property
    def macs(self) -> int:
        return self.N * self.OH * self.OW * self.C_out * self.CG_IN * self.KH * self.KW

    @property
    def windows_inside(self) -> bool:
        """Whether every window lies inside x: no top/left padding and the last window ends in
        the image ('same' with an even kernel pads only at the bottom/right)."""
        return (self.padding == (0, 0)
                and (self.OH - 1) * self.stride[0] + self.dilation[0] * (self.KH - 1) < self.H
                and (self.OW - 1) * self.stride[1] + self.dilation[1] * (self.KW - 1) < self.W)

    @property
    def plain_gemm(self) -> bool:
        return (self.KH, self.KW, self.stride, self.padding) == (1, 1, (1, 1), (0, 0))

    def channels_last(self, channels: int) -> bool:
        """Whether a GEMM reducing over ``channels`` channels per group (plus the window) runs on
        channels-last operands: wide layers, and every 1x1 stride-1 convolution (a plain GEMM)."""
        return self.plain_gemm or channels >= CHANNELS_LAST_MIN_CHANNELS

    def cl_scalars(self):
        """The leading scalar arguments of the channels-last kernels."""
        return (self.H, self.W, self.OH, self.OW, *self.scalars(), self.KH, self.KW)

    def scalars(self):
        return (self.stride[0], self.stride[1], self.padding[0], self.padding[1],
                self.dilation[0], self.dilation[1])


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=256, typed=True)
def _cached_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    return ConvGeometry(x_shape, w_shape, stride, padding, dilation, groups)


def geometry(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """ConvGeometry, memoised: a training step asks for the same few layers' geometry every call,
    and at LeNet sizes the launch's host time matters as much as the kernel's."""
    try:
        return _cached_geometry(tuple(x_shape), tuple(w_shape), _hashable(stride), _hashable(padding),
                                _hashable(dilation), groups)
    except TypeError:  # something unhashable: validate without the cache (it raises the proper error)
        return ConvGeometry(x_shape, w_shape, stride, padding, dilation, groups)


def _check_pair(x, weight, bias=None):
    runtime.check_tensor(x, "x", ndim=None)
    runtime.check_tensor(weight, "weight", ndim=None)
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if bias is not None:
        runtime.check_tensor(bias, "bias", ndim=1)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (one per out channel), "
                             f"got {tuple(bias.shape)}")


def _dot_flags(dtype):
    # bf16 dots are broken in the interpreter: convert to fp32 there; GPU keeps bf16 tensor-core operands
    return {"DOT_FP32": bool(runtime.INTERPRETED and dtype == torch.bfloat16),
            "PRECISION": runtime.dot_precision(dtype)}


_INT32_MAX = 2**31 - 1
# Outputs with more elements than this are stored with 64-bit offsets (see _store_activation).
OFFSETS_64_ABOVE = _INT32_MAX


def _check_int32_indexing(geo, images=(), weight=None):
    """The kernels index pixels and offsets inside one image in int32 (int64 only for the image's
    base): refuse shapes where that could overflow. ``images`` are [N, C, H, W] tensors (any
    strides), checked from their second dimension on."""
    _check_int32_layouts(geo, [(t.shape, t.stride()) for t in images],
                         None if weight is None else (weight.shape, weight.stride()))


def _check_int32_layouts(geo, images=(), weight=None):
    """_check_int32_indexing on (shape, strides) pairs, for the launch plans (which see no tensors)."""
    pixels = geo.N * max(geo.H * geo.W, geo.OH * geo.OW)
    extent = max(geo.C_in * geo.H * geo.W, geo.C_out * geo.OH * geo.OW)
    for shape, strides in images:
        extent = max(extent, sum((d - 1) * abs(st) for d, st in zip(shape[1:], strides[1:])) + 1)
    if weight is not None:
        extent = max(extent, sum((d - 1) * abs(st) for d, st in zip(*weight)) + 1)
    if pixels > _INT32_MAX or extent > _INT32_MAX:
        raise ValueError(f"conv2d shapes too large for 32-bit pixel indexing: {pixels} pixels, "
                         f"{extent} elements per image (limit {_INT32_MAX})")


def _check_activation(activation):
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def _gemm_grid(rows, cols, depth, blocks):
    """(row tiles * column tiles, depth): see _gemm_program."""
    return (runtime.cdiv(cols, blocks["BLOCK_N"]) * runtime.cdiv(rows, blocks["BLOCK_M"]), depth)


# ----------------------------------------------------------------------------- launch plans
#
# A training step launches the same few layers with the same shapes every call, and at LeNet sizes
# the host's time per launch matters as much as the kernel's. So everything a launch needs that
# depends only on shapes, strides, dtype and options (validation of the geometry, the int32 guard,
# grid, scalar arguments, constexprs, the profiler's LaunchInfo) is computed once per such key by a
# memoised plan builder; a call then only checks its tensors, allocates outputs and launches.
# Errors are raised by the builder and never cached, so bad arguments raise on every call.


class _Launch:
    """One launch's shape-dependent parts: kernel, grid, the scalar arguments that follow the
    tensor arguments, constexprs (with tiles and compile options) and the LaunchInfo.

    An autotuned launch goes through the Autotuner once; its chosen config is then kept here and
    later calls launch the kernel directly with it (same kernel, config and grid as the Autotuner
    would use: the plan's key fixes every argument of the Autotuner's key), skipping the
    Autotuner's per-call dicts over ~35 arguments and its key rebuild."""

    __slots__ = ("kernel", "grid", "tail", "consts", "info", "direct")

    def __init__(self, kernel, grid, tail, consts, info):
        self.kernel, self.grid, self.tail, self.consts, self.info = kernel, grid, tail, consts, info
        self.direct = None

    def __call__(self, tensors):
        if self.direct is not None:
            kernel, grid, consts = self.direct
            runtime.launch(kernel, grid, tensors + self.tail, consts, self.info)
            return
        runtime.launch(self.kernel, self.grid, tensors + self.tail, self.consts, self.info)
        if isinstance(self.kernel, Autotuner) and getattr(self.kernel, "best_config", None) is not None:
            chosen = self.kernel.best_config.all_kwargs()
            self.direct = (self.kernel.fn, self.grid(chosen), {**self.consts, **chosen})


def _config_key(config):
    return None if config is None else tuple(sorted(dict(config).items()))


def _planned(builder, *key):
    """``builder(*key)`` memoised; unhashable options (which the builder rejects) bypass the cache."""
    try:
        return builder(*key)
    except TypeError:
        return builder.__wrapped__(*key)


def _gemm_launch(kernel, autotuned, kind, rows, cols, groups, tail, consts, info, config, depth=None):
    """The _Launch of a forward or dgrad GEMM: autotuned on the GPU unless ``config`` fixes the tiles.
    ``depth``: a packed kernel's reduction length (see _one_step; a given config is kept as it is)."""
    if config is None and AUTOTUNE:
        return _Launch(autotuned, lambda meta: _gemm_grid(rows, cols, groups, meta), tail, consts, info)
    blocks, options = _split_config(dict(config) if config is not None else _one_step(_fixed_config(kind), depth))
    grid = _gemm_grid(rows, cols, groups, blocks)
    return _Launch(kernel, grid, tail, {**consts, **blocks, **options}, info)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ----------------------------------------------------------------------------- launchers


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                   config=None, save_relu_mask=False):
    """y = activation(conv2d(x, weight) + bias), torch semantics, one launch (plus the staging of
    the operands as channels-last for wide layers, see the module docstring).

    x: [N, C_in, H, W] (any strides), weight: [C_out, C_in/groups, KH, KW], bias: [C_out] or None,
    all one float dtype. Returns y [N, C_out, OH, OW] in that dtype, contiguous, or
    channels-last when x is (torch's memory-format rule); with
    ``save_relu_mask`` (needs activation="relu") returns ``(y, mask)``, mask being the ReLU
    gradient's bit mask that conv2d_input_grad / conv2d_weight_grad take as ``relu_mask``
    (uint8 ``ConvGeometry.relu_mask_shape``, 1 bit per output element). ``config``
    (``BLOCK_M``/``BLOCK_N``/``BLOCK_K`` and optionally ``num_warps``/``num_stages``) fixes the
    tiles instead of autotuning (always fixed under the interpreter).
    """
    relu = _check_activation(activation)
    if save_relu_mask not in (False, True):
        raise TypeError(f"save_relu_mask must be a bool, got {save_relu_mask!r}")
    if save_relu_mask and not relu:
        raise ValueError(f"save_relu_mask needs activation='relu', got activation={activation!r}")
    y, mask, _ = _forward(x, weight, bias, stride, padding, dilation, groups, relu, bool(save_relu_mask), False,
                          config)
    return (y, mask) if save_relu_mask else y


def conv2d_max_pool2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                              config=None):
    """max_pool2d(activation(conv2d(x, weight) + bias), kernel_size=2) in one launch: the
    convolution's output is pooled in the forward's epilogue and never written.

    Arguments as conv2d_forward's. Returns ``(out, argmax, pool_geometry)`` as
    ``pool.max_pool2d_forward`` would for the convolution's output (torch's floor-mode output
    size; an odd last row or column of the convolution is not computed, no window reads it):
    the same values, winners, ties and NaN, channels-last when x is, and with activation="relu"
    the pool's ``relu_gate`` argmax (the ReLU's gradient gate included), which
    ``pool.max_pool2d_backward`` turns into the gated gradient of the convolution's output.
    """
    return _forward(x, weight, bias, stride, padding, dilation, groups, _check_activation(activation), False, True,
                    config)


def _forward(x, weight, bias, stride, padding, dilation, groups, relu, save_relu_mask, pool, config):
    """The launch behind both forwards: (y, the ReLU mask or the pool's argmax (or y), pool geometry)."""
    _check_pair(x, weight, bias)
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    geo, launch, stage_x, w_layout, out_nhwc, pool_geo = _planned(
        _forward_plan, x.shape, x.stride(), weight.shape, weight.stride(), bias is not None, x.dtype,
        _hashable(stride), _hashable(padding), _hashable(dilation), groups, relu, save_relu_mask,
        runtime.dot_precision(x.dtype), AUTOTUNE, _config_key(config), pool)
    if stage_x:
        x = to_channels_last(x)
    if w_layout != W_TORCH:
        weight = _staged_weight(weight, in_channels_contiguous=w_layout == W_K_MAJOR)
    if pool:
        y = empty_activation(pool_geo.output_shape, x.dtype, out_nhwc)
        second = empty_activation(pool_geo.output_shape, pool_geo.argmax_dtype, out_nhwc)
    else:
        y = empty_activation(geo.out_shape, x.dtype, out_nhwc)
        second = runtime.empty(geo.relu_mask_shape, torch.uint8) if save_relu_mask else y
    launch((x, weight, bias if bias is not None else y, y, second))
    return y, second, pool_geo


@functools.lru_cache(maxsize=512)
def _forward_plan(x_shape, x_stride, w_shape, w_stride, has_bias, dtype, stride, padding, dilation, groups, relu,
                  save_mask, precision, autotune, config, pool=False):
    """(geometry, _Launch, stage x?, the weight's W_LAYOUT, y channels-last?, the pool's geometry or
    None) of conv2d_forward, or with ``pool`` of conv2d_max_pool2d_forward; ``precision`` and
    ``autotune`` key the global settings."""
    geo = geometry(x_shape, w_shape, stride, padding, dilation, groups)
    _check_int32_layouts(geo, [(x_shape, x_stride)], (w_shape, w_stride))
    out_nhwc = prefers_channels_last(x_shape, x_stride)
    esize = torch.empty((), dtype=dtype).element_size()
    flop_outputs = geo.N * geo.C_out * geo.OH * geo.OW
    if pool:
        # torch's pool rules and errors (a 1-pixel-wide output has no 2x2 window)
        pool_geo = pool_geometry(geo.out_shape, 2, 2, channels_last=out_nhwc, relu_gate=relu)
        grid_h, grid_w = pool_geo.out_h, pool_geo.out_w
        M = 4 * geo.N * grid_h * grid_w
        flop_outputs = geo.C_out * M  # the pooled windows' conv outputs are all that is computed
        y_numel = _numel(pool_geo.output_shape)
        extra_bytes = y_numel * pool_geo.argmax_dtype.itemsize
        name = "conv2d_fwd" + ("_relu" if relu else "") + "_maxpool"
    else:
        pool_geo = None
        grid_h, grid_w = geo.OH, geo.OW
        M = geo.N * geo.OH * geo.OW
        y_numel = _numel(geo.out_shape)
        extra_bytes = _numel(geo.relu_mask_shape) if save_mask else 0
        name = "conv2d_fwd" + ("_relu" if relu else "")
    flags = (int(has_bias), int(relu), geo.relu_mask_shape[1])
    divisors = (magic_divisor(grid_h * grid_w), magic_divisor(grid_w))
    consts = {"SAVE_MASK": save_mask, "OFFSETS_64": _numel(geo.out_shape) > OFFSETS_64_ABOVE, "OUT_NHWC": out_nhwc,
              "PIX_POW2": _pow2_dividing(grid_h * grid_w), "POOL": bool(pool), **_dot_flags(dtype)}
    macs = flop_outputs * geo.CG_IN * geo.KH * geo.KW
    info = runtime.LaunchInfo(
        name, (tuple(x_shape), tuple(w_shape)), dtype,
        flops=2 * macs + (flop_outputs if has_bias else 0) + (flop_outputs if relu else 0)
        + (flop_outputs if pool else 0),  # the pool: one comparison per window element, as pool.py counts
        bytes=(_numel(x_shape) + _numel(w_shape) + y_numel + (geo.C_out if has_bias else 0)) * esize + extra_bytes)
    channels_last = geo.channels_last(geo.CG_IN)
    if channels_last:
        w_layout = _weight_layout(geo.CG_IN, geo.CG_OUT, dtype)
        scalars = geo.cl_scalars()
        tail = (*scalars[:2], grid_h, grid_w, *scalars[4:], M, *divisors, *flags, *w_stride, geo.C_in, geo.C_out,
                geo.CG_IN, geo.CG_OUT)
        launch = _gemm_launch(conv2d_fwd_cl_kernel, conv2d_fwd_cl_autotuned, "fwd", M, geo.CG_OUT, geo.groups,
                              tail, {**consts, "W_LAYOUT": w_layout}, info, config)
        return geo, launch, not is_channels_last(x_shape, x_stride), w_layout, out_nhwc, pool_geo
    tail = (geo.H, geo.W, grid_h, grid_w, *divisors, M, geo.C_out, *x_stride, *w_stride, *geo.scalars(),
            geo.CG_IN, geo.CG_OUT, geo.CG_IN * geo.KH * geo.KW, *flags)
    ch_align = _out_channel_alignment(geo, esize) if out_nhwc else 1
    launch = _gemm_launch(conv2d_fwd_kernel, conv2d_fwd_autotuned, "fwd", M, geo.CG_OUT, geo.groups, tail,
                          {**consts, "KH": geo.KH, "KW": geo.KW, "PADDED": not geo.windows_inside,
                           "CH_ALIGN": ch_align}, info, config, depth=geo.CG_IN * geo.KH * geo.KW)
    return geo, launch, False, W_TORCH, out_nhwc, pool_geo


def _phase_taps(phase: int, stride: int, pad: int, dil: int, ksize: int):
    """Taps kh that reach input row ih = phase (mod stride): first, step, count."""
    step = stride // math.gcd(stride, dil)
    first = next((kh for kh in range(min(ksize, step)) if (phase + pad - kh * dil) % stride == 0), None)
    if first is None:
        return 0, 1, 0
    return first, step, len(range(first, ksize, step))


def _phase_class_taps(ksize: int, stride: int, pad: int, dil: int, phases: int) -> list:
    """Per stride phase, how many taps kh fall in its class (kh*dil - pad = phase mod stride),
    counting taps that only ever meet padding too, so that the phases' counts add up to ksize:
    classes with no input row (the size is below the stride) are counted with the last phase."""
    counts = [0] * phases
    for kh in range(ksize):
        counts[min((kh * dil - pad) % stride, phases - 1)] += 1
    return counts


def _shares(total: int, parts: int) -> list:
    """``total`` split into ``parts`` integers that add up to it exactly."""
    return [total * (i + 1) // parts - total * i // parts for i in range(parts)]


def _staged_grad_out(grad_out, relu_mask, staged):
    """grad_out as the channels-last kernels read it: NHWC with the ReLU gate applied. ``staged``
    is a one-slot cache so that conv2d_backward stages it once for both gradients."""
    if staged is not None and staged[0] is not None:
        return staged[0]
    if relu_mask is None and is_channels_last(grad_out.shape, grad_out.stride()):
        dy = grad_out
    else:
        dy = to_channels_last(grad_out, relu_mask=relu_mask, name="grad_out")
    if staged is not None:
        staged[0] = dy
    return dy


def conv2d_input_grad(grad_out, weight, x_shape, stride=1, padding=0, dilation=1, groups=1, relu_mask=None,
                      config=None, channels_last=False, _staged=None):
    """dx for y = conv2d(x, weight, ...); with ``relu_mask`` (conv2d_forward's, save_relu_mask=True)
    for y = relu(conv2d(...)), the ReLU's derivative applied while loading (or staging) grad_out.

    grad_out: [N, C_out, OH, OW] any strides; weight: [C_out, C_in/groups, KH, KW]; returns dx with
    shape ``x_shape`` in grad_out's dtype, contiguous or, with ``channels_last`` (x's layout, as
    torch returns it), channels-last. One launch per stride phase.

    Work model (profiler): the launches' FLOPs add up to the forward's, 2 per multiply-add of the
    convolution (a phase counts the taps of its class over every output pixel); their bytes add
    up to the minimum for the whole gradient: read grad_out, the mask and the weight once, write
    dx once (each phase counts its own dx pixels and an equal share of the reads).
    """
    runtime.check_tensor(grad_out, "grad_out", ndim=4)
    runtime.check_tensor(weight, "weight", ndim=4)
    relu = relu_mask is not None
    x_shape = tuple(x_shape)
    geo, launches, cl_kernels, w_layout = _planned(
        _dgrad_plan, grad_out.shape, grad_out.stride(), grad_out.dtype, weight.shape, weight.stride(), weight.dtype,
        x_shape, _hashable(stride), _hashable(padding), _hashable(dilation), groups, relu, bool(channels_last),
        runtime.dot_precision(grad_out.dtype), AUTOTUNE, _config_key(config))
    _check_relu_mask(relu_mask, geo)
    dx = empty_activation(x_shape, grad_out.dtype, bool(channels_last))
    if cl_kernels:
        tensors = (_staged_grad_out(grad_out, relu_mask, _staged),
                   weight if w_layout == W_TORCH else _staged_weight(weight, w_layout == W_N_MAJOR), dx)
    else:
        tensors = (grad_out, relu_mask if relu else grad_out, weight, dx)
    for launch in launches:
        launch(tensors)
    return dx


@functools.lru_cache(maxsize=512)
def _dgrad_plan(g_shape, g_stride, g_dtype, w_shape, w_stride, w_dtype, x_shape, stride, padding, dilation, groups,
                relu, out_nhwc, precision, autotune, config):
    """(geometry, [_Launch per stride phase], channels-last?, the weight's W_LAYOUT) of conv2d_input_grad."""
    geo = geometry(x_shape, w_shape, stride, padding, dilation, groups)
    if tuple(g_shape) != geo.out_shape:
        raise ValueError(f"grad_out must have the output's shape {geo.out_shape}, got {tuple(g_shape)}")
    if w_dtype != g_dtype:
        raise TypeError(f"weight must have grad_out's dtype {g_dtype}, got {w_dtype}")
    _check_int32_layouts(geo, [(g_shape, g_stride)], (w_shape, w_stride))
    channels_last = geo.channels_last(geo.CG_OUT)
    w_layout = _weight_layout(geo.CG_OUT, geo.CG_IN, g_dtype) if channels_last else W_TORCH
    sh, sw = geo.stride
    esize = torch.empty((), dtype=g_dtype).element_size()
    launches = []
    phases_h, phases_w = min(sh, geo.H), min(sw, geo.W)
    # one phase: its rows are dx's pixels in order, which the NCHW store can be told
    wide = {"OFFSETS_64": _numel(x_shape) > OFFSETS_64_ABOVE, "OUT_NHWC": out_nhwc,
            "PIX_POW2": _pow2_dividing(geo.H * geo.W) if phases_h * phases_w == 1 else 1}
    class_h = _phase_class_taps(geo.KH, sh, geo.padding[0], geo.dilation[0], phases_h)
    class_w = _phase_class_taps(geo.KW, sw, geo.padding[1], geo.dilation[1], phases_w)
    reads = _shares((_numel(g_shape) + _numel(w_shape)) * esize + (_numel(geo.relu_mask_shape) if relu else 0),
                    phases_h * phases_w)
    for ph in range(phases_h):
        kh0, kstep_h, nkh = _phase_taps(ph, sh, geo.padding[0], geo.dilation[0], geo.KH)
        hp = len(range(ph, geo.H, sh))
        for pw in range(phases_w):
            kw0, kstep_w, nkw = _phase_taps(pw, sw, geo.padding[1], geo.dilation[1], geo.KW)
            wp = len(range(pw, geo.W, sw))
            M = geo.N * hp * wp
            divisors = (magic_divisor(hp * wp), magic_divisor(wp))
            macs = geo.N * geo.OH * class_h[ph] * geo.OW * class_w[pw] * geo.C_out * geo.CG_IN
            info = runtime.LaunchInfo(
                "conv2d_dgrad" + ("_relu" if relu else ""), (tuple(g_shape), tuple(w_shape)),
                g_dtype, flops=2 * macs, bytes=reads[ph * phases_w + pw] + M * geo.C_in * esize)
            if channels_last:
                tail = (*geo.cl_scalars(), M, hp, wp, *divisors, ph, pw, kh0, kw0, kstep_h, kstep_w, nkh, nkw,
                        *w_stride, geo.C_in, geo.C_out, geo.CG_IN, geo.CG_OUT)
                launches.append(_gemm_launch(conv2d_dgrad_cl_kernel, conv2d_dgrad_cl_autotuned, "dgrad", M,
                                             geo.CG_IN, geo.groups, tail,
                                             {**wide, "W_LAYOUT": w_layout, "ALL_TAPS": (nkh, nkw) == (geo.KH, geo.KW),
                                              **_dot_flags(g_dtype)}, info, config))
                continue
            tail = (geo.H, geo.W, geo.OH, geo.OW, M, geo.C_in, hp, wp, *divisors, ph, pw, *g_stride, *w_stride,
                    *geo.scalars(), geo.KW, kh0, kw0, kstep_h, kstep_w, nkh, nkw, geo.CG_IN, geo.CG_OUT,
                    geo.CG_OUT * nkh * nkw, geo.relu_mask_shape[1])
            consts = {"RELU": relu, **wide, **_dot_flags(g_dtype)}
            launches.append(_gemm_launch(conv2d_dgrad_kernel, conv2d_dgrad_autotuned, "dgrad", M, geo.CG_IN,
                                         geo.groups, tail, consts, info, config, depth=geo.CG_OUT * nkh * nkw))
    return geo, tuple(launches), channels_last, w_layout


def _pow2_dividing(n: int, cap: int = 256) -> int:
    """The largest power of two dividing n, at most ``cap`` (the run lengths promised to the NCHW
    stores, PIX_POW2, and gathers, *_ROW_POW2)."""
    return min(n & -n, cap) if n > 0 else 1


def _out_channel_alignment(geo, esize: int) -> int:
    """What the packed kernels may promise about a channels-last tensor of out channels (the
    forward's y, the weight gradient's dy; their channel counts are not specialised): a power of
    two dividing C_out and C_out/groups, at most 16 bytes of them, the widest vector access."""
    return _pow2_dividing(math.gcd(geo.C_out, geo.CG_OUT), 16 // esize)


def _vector_rows(columns: int) -> bool:
    """Whether a weight staged with ``columns`` (per group) contiguous columns gives rows of whole
    16-byte vectors."""
    return columns % 8 == 0


# How the channels-last kernels read the weight (their W_LAYOUT constexpr, see _load_weight_tap).
W_TORCH, W_N_MAJOR, W_K_MAJOR = 0, 1, 2


def _weight_layout(k_width: int, n_width: int, dtype: torch.dtype) -> int:
    """The W_LAYOUT for a GEMM whose B operand has ``k_width`` reduction and ``n_width`` output
    channels per group: K-major for TF32 (its wgmma reads B from shared memory K-major only),
    N-major otherwise (bf16/fp16 wgmma takes either; IEEE fp32 is FMAs from registers), each only
    where its rows are whole 16-byte vectors; else torch's layout in place (a staging launch
    would buy no vector loads)."""
    if dtype == torch.float32 and runtime.dot_precision(dtype) == "tf32" and _vector_rows(k_width):
        return W_K_MAJOR
    return W_N_MAJOR if _vector_rows(n_width) else W_TORCH


def _staged_weight(weight, in_channels_contiguous: bool):
    """weight [C_out, CG_in, KH, KW] as [C_out, KH, KW, CG_in] contiguous (in channels contiguous:
    torch's channels_last weight, passed as it is) or [CG_in, KH, KW, C_out] (out channels)."""
    if in_channels_contiguous:
        return weight if is_channels_last(weight.shape, weight.stride()) else to_channels_last(weight, name="weight")
    return to_channels_last(weight.permute(1, 0, 2, 3), name="weight")


def _check_relu_mask(relu_mask, geo):
    if relu_mask is None:
        return
    runtime.check_tensor(relu_mask, "relu_mask", ndim=2, dtypes=(torch.uint8,))
    if tuple(relu_mask.shape) != geo.relu_mask_shape or not relu_mask.is_contiguous():
        raise ValueError(f"relu_mask must be the forward's contiguous bit mask of shape {geo.relu_mask_shape}, "
                         f"got shape {tuple(relu_mask.shape)} with strides {relu_mask.stride()}")


def direct_wgrad_co_block(geo: ConvGeometry, bias_grad: bool) -> int:
    """CO_BLOCK of conv2d_wgrad_direct_kernel for this layer, or 0 where its weight gradient takes
    the GEMM: the direct kernel serves packed layers whose weight row (taps, and the bias slot)
    fits DIRECT_WGRAD_SLOTS and whose out channels per group fit in two register blocks (each
    more would gather x once more)."""
    if geo.channels_last(geo.CG_IN):
        return 0
    slots = geo.CG_IN * geo.KH * geo.KW + int(bool(bias_grad))
    if slots > DIRECT_WGRAD_SLOTS:
        return 0
    fit = DIRECT_WGRAD_ACCUMULATORS // slots
    co_block = min(runtime.next_power_of_2(geo.CG_OUT), 1 << (fit.bit_length() - 1))
    return co_block if runtime.cdiv(geo.CG_OUT, co_block) <= 2 else 0


def wgrad_split(geo: ConvGeometry, split_k=None, direct_co_block: int = 0) -> tuple:
    """(SPLIT, P_PER_SPLIT) for wgrad: split the pixel reduction when the weight tiles alone would
    leave the GPU mostly idle (LeNet: 150-element weight rows, 50k pixels). ``direct_co_block``: the
    direct kernel's CO_BLOCK when it computes this gradient (see direct_wgrad_co_block)."""
    P = geo.N * geo.OH * geo.OW
    if split_k is None and direct_co_block and not runtime.INTERPRETED:
        # ~3 programs per SM (LeNet conv1: 165 registers a thread, 3 four-warp programs fit); the
        # partial sums are small (C_out * K_W floats a split)
        programs = runtime.cdiv(geo.CG_OUT, direct_co_block) * geo.groups
        split_k = max(1, min(runtime.cdiv(3 * runtime.sm_count(), programs), P // 512))
    if split_k is None:
        if runtime.INTERPRETED:
            split_k = 1
        else:
            # Tiles of the largest config the autotuner keeps for this shape (see _pruner), so that
            # even that one gets ~2 programs per SM; >= 512 pixels per split. (Counting 64x64 tiles
            # and >= 2048 pixels gave LeNet's wgrads 60-98 programs, 64->128 75, on 132 SMs.)
            # The fp32 workspace this costs is split * C_out*C_in*KH*KW*4 bytes, small at these sizes.
            bm = min(128, max(16, runtime.next_power_of_2(geo.CG_OUT)))
            if geo.channels_last(geo.CG_IN):  # one program per (tap, in-channel tile)
                ci_tile = min(128, max(64, runtime.next_power_of_2(geo.CG_IN)))
                cols = geo.KH * geo.KW * runtime.cdiv(geo.CG_IN, ci_tile)
            else:
                k_w = geo.CG_IN * geo.KH * geo.KW
                cols = runtime.cdiv(k_w, min(128, max(32, runtime.next_power_of_2(k_w))))
            tiles = runtime.cdiv(geo.CG_OUT, bm) * cols * geo.groups
            split_k = max(1, min(runtime.cdiv(2 * runtime.sm_count(), tiles), P // 512))
    split_k = max(1, min(int(split_k), P))
    grain = 16 if runtime.INTERPRETED else 128  # on the GPU, whole BLOCK_K tiles per split
    per = runtime.cdiv(runtime.cdiv(P, split_k), grain) * grain
    return runtime.cdiv(P, per), per


def conv2d_weight_grad(grad_out, x, w_shape, stride=1, padding=0, dilation=1, groups=1, relu_mask=None,
                       bias_grad=False, split_k=None, config=None, _staged=None):
    """(dw, db) for y = conv2d(x, w, b, ...); with ``relu_mask`` (conv2d_forward's, save_relu_mask=True)
    for y = relu(conv2d(...)), the ReLU's derivative applied while loading (or staging) grad_out.

    grad_out: [N, C_out, OH, OW], x: [N, C_in, H, W], both any strides. dw has ``w_shape``; db is
    [C_out] when ``bias_grad`` else None; both contiguous in x's dtype. ``split_k`` fixes the number
    of pixel splits (default: chosen for the GPU; 1 under the interpreter). Deterministic.
    ``config`` fixes the tiles: BLOCK_M/BLOCK_N/BLOCK_K a GEMM kernel's, BLOCK_P and CO_BLOCK the
    direct kernel's (only for a layer direct_wgrad_co_block admits).
    """
    runtime.check_tensor(grad_out, "grad_out", ndim=4)
    runtime.check_tensor(x, "x", ndim=4)
    relu = relu_mask is not None
    bias_grad = bool(bias_grad)
    geo, split, launch, channels_last, stage_x, ws_row = _planned(
        _wgrad_plan, grad_out.shape, grad_out.stride(), grad_out.dtype, x.shape, x.stride(), x.dtype, tuple(w_shape),
        _hashable(stride), _hashable(padding), _hashable(dilation), groups, relu, bias_grad, split_k,
        runtime.dot_precision(x.dtype), AUTOTUNE, _config_key(config))
    _check_relu_mask(relu_mask, geo)
    dw_numel = geo.C_out * geo.CG_IN * geo.KH * geo.KW
    flat = runtime.empty((dw_numel + (geo.C_out if bias_grad else 0),), x.dtype)  # dw, then db
    target = flat if split == 1 else runtime.empty((split, ws_row), torch.float32)
    if channels_last:
        dy = _staged_grad_out(grad_out, relu_mask, _staged)
        launch((dy, to_channels_last(x) if stage_x else x, target))
    else:
        launch((grad_out, relu_mask if relu else grad_out, x, target))
    if split > 1:  # the splits' partial sums, added in a fixed order (one pass for a few hundred)
        column_sums(target, out=flat[:ws_row], op="conv2d_wgrad_reduce")
    if bias_grad and channels_last:  # db: the column sums of dy, an NHWC [pixels, C_out] buffer
        column_sums(dy.as_strided((dy.numel() // geo.C_out, geo.C_out), (geo.C_out, 1)), out=flat[dw_numel:],
                    op="conv2d_bias_grad")
    dw = flat[:dw_numel].view(geo.C_out, geo.CG_IN, geo.KH, geo.KW)
    db = flat[dw_numel:] if bias_grad else None
    return dw, db


@functools.lru_cache(maxsize=512)
def _wgrad_plan(g_shape, g_stride, g_dtype, x_shape, x_stride, x_dtype, w_shape, stride, padding, dilation, groups,
                relu, bias_grad, split_k, precision, autotune, config):
    """(geometry, SPLIT, wgrad _Launch, channels-last?, stage x?, L) of conv2d_weight_grad; L is
    what the GEMM writes per split, one row of the split-K workspace: dw, and db where the packed
    kernel sums it too (the channels-last path sums db apart)."""
    geo = geometry(x_shape, w_shape, stride, padding, dilation, groups)
    if x_dtype != g_dtype:
        raise TypeError(f"x must have grad_out's dtype {g_dtype}, got {x_dtype}")
    if tuple(g_shape) != geo.out_shape:
        raise ValueError(f"grad_out must have the output's shape {geo.out_shape}, got {tuple(g_shape)}")
    _check_int32_layouts(geo, [(g_shape, g_stride), (x_shape, x_stride)])
    K_W = geo.CG_IN * geo.KH * geo.KW
    P = geo.N * geo.OH * geo.OW
    direct_tiles = config is not None and "BLOCK_P" in dict(config)
    co_block = direct_wgrad_co_block(geo, bias_grad) if config is None or direct_tiles else 0
    if direct_tiles and not co_block:
        raise ValueError(f"config {dict(config)} has BLOCK_P, the direct wgrad's tile, but this layer's "
                         f"weight gradient is a GEMM (BLOCK_M/BLOCK_N/BLOCK_K)")
    split, per = wgrad_split(geo, split_k, co_block)
    esize = torch.empty((), dtype=x_dtype).element_size()
    channels_last = geo.channels_last(geo.CG_IN)
    fused_bias = bias_grad and not channels_last
    L = geo.C_out * K_W + (geo.C_out if fused_bias else 0)
    info = runtime.LaunchInfo(
        "conv2d_wgrad" + ("_relu" if relu else ""), (tuple(g_shape), tuple(x_shape)), x_dtype,
        flops=2 * geo.macs + (P * geo.C_out if fused_bias else 0),
        bytes=(_numel(g_shape) + _numel(x_shape)) * esize + (_numel(geo.relu_mask_shape) if relu else 0)
        + (L * esize if split == 1 else split * L * 4))
    if co_block:
        blocks, options = _split_config(dict(config) if config is not None else
                                        {"CO_BLOCK": co_block, **_fixed_config("wgrad_direct")})
        tail = (geo.H, geo.W, geo.OH, geo.OW, P, geo.C_out, *g_stride, x_stride[0], geo.CG_OUT, geo.groups, per, L,
                geo.relu_mask_shape[1])
        (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = geo.stride, geo.padding, geo.dilation
        consts = dict(sxc=x_stride[1], sxh=x_stride[2], sxw=x_stride[3], stride_h=stride_h, stride_w=stride_w,
                      pad_h=pad_h, pad_w=pad_w, dil_h=dil_h, dil_w=dil_w, CG_IN=geo.CG_IN, KH=geo.KH, KW=geo.KW,
                      RELU=relu, HAS_BIAS=bias_grad, PADDED=not geo.windows_inside,
                      T_BLOCK=runtime.next_power_of_2(K_W + int(bias_grad)), **blocks, **options)
        grid = (split * geo.groups * runtime.cdiv(geo.CG_OUT, blocks["CO_BLOCK"]),)
        return geo, split, _Launch(conv2d_wgrad_direct_kernel, grid, tail, consts, info), False, False, L
    fixed = None if config is None and AUTOTUNE else _split_config(
        dict(config) if config is not None else _fixed_config("wgrad"))
    if channels_last:
        tail = (*geo.cl_scalars(), P, K_W, split, per, L, geo.C_in, geo.C_out, geo.CG_IN, geo.CG_OUT)
        cols_of = lambda bn: geo.KH * geo.KW * runtime.cdiv(geo.CG_IN, bn)  # noqa: E731
        kernel, autotuned, consts = conv2d_wgrad_cl_kernel, conv2d_wgrad_cl_autotuned, {}
    else:
        tail = (geo.H, geo.W, geo.OH, geo.OW, P, geo.C_out, *g_stride, *x_stride, *geo.scalars(), geo.KH, geo.KW,
                geo.CG_IN, geo.CG_OUT, K_W, split, per, L, geo.relu_mask_shape[1])
        cols_of = lambda bn: runtime.cdiv(K_W, bn)  # noqa: E731
        kernel, autotuned = conv2d_wgrad_kernel, conv2d_wgrad_autotuned
        rows = min(_pow2_dividing(geo.OW), _pow2_dividing(per))  # see _row_runs: runs also start each split
        dy_rows = rows if g_stride[3] == 1 else 1
        # a channels-last dy (a channels-last network's stem) is read along its channels instead
        dy_nhwc = prefers_channels_last(g_shape, g_stride)
        consts = {"RELU": relu, "HAS_BIAS": bias_grad, "PADDED": not geo.windows_inside,
                  "X_ROW_POW2": rows if geo.stride[1] * x_stride[3] == 1 else 1, "DY_ROW_POW2": dy_rows,
                  "DY_ALIGNED": dy_rows > 1 and all(st % dy_rows == 0 for st in g_stride[:3]),
                  "DY_NHWC": _out_channel_alignment(geo, esize) if dy_nhwc else 0}
    consts = {**consts, **_dot_flags(x_dtype)}
    if fixed is None:
        grid = lambda meta: (cols_of(meta["BLOCK_N"]) * geo.groups * split,  # noqa: E731
                             runtime.cdiv(geo.CG_OUT, meta["BLOCK_M"]))
        launch = _Launch(autotuned, grid, tail, consts, info)
    else:
        blocks, options = fixed
        grid = (cols_of(blocks["BLOCK_N"]) * geo.groups * split, runtime.cdiv(geo.CG_OUT, blocks["BLOCK_M"]))
        launch = _Launch(kernel, grid, tail, {**consts, **blocks, **options}, info)
    return geo, split, launch, channels_last, channels_last and not is_channels_last(x_shape, x_stride), L


def conv2d_backward(grad_out, x, weight, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1,
                    relu_mask=None, input_grad=True, weight_grad=True, bias_grad=False, input_channels_last=False):
    """(dx, dw, db) of y = act(conv2d(x, weight, b, ...)), each None where not asked for.

    grad_out is staged as channels-last (with the ReLU gate) at most once for the two kernels
    that read it. ``x`` is needed only for the weight and bias gradients, ``weight`` only for dx;
    dx is channels-last when ``input_channels_last`` (x was: see prefers_channels_last).
    """
    staged = [None]
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, relu_mask=relu_mask)
    dx = dw = db = None
    if input_grad:
        dx = conv2d_input_grad(grad_out, weight, x_shape, channels_last=input_channels_last, _staged=staged, **opts)
    if weight_grad or bias_grad:
        dw, db = conv2d_weight_grad(grad_out, x, w_shape, bias_grad=bias_grad, _staged=staged, **opts)
    return dx, (dw if weight_grad else None), db
