"""Channels-last staging: [B, C, H, W] (any strides) -> [B, H, W, C] contiguous, and back.

Why it exists: a convolution's GEMM reduces over channels. In NCHW a tile of (pixels x channels)
is a gather of 2-byte elements 2*H*W bytes apart, which the GPU loads one element per lane and
which cp.async cannot pipeline; in channels-last the same tile is rows of contiguous channels,
16-byte vector loads that the compiler turns into asynchronous, multi-stage copies. One extra
read and write of the operand buys that (~10 us for a 16 MB activation on an H100).

The conv launchers stage activations (x, and dy with the ReLU gate applied) and weights (a
permuted view of [C_out, C_in, KH, KW] in, so that the GEMM's N side ends up contiguous) through
this kernel. The way back (``to_contiguous``) is for a channels-last activation that must be read
in NCHW order, such as one flattened for a linear layer.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import runtime

# Under the interpreter few, large programs (its cost is per program and per op, hardly per
# element), their pixels running across images (FLAT); on the GPU 64x64 tiles of one image each,
# transposed through shared memory by the compiler's layout conversion.
BLOCK_S, BLOCK_C = (256, 64) if runtime.INTERPRETED else (64, 64)
OPTIONS = {"num_warps": 16} if runtime.INTERPRETED else {"num_warps": 4}
FLAT = runtime.INTERPRETED


@triton.jit
def relu_gate(values, mask_ptr, channel, bit, mask, MASK_ROW):
    """``values`` where the conv forward's ReLU gradient mask passes, else 0. The mask is
    [C, MASK_ROW] uint8, bit m % 8 of byte m // 8 of channel c's row for output pixel m;
    ``channel`` and ``bit`` (int32) broadcast to the shape of ``values``; ``mask``: which to load."""
    byte = tl.load(mask_ptr + channel.to(tl.int64) * MASK_ROW + (bit >> 3), mask=mask, other=0)
    live = (byte.to(tl.int32) >> (bit & 7)) & 1
    return tl.where(live != 0, values, tl.zeros_like(values))


# HW, s_b and s_c stay specialised: their divisibility by 16 is what proves the source rows
# aligned and the row mask constant over 16 pixels, for vector loads (8x8, 16x16, 32x32 planes).
@triton.jit(do_not_specialize=["B", "H", "W", "s_h", "s_w", "MASK_ROW", "S_TILES"])
def to_channels_last_kernel(
    src_ptr, dst_ptr, mask_ptr,
    B, C, H, W, HW, s_b, s_c, s_h, s_w, MASK_ROW, S_TILES,
    SPATIAL_CONTIG: tl.constexpr, SRC_NHWC: tl.constexpr, DST_NCHW: tl.constexpr, RELU_MASK: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, FLAT: tl.constexpr = False,
):
    """dst[b, h, w, c] = src[b, c, h, w], optionally gated by a ReLU bit mask; with DST_NCHW,
    dst[b, c, h, w] = src[b, c, h, w] instead (dst contiguous [B, C, H, W]).

    src: [B, C, H, W] with element strides (s_b, s_c, s_h, s_w); dst: [B, H, W, C] contiguous.
    HW = H*W.
    SPATIAL_CONTIG: s_w == 1 and s_h == W (an NCHW plane), so the compiler sees contiguous rows.
    SRC_NHWC: s_c == 1, s_w == C and s_h == W*C (a channels-last src): its rows of channels are
    contiguous and, C being specialised, aligned.
    RELU_MASK: zero where bit m % 8 of mask[c, m // 8] is clear, m = b*H*W + h*W + w (the conv
    forward's ReLU gradient mask, [C, MASK_ROW] uint8), so the gradient is gated once, here.
    C is specialised (divisible by 16 for every wide layer): the stores' alignment comes from it.
    Grid: (B * S_TILES, cdiv(C, BLOCK_C)) with S_TILES = cdiv(H*W, BLOCK_S) (B on axis 0: no 65535 cap).
    FLAT (the interpreter's): a tile's BLOCK_S pixels are consecutive in the flattened B*H*W range,
    spanning images; S_TILES = cdiv(B*H*W, BLOCK_S) and the grid (S_TILES, cdiv(C, BLOCK_C)).
    """
    pid = tl.program_id(0)
    if FLAT:
        flat = pid * BLOCK_S + tl.arange(0, BLOCK_S)
        b = flat // HW
        s = flat - b * HW
        s_mask = flat < B * HW
    else:
        b = pid // S_TILES
        s = (pid - b * S_TILES) * BLOCK_S + tl.arange(0, BLOCK_S)
        s_mask = s < HW
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = c_mask[:, None] & s_mask[None, :]
    # [C, S] tile: the load runs along the source's contiguous side, the store along the
    # destination's (the compiler transposes the tile through shared memory in between)
    # FLAT: each pixel's image offset as a [1, BLOCK_S] row; else one scalar (the GPU's code, whose
    # alignment facts come from the specialised strides)
    image = b.to(tl.int64)[None, :] if FLAT else b.to(tl.int64)
    if SRC_NHWC:
        src = src_ptr + image * s_b + s.to(tl.int64)[None, :] * C + c[:, None]
    else:
        if SPATIAL_CONTIG:
            sp = s
        else:
            h = s // W
            sp = h * s_h + (s - h * W) * s_w
        src = src_ptr + image * s_b + (c * s_c)[:, None] + sp[None, :]
    tile = tl.load(src, mask=mask, other=0.0)
    if RELU_MASK:
        tile = relu_gate(tile, mask_ptr, c[:, None], (b * HW + s)[None, :], mask, MASK_ROW)
    if FLAT:
        if DST_NCHW:
            dst = dst_ptr + (image * C + c[:, None]) * HW + s[None, :]
        else:
            dst = dst_ptr + (image * HW + s[None, :]) * C + c[:, None]
    elif DST_NCHW:
        dst = dst_ptr + (b.to(tl.int64) * C + c)[:, None] * HW + s[None, :]
    else:
        dst = dst_ptr + (b.to(tl.int64) * HW + s)[None, :] * C + c[:, None]
    tl.store(dst, tile, mask=mask)


def to_channels_last(src, relu_mask=None, name="x"):
    """src [B, C, H, W] (any strides) copied to a new contiguous [B, H, W, C] tensor, src's dtype.

    ``relu_mask``: the conv forward's ReLU bit mask, for an activation gradient: elements whose
    bit is clear become 0.
    """
    runtime.check_tensor(src, name, ndim=4)
    return _copy(src, relu_mask, dst_nchw=False)


def to_contiguous(src, name="x"):
    """src [B, C, H, W] (any strides; meant for channels-last ones) copied to a new contiguous
    [B, C, H, W] tensor, src's dtype."""
    runtime.check_tensor(src, name, ndim=4)
    return _copy(src, None, dst_nchw=True)


def transposed(src, name="x"):
    """A new contiguous [C, R] copy of the 2-D src [R, C] (any strides): the staging kernel on
    src seen as [1, R, 1, C]."""
    runtime.check_tensor(src, name, ndim=2)
    R, C = src.shape
    view = src.as_strided((1, R, 1, C), (R * C, src.stride(0), C, src.stride(1)))
    return _copy(view, None, dst_nchw=False, op="transpose").view(C, R)


def _copy(src, relu_mask, dst_nchw: bool, op=None):
    dst_shape, grid, tail, consts, info = _plan(tuple(src.shape), src.stride(), src.dtype,
                                                None if relu_mask is None else relu_mask.shape[1], dst_nchw, op)
    dst = runtime.empty(dst_shape, src.dtype)
    if grid is not None:
        runtime.launch(to_channels_last_kernel, grid, (src, dst, dst if relu_mask is None else relu_mask, *tail),
                       consts, info)
    return dst


@functools.lru_cache(maxsize=256)
def _plan(shape, strides, dtype, mask_row, dst_nchw, op=None):
    """(dst shape, grid or None when empty, scalar arguments, constexprs, LaunchInfo): a training
    step stages the same few shapes every call, so its host path is worked out once per shape."""
    B, C, H, W = shape
    s_b, s_c, s_h, s_w = strides
    dst_shape = shape if dst_nchw else (B, H, W, C)
    numel = B * C * H * W
    if numel == 0:
        return dst_shape, None, (), {}, None
    s_tiles = runtime.cdiv((B if FLAT else 1) * H * W, BLOCK_S)
    esize = torch.empty((), dtype=dtype).element_size()
    info = runtime.LaunchInfo(op or ("to_contiguous" if dst_nchw else "to_channels_last"), ((B, C, H, W),), dtype,
                              flops=0,
                              bytes=2 * numel * esize + (C * mask_row if mask_row is not None else 0))
    consts = dict(OPTIONS, SPATIAL_CONTIG=s_w == 1 and s_h == W, SRC_NHWC=is_channels_last(shape, strides),
                  DST_NCHW=dst_nchw, RELU_MASK=mask_row is not None, BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C, FLAT=FLAT)
    tail = (B, C, H, W, H * W, s_b, s_c, s_h, s_w, mask_row or 0, s_tiles)
    return dst_shape, (s_tiles if FLAT else B * s_tiles, runtime.cdiv(C, BLOCK_C)), tail, consts, info


def is_channels_last(shape, strides) -> bool:
    """True when a 4-D [B, C, H, W] tensor of these shape and strides is laid out as a
    contiguous [B, H, W, C] buffer (what the channels-last kernels read)."""
    B, C, H, W = shape
    expected = (H * W * C, 1, W * C, C)
    return all(size == 1 or st == ex for size, st, ex in zip(shape, strides, expected))


@functools.lru_cache(maxsize=256)  # asked on every conv and pool forward
def prefers_channels_last(shape, strides) -> bool:
    """torch's rule for a convolution's or pool's output layout: channels-last when the input is
    laid out channels-last and not also plain contiguous (as it is for 1x1 images or one channel)."""
    if len(shape) != 4 or not is_channels_last(shape, strides):
        return False
    expected, step = [], 1
    for d in reversed(shape):
        expected.insert(0, step)
        step *= d
    return any(size != 1 and st != ex for size, st, ex in zip(shape, strides, expected))


def empty_activation(shape, dtype, channels_last: bool):
    """A new [N, C, H, W] tensor, contiguous or laid out channels-last (an [N, H, W, C] buffer)."""
    if not channels_last:
        return runtime.empty(shape, dtype)
    n, c, h, w = shape
    return runtime.empty((n, h, w, c), dtype).permute(0, 3, 1, 2)


def channels_last_copy(src, name="x"):
    """src [B, C, H, W] as a channels-last tensor of the same shape (a new [B, H, W, C] buffer):
    what ``src.contiguous(memory_format=torch.channels_last)`` returns, copied by this kernel."""
    return to_channels_last(src, name=name).permute(0, 3, 1, 2)
