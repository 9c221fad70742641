"""Max pool 2-D: forward with a compact argmax, backward as a gather (default) or an atomic scatter.

The forward kernel writes, for every output window, the maximum and the position of the winner
*inside the window*, ``kh * KW + kw``: one byte per output whenever the window has at most 256
positions (torch keeps an int64 flat index per output, eight bytes). That byte is all backward
needs; the input itself is never kept.

Semantics are torch's (``aten::max_pool2d_with_indices`` on CPU and CUDA):

- windows are scanned row by row; a value replaces the running maximum when it is greater, or
  when it is NaN. So ties keep the first maximum, and a window holding NaN reports its *last*
  NaN (torch's ``(val > maxval) || isnan(val)``).
- a window whose valid values are all ``-inf`` reports its first valid position.
- padding is never a candidate (it is not ``-inf``, it is absent).
- output size and ``ceil_mode`` follow ``pooling_output_shape``: with ``ceil_mode`` the last
  window must start inside the input or the left padding.

A pool of a ReLU's output can apply the ReLU's gradient gate itself (``relu_gate``): the gradient
reaches only winners, and a winner passes the gate exactly when its window's maximum is above 0
(the ReLU's output there *is* that maximum). The forward then records "no winner", ``KH * KW``,
for windows whose maximum is <= 0 (a NaN maximum passes, as a NaN passes torch's
threshold_backward), and the gather backward, which routes a window's gradient to the position
its argmax names, sends those nowhere. The convolution that made the ReLU then need not gate its
gradient (see functional.max_pool2d). Exact: the same zeros, the same passed values.

Layout: the plane kernels treat the input as rows of one plane: row ``r`` of the forward grid is
output row ``oh`` of plane ``p = n * C + c`` (``r = p * OH + oh``), so a program covers a
``[BLOCK_R, BLOCK_W]`` tile that may span several planes, and the only integer divisions are one
per row and one per column, never one per element. A channels-last input (torch's memory format)
goes to the NHWC kernels instead, whose tiles are ``[BLOCK_P pixels, BLOCK_C channels]`` (two
divisions per pixel), and its outputs are channels-last too.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from .. import runtime
from .layout import empty_activation, is_channels_last, prefers_channels_last


# ----------------------------------------------------------------------------- forward
#
# Window sizes are runtime arguments, so one compiled kernel serves every geometry; UNROLL (2 or
# 3: windows up to 2x2 or 3x3, the ones CNNs use) unrolls the window loops at compile time, with
# positions beyond the real window masked off, so their loads are all in flight at once.
# UNROLL = 0 loops at run time over any window size.


@triton.jit
def take_max(v, valid, k, best, best_k):
    """torch's scan step: a NaN replaces whatever is there (``val > maxval || isnan(val)``) and the
    first valid position is taken unconditionally (best_k < 0 until then), so an all -inf window
    still has an index. (Also the scan of conv2d's pool-fused epilogue, kernels/conv.py.)"""
    take = valid & ((v > best) | (v != v) | (best_k < 0))
    return tl.where(take, v, best), tl.where(take, k, best_k)


@triton.jit
def gate_argmax(best, best_k, WINDOW):
    """The relu_gate argmax: WINDOW (= KH * KW, no winner) where the max would not pass a ReLU's
    gradient gate (``best <= 0``; NaN passes)."""
    return tl.where(best <= 0, WINDOW, best_k)


@triton.jit
def _store_max(out_ptr, argmax_ptr, offsets, mask, best, best_k, KH, KW, RELU_GATE: tl.constexpr):
    """Store each window's max and argmax (with RELU_GATE: gate_argmax's)."""
    if RELU_GATE:
        best_k = gate_argmax(best, best_k, KH * KW)
    tl.store(out_ptr + offsets, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(argmax_ptr + offsets, best_k.to(argmax_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _visit_column(x_ptr, row_base, h_ok, iw, w_ok, W, stride_w, k, best, best_k):
    """Compare one window position (a row per output row, a column per output column)."""
    m = h_ok[:, None] & (w_ok & (iw >= 0) & (iw < W))[None, :]
    v = tl.load(x_ptr + row_base[:, None] + iw.to(tl.int64)[None, :] * stride_w, mask=m,
                other=float("-inf")).to(tl.float32)
    return take_max(v, m, k, best, best_k)


@triton.jit
def _row_tile(R, ROW_LEN, COLS, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile of a [R, COLS] grid whose rows are grouped ROW_LEN to a plane.

    Returns the tile's rows and columns, their in-bounds masks, each row's plane and its row
    inside the plane: one integer division per row, none per element.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    plane = rows // ROW_LEN
    return rows, cols, rows < R, cols < COLS, plane, rows - plane * ROW_LEN


@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, out_ptr, argmax_ptr,
    R, C, H, W, OH, OW,
    stride_n, stride_c, stride_h, stride_w,
    KH, KW, SH, SW, PH, PW, DH, DW,
    UNROLL: tl.constexpr, PAIR_W: tl.constexpr, ALIGN: tl.constexpr, RELU_GATE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Max and compact argmax of every window.

    x:      [N, C, H, W], any strides (``stride_*`` in elements), float32/float16/bfloat16.
    out:    [N, C, OH, OW] contiguous, x's dtype.          R = N * C * OH rows of OW outputs.
    argmax: [N, C, OH, OW] contiguous, uint8/int16/int32: ``kh * KW + kw`` of the winner.
    Program (i, j) covers output rows [i*BLOCK_R, ...) and columns [j*BLOCK_W, ...).
    UNROLL: 0 (window loops at run time) or an unroll bound >= KH, KW.
    PAIR_W: 0, or KW (2 or 3) when SW == 2 and DW == 1 (needs UNROLL): each kernel row is read as
    ceil(KW / 2) contiguous runs of 2*BLOCK_W input columns, each split into two window columns
    (vector loads instead of one strided scalar load per window column; KW = 3 reads its third
    column as the first half of a run shifted by two).
    ALIGN: a power of two (elements) that divides stride_n, stride_c, stride_h and W, promised to
    the compiler: rows of 28 or 10 columns (LeNet) are then read with vector loads too (Triton
    only infers divisibility by 16 from argument values).
    RELU_GATE: argmax is KH * KW (no winner) where the maximum is <= 0 (see the module docstring).
    Values are compared in float32 (exact for every input dtype; bf16 arithmetic is broken in the
    interpreter).
    """
    if ALIGN > 1:
        # (v // ALIGN) * ALIGN == v by the launcher's promise; written so, the compiler can see it
        # (tl.multiple_of does not attach to scalar arguments)
        stride_n = (stride_n // ALIGN) * ALIGN
        stride_c = (stride_c // ALIGN) * ALIGN
        stride_h = (stride_h // ALIGN) * ALIGN
        W = (W // ALIGN) * ALIGN
    rows, ow, row_ok, col_ok, plane, oh = _row_tile(R, OH, OW, BLOCK_R, BLOCK_W)
    n = plane // C
    c = plane - n * C
    plane_base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    # ends of the windows: with the loops unrolled to UNROLL >= KH, positions at or past these are
    # beyond the window (compared as vectors: the interpreter rejects masks from scalar compares)
    ih_end = ih0 + KH * DH
    iw_end = iw0 + KW * DW

    best = tl.full([BLOCK_R, BLOCK_W], float("-inf"), tl.float32)
    best_k = tl.full([BLOCK_R, BLOCK_W], -1, tl.int32)
    if PAIR_W > 0:
        # Window columns 2m and 2m+1 of every output in the tile are one contiguous run of
        # 2*BLOCK_W input columns starting at 2*ow - PW + 2m: read it with vector loads and split
        # it into the two columns, instead of a strided scalar load per column. The load mask is
        # only "inside the input" (a bound the compiler can see is aligned); which split element
        # belongs to a real window is decided per column below.
        iw_run = tl.program_id(1) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W) - PW
        for kh in tl.static_range(UNROLL):
            ih = ih0 + kh * DH
            h_ok = row_ok & (ih >= 0) & (ih < H) & (ih < ih_end)
            row_base = plane_base + ih.to(tl.int64) * stride_h
            for m in tl.static_range((PAIR_W + 1) // 2):
                run = iw_run + 2 * m
                run_ok = (run >= 0) & (run < W)
                v2 = tl.load(x_ptr + row_base[:, None] + run.to(tl.int64)[None, :] * stride_w,
                             mask=h_ok[:, None] & run_ok[None, :], other=float("-inf")).to(tl.float32)
                v_left, v_right = tl.split(tl.reshape(v2, [BLOCK_R, BLOCK_W, 2]))
                iw_left = iw0 + 2 * m
                ok_left = col_ok & (iw_left >= 0) & (iw_left < W)
                best, best_k = take_max(v_left, h_ok[:, None] & ok_left[None, :], kh * KW + 2 * m,
                                        best, best_k)
                if 2 * m + 1 < PAIR_W:
                    iw_right = iw_left + 1
                    ok_right = col_ok & (iw_right >= 0) & (iw_right < W)
                    best, best_k = take_max(v_right, h_ok[:, None] & ok_right[None, :], kh * KW + 2 * m + 1,
                                            best, best_k)
    elif UNROLL > 0:
        for kh in tl.static_range(UNROLL):
            ih = ih0 + kh * DH
            h_ok = row_ok & (ih >= 0) & (ih < H) & (ih < ih_end)
            row_base = plane_base + ih.to(tl.int64) * stride_h
            for kw in tl.static_range(UNROLL):
                iw = iw0 + kw * DW
                best, best_k = _visit_column(x_ptr, row_base, h_ok, iw, col_ok & (iw < iw_end), W,
                                             stride_w, kh * KW + kw, best, best_k)
    else:
        for kh in range(KH):
            ih = ih0 + kh * DH
            h_ok = row_ok & (ih >= 0) & (ih < H)
            row_base = plane_base + ih.to(tl.int64) * stride_h
            for kw in range(KW):
                best, best_k = _visit_column(x_ptr, row_base, h_ok, iw0 + kw * DW, col_ok, W, stride_w,
                                             kh * KW + kw, best, best_k)

    _store_max(out_ptr, argmax_ptr, rows.to(tl.int64)[:, None] * OW + ow[None, :], row_ok[:, None] & col_ok[None, :],
               best, best_k, KH, KW, RELU_GATE)


# ----------------------------------------------------------------------------- backward: gather
#
# Along one axis, window o covers input position i at kernel position kpos exactly when
# i + P = o * S + kpos * D. The gathers (this layout and channels-last) find the windows that can
# cover a position with these two helpers, each given t = i + P.


@triton.jit
def _covering_window(t, a, CAND: tl.constexpr, S, K, D, O):
    """The a-th, in ascending order, of the CAND windows that can cover t = i + P >= 0 (CAND =
    ceil(extent / stride)): its index o, the kernel position in it, and whether it really covers
    i (inside the output, the window's extent, and on a dilation step)."""
    o = t // S - (CAND - 1 - a)  # t >= 0: truncating division is floor division here
    dt = t - o * S  # kpos * D, >= 0
    kpos = dt // D
    return o, kpos, (o >= 0) & (o < O) & (dt < K * D) & (kpos * D == dt)


@triton.jit
def _window_at(t, kpos, K, S, D, O):
    """The window that covers t = i + P at kernel position ``kpos`` (an unroll bound may exceed K):
    its index o and whether there is one. ``kpos < K`` is compared as ``u > t - K * D``, a vector
    compare: the interpreter rejects masks from scalar ones."""
    u = t - kpos * D
    o = u // S  # u < 0 truncates toward zero; rejected by u >= 0
    return o, (u >= 0) & (o * S == u) & (o < O) & (u > t - K * D)


@triton.jit
def _gather_hit(grad_out_ptr, argmax_ptr, acc, argmax_offsets, grad_offsets, mask, k):
    """acc plus grad_out where the window at ``argmax_offsets`` chose kernel position ``k``."""
    chosen = tl.load(argmax_ptr + argmax_offsets, mask=mask, other=0).to(tl.int32)
    return acc + tl.load(grad_out_ptr + grad_offsets, mask=mask & (chosen == k), other=0.0).to(tl.float32)


@triton.jit
def max_pool2d_backward_gather_kernel(
    grad_out_ptr, argmax_ptr, grad_in_ptr,
    R, H, W, OH, OW,
    KH, KW, SH, SW, PH, PW, DH, DW,
    UNROLL: tl.constexpr, CAND_H: tl.constexpr, CAND_W: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """grad_in[p, ih, iw] = sum of grad_out over the windows that cover (ih, iw) and chose it.

    grad_out: [N, C, OH, OW] contiguous, float.   argmax: [N, C, OH, OW] contiguous (compact).
    grad_in:  [N, C, H, W] contiguous, grad_out's dtype; R = N * C * H rows of W elements.
    Each input element is written exactly once (zero when nothing chose it): no zero-fill pass,
    no atomics. For each kernel position (kh, kw) there is at most one candidate window, found by
    one division per row and one per column. Candidates are summed in float32 in ascending
    (oh, ow) order (descending kh, kw), the order torch's kernels use, so results are reproducible.
    CAND_H, CAND_W > 0: at most that many windows cover a position along each axis
    (ceil(((K - 1) * D + 1) / S): 2 for 3x3/s2, 1 for 2x2/s2); the candidates are then enumerated
    by window, oh = (ih + PH) // SH - a, instead of by kernel position, so 3x3/s2 issues 2x2 masked
    load pairs per element instead of 3x3 (at most 4 of the 9 kernel positions can ever match).
    Otherwise UNROLL: 0 (loops at run time) or an unroll bound >= KH, KW.
    """
    rows, iw, row_ok, col_ok, plane, ih = _row_tile(R, H, W, BLOCK_R, BLOCK_W)
    out_plane = plane.to(tl.int64) * OH * OW
    th = ih + PH
    tw = iw + PW
    acc = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    if CAND_H > 0:
        for a in tl.static_range(CAND_H):
            oh, kh, h_ok = _covering_window(th, a, CAND_H, SH, KH, DH, OH)
            out_row = out_plane + oh.to(tl.int64) * OW
            for b in tl.static_range(CAND_W):
                ow, kw, w_ok = _covering_window(tw, b, CAND_W, SW, KW, DW, OW)
                offsets = out_row[:, None] + ow[None, :]
                acc = _gather_hit(grad_out_ptr, argmax_ptr, acc, offsets, offsets,
                                  (row_ok & h_ok)[:, None] & (col_ok & w_ok)[None, :], kh[:, None] * KW + kw[None, :])
    elif UNROLL > 0:
        for i in tl.static_range(UNROLL):
            kh = UNROLL - 1 - i
            oh, h_ok = _window_at(th, kh, KH, SH, DH, OH)
            out_row = out_plane + oh.to(tl.int64) * OW
            for j in tl.static_range(UNROLL):
                kw = UNROLL - 1 - j
                ow, w_ok = _window_at(tw, kw, KW, SW, DW, OW)
                offsets = out_row[:, None] + ow[None, :]
                acc = _gather_hit(grad_out_ptr, argmax_ptr, acc, offsets, offsets,
                                  (row_ok & h_ok)[:, None] & (col_ok & w_ok)[None, :], kh * KW + kw)
    else:
        for i in range(KH):
            kh = KH - 1 - i
            oh, h_ok = _window_at(th, kh, KH, SH, DH, OH)
            out_row = out_plane + oh.to(tl.int64) * OW
            for j in range(KW):
                kw = KW - 1 - j
                ow, w_ok = _window_at(tw, kw, KW, SW, DW, OW)
                offsets = out_row[:, None] + ow[None, :]
                acc = _gather_hit(grad_out_ptr, argmax_ptr, acc, offsets, offsets,
                                  (row_ok & h_ok)[:, None] & (col_ok & w_ok)[None, :], kh * KW + kw)

    in_offsets = rows.to(tl.int64)[:, None] * W + iw[None, :]
    tl.store(grad_in_ptr + in_offsets, acc.to(grad_in_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def max_pool2d_backward_tiled_kernel(
    grad_out_ptr, argmax_ptr, grad_in_ptr,
    R, OW,
    KH: tl.constexpr, ALIGN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """The gather when the windows tile the input exactly: kernel (KH, 2) equal to the stride, no
    padding, no dilation, H = OH * KH and W = 2 * OW (2x2/s2 on even sizes, as in LeNet and VGG).

    Every input element lies in exactly one window, so a program takes a block of windows and
    writes the whole input block they cover, once: the window's gradient where it chose the
    element, zero elsewhere. Reads grad_out and argmax once, coalesced; writes contiguous input
    rows (the two window columns joined), so no element needs a second look.
    grad_out, argmax: [N, C, OH, OW] contiguous; R = N * C * OH rows of OW windows.
    grad_in: [N, C, OH * KH, 2 * OW] contiguous; window row r covers input rows r * KH + kh.
    ALIGN: a power of two that divides OW, promised to the compiler (vector loads and stores on
    rows of 14 windows, as in LeNet; Triton only infers divisibility by 16 from argument values).
    """
    if ALIGN > 1:
        OW = (OW // ALIGN) * ALIGN  # unchanged (the launcher's promise), visibly a multiple of ALIGN
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ow = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < R
    mask = row_ok[:, None] & (ow < OW)[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * OW + ow[None, :]
    chosen = tl.load(argmax_ptr + out_offsets, mask=mask, other=0).to(tl.int32)
    g = tl.load(grad_out_ptr + out_offsets, mask=mask, other=0.0).to(tl.float32)
    W = 2 * OW
    iw = tl.program_id(1) * (2 * BLOCK_W) + tl.arange(0, 2 * BLOCK_W)
    in_mask = row_ok[:, None] & (iw < W)[None, :]
    zero = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    for kh in tl.static_range(KH):
        # zero + g, not g: a -0.0 gradient lands as +0.0, as in torch's zero-then-add
        left = zero + tl.where(chosen == 2 * kh, g, 0.0)
        right = zero + tl.where(chosen == 2 * kh + 1, g, 0.0)
        pair = tl.reshape(tl.join(left, right), [BLOCK_R, 2 * BLOCK_W])
        in_rows = rows.to(tl.int64) * KH + kh
        tl.store(grad_in_ptr + in_rows[:, None] * W + iw[None, :], pair.to(grad_in_ptr.dtype.element_ty),
                 mask=in_mask)


# ----------------------------------------------------------------------------- backward: scatter


@triton.jit
def _winner_index(k, oh, ow, W, KW, SH, SW, PH, PW, DH, DW):
    """torch's flat index ih * W + iw (int64) of the input element at compact position k
    (``kh * KW + kw``) of window (oh, ow); the arguments broadcast."""
    kh = k // KW
    kw = k - kh * KW
    return (oh * SH - PH + kh * DH).to(tl.int64) * W + (ow * SW - PW + kw * DW)


@triton.jit
def max_pool2d_backward_scatter_kernel(
    grad_out_ptr, argmax_ptr, grad_in_ptr,
    R, H, W, OH, OW,
    KW, SH, SW, PH, PW, DH, DW,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """grad_in[winner of (p, oh, ow)] += grad_out[p, oh, ow], with float32 atomics.

    grad_out, argmax: [N, C, OH, OW] contiguous; R = N * C * OH rows of OW outputs.
    grad_in: [N, C, H, W] contiguous float32, zeroed by the caller. Summation order across
    overlapping windows depends on scheduling: not reproducible bit for bit (kept for comparison).
    """
    rows, ow, row_ok, col_ok, plane, oh = _row_tile(R, OH, OW, BLOCK_R, BLOCK_W)
    mask = row_ok[:, None] & col_ok[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * OW + ow[None, :]
    k = tl.load(argmax_ptr + out_offsets, mask=mask, other=0).to(tl.int32)
    g = tl.load(grad_out_ptr + out_offsets, mask=mask, other=0.0).to(tl.float32)
    in_offsets = (plane.to(tl.int64) * H * W)[:, None] + _winner_index(k, oh[:, None], ow[None, :], W, KW, SH, SW,
                                                                        PH, PW, DH, DW)
    tl.atomic_add(grad_in_ptr + in_offsets, g, mask=mask)


@triton.jit
def cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    """dst[i] = src[i] converted to dst's dtype; both contiguous with n elements."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask).to(dst_ptr.dtype.element_ty),
             mask=mask)


# ----------------------------------------------------------------------------- torch's indices


@triton.jit
def max_pool2d_indices_kernel(
    argmax_ptr, indices_ptr,
    R, W, OH, OW,
    KW, SH, SW, PH, PW, DH, DW,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """indices[p, oh, ow] = ih * W + iw of the winner: torch's int64 flat index within its plane.

    argmax: [N, C, OH, OW] contiguous (compact ``kh * KW + kw``); indices: same shape, int64.
    R = N * C * OH rows of OW outputs.
    """
    rows, ow, row_ok, col_ok, _, oh = _row_tile(R, OH, OW, BLOCK_R, BLOCK_W)
    mask = row_ok[:, None] & col_ok[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * OW + ow[None, :]
    k = tl.load(argmax_ptr + out_offsets, mask=mask, other=0).to(tl.int32)
    tl.store(indices_ptr + out_offsets, _winner_index(k, oh[:, None], ow[None, :], W, KW, SH, SW, PH, PW, DH, DW),
             mask=mask)


# ----------------------------------------------------------------------------- channels-last (NHWC)
#
# An input laid out channels-last (torch's memory format: an [N, H, W, C] buffer behind an
# [N, C, H, W] tensor) is read in tiles of [BLOCK_P pixels, BLOCK_C channels]: each window position
# is then, per pixel, a run of contiguous channels (vector loads), where the plane-row tiles above
# would read elements C apart. Values, argmax and the input gradient come out channels-last too,
# as torch returns them, so a channels-last network never changes layout around its pools.


@triton.jit
def _pixel_tile(P, ROWS, COLS, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a [P, C] grid whose pixels are p = (n * ROWS + r) * COLS + col: the
    pixels, the channels, their in-bounds masks and each pixel's (n, r, col), with two integer
    divisions per pixel and none per element."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = pix // COLS
    n = t // ROWS
    return pix, ch, pix < P, ch < C, n, t - n * ROWS, pix - t * COLS


@triton.jit
def _visit_pixel(x_ptr, image, ih, h_ok, iw, W, stride_h, stride_w, ch, ch_ok, k, best, best_k):
    """Compare one window position: per output pixel, the input pixel (ih, iw), all channels."""
    ok = h_ok & (iw >= 0) & (iw < W)
    m = ok[:, None] & ch_ok[None, :]
    pixel = image + ih.to(tl.int64) * stride_h + iw.to(tl.int64) * stride_w
    v = tl.load(x_ptr + pixel[:, None] + ch[None, :], mask=m, other=float("-inf")).to(tl.float32)
    return take_max(v, m, k, best, best_k)


@triton.jit
def max_pool2d_forward_nhwc_kernel(
    x_ptr, out_ptr, argmax_ptr,
    P, C, H, W, OH, OW,
    stride_n, stride_h, stride_w,
    KH, KW, SH, SW, PH, PW, DH, DW,
    UNROLL: tl.constexpr, RELU_GATE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """max_pool2d_forward_kernel for a channels-last input.

    x: [N, C, H, W] with channel stride 1 and the other strides (elements) given.
    out, argmax: [N, OH, OW, C] contiguous (channels-last [N, C, OH, OW]); P = N * OH * OW pixels.
    Program (i, j) covers output pixels [i*BLOCK_P, ...) and channels [j*BLOCK_C, ...).
    UNROLL, RELU_GATE, the scan order and the comparison: as in max_pool2d_forward_kernel.
    """
    pix, ch, pix_ok, ch_ok, n, oh, ow = _pixel_tile(P, OH, OW, C, BLOCK_P, BLOCK_C)
    image = n.to(tl.int64) * stride_n
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    ih_end = ih0 + KH * DH  # see max_pool2d_forward_kernel
    iw_end = iw0 + KW * DW
    best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
    best_k = tl.full([BLOCK_P, BLOCK_C], -1, tl.int32)
    if UNROLL > 0:
        for kh in tl.static_range(UNROLL):
            ih = ih0 + kh * DH
            h_ok = pix_ok & (ih >= 0) & (ih < H) & (ih < ih_end)
            for kw in tl.static_range(UNROLL):
                iw = iw0 + kw * DW
                best, best_k = _visit_pixel(x_ptr, image, ih, h_ok & (iw < iw_end), iw, W, stride_h, stride_w,
                                            ch, ch_ok, kh * KW + kw, best, best_k)
    else:
        for kh in range(KH):
            ih = ih0 + kh * DH
            h_ok = pix_ok & (ih >= 0) & (ih < H)
            for kw in range(KW):
                best, best_k = _visit_pixel(x_ptr, image, ih, h_ok, iw0 + kw * DW, W, stride_h, stride_w,
                                            ch, ch_ok, kh * KW + kw, best, best_k)
    _store_max(out_ptr, argmax_ptr, pix.to(tl.int64)[:, None] * C + ch[None, :], pix_ok[:, None] & ch_ok[None, :],
               best, best_k, KH, KW, RELU_GATE)


@triton.jit
def _gather_window_nhwc(grad_out_ptr, argmax_ptr, acc, n, oh, ow, ok, k, ch, ch_ok, C, OH, OW,
                        g_stride_n, g_stride_c, g_stride_h, g_stride_w, G_NHWC: tl.constexpr):
    """acc plus grad_out of window (oh, ow) of image n, per pixel, where it chose position k.

    The gradient row is loaded whole and then selected (not loaded under the "chose it" mask,
    as _gather_hit does): a per-element mask makes the compiler split a channel run into scalar
    loads, and the row is in cache anyway, read by every pixel of its window."""
    argmax_offsets = (((n.to(tl.int64) * OH + oh) * OW + ow) * C)[:, None] + ch[None, :]
    if G_NHWC:
        grad_offsets = argmax_offsets
    else:
        grad_offsets = (n.to(tl.int64) * g_stride_n + oh.to(tl.int64) * g_stride_h
                        + ow.to(tl.int64) * g_stride_w)[:, None] + ch.to(tl.int64)[None, :] * g_stride_c
    mask = ok[:, None] & ch_ok[None, :]
    chosen = tl.load(argmax_ptr + argmax_offsets, mask=mask, other=0).to(tl.int32)
    g = tl.load(grad_out_ptr + grad_offsets, mask=mask, other=0.0).to(tl.float32)
    return acc + tl.where(chosen == k, g, 0.0)  # a select: a NaN elsewhere in the row stays out


@triton.jit
def max_pool2d_backward_nhwc_kernel(
    grad_out_ptr, argmax_ptr, grad_in_ptr,
    P, C, H, W, OH, OW,
    g_stride_n, g_stride_c, g_stride_h, g_stride_w,
    KH, KW, SH, SW, PH, PW, DH, DW,
    G_NHWC: tl.constexpr, UNROLL: tl.constexpr, CAND_H: tl.constexpr, CAND_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """max_pool2d_backward_gather_kernel for a channels-last input: each input element written
    once, candidates summed in float32 in the same (ascending oh, ow) order.

    argmax: [N, OH, OW, C] contiguous (max_pool2d_forward_nhwc_kernel's). grad_out: [N, C, OH, OW]
    with element strides g_stride_*; G_NHWC: laid out like argmax (then the strides are not read
    and its loads are vectors). grad_in: [N, H, W, C] contiguous, grad_out's dtype; P = N * H * W.
    CAND_H, CAND_W, UNROLL: as in max_pool2d_backward_gather_kernel. Windows that tile the input
    exactly need no kernel of their own here: each pixel has one candidate (CAND 1), and the four
    pixels of a 2x2 window read its gradient row from the cache, not from memory, three times.
    """
    pix, ch, pix_ok, ch_ok, n, ih, iw = _pixel_tile(P, H, W, C, BLOCK_P, BLOCK_C)
    th = ih + PH
    tw = iw + PW
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    if CAND_H > 0:
        for a in tl.static_range(CAND_H):
            oh, kh, h_ok = _covering_window(th, a, CAND_H, SH, KH, DH, OH)
            for b in tl.static_range(CAND_W):
                ow, kw, w_ok = _covering_window(tw, b, CAND_W, SW, KW, DW, OW)
                acc = _gather_window_nhwc(grad_out_ptr, argmax_ptr, acc, n, oh, ow, pix_ok & h_ok & w_ok,
                                          (kh * KW + kw)[:, None], ch, ch_ok, C, OH, OW,
                                          g_stride_n, g_stride_c, g_stride_h, g_stride_w, G_NHWC)
    elif UNROLL > 0:
        for i in tl.static_range(UNROLL):
            kh = UNROLL - 1 - i
            oh, h_ok = _window_at(th, kh, KH, SH, DH, OH)
            for j in tl.static_range(UNROLL):
                kw = UNROLL - 1 - j
                ow, w_ok = _window_at(tw, kw, KW, SW, DW, OW)
                acc = _gather_window_nhwc(grad_out_ptr, argmax_ptr, acc, n, oh, ow, pix_ok & h_ok & w_ok,
                                          kh * KW + kw, ch, ch_ok, C, OH, OW,
                                          g_stride_n, g_stride_c, g_stride_h, g_stride_w, G_NHWC)
    else:
        for i in range(KH):
            kh = KH - 1 - i
            oh, h_ok = _window_at(th, kh, KH, SH, DH, OH)
            for j in range(KW):
                kw = KW - 1 - j
                ow, w_ok = _window_at(tw, kw, KW, SW, DW, OW)
                acc = _gather_window_nhwc(grad_out_ptr, argmax_ptr, acc, n, oh, ow, pix_ok & h_ok & w_ok,
                                          kh * KW + kw, ch, ch_ok, C, OH, OW,
                                          g_stride_n, g_stride_c, g_stride_h, g_stride_w, G_NHWC)
    offsets = pix.to(tl.int64)[:, None] * C + ch[None, :]
    tl.store(grad_in_ptr + offsets, acc.to(grad_in_ptr.dtype.element_ty), mask=pix_ok[:, None] & ch_ok[None, :])


@triton.jit
def max_pool2d_indices_nhwc_kernel(
    argmax_ptr, indices_ptr,
    P, C, W, OH, OW,
    KW, SH, SW, PH, PW, DH, DW,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """max_pool2d_indices_kernel for the channels-last argmax: argmax and indices [N, OH, OW, C]
    contiguous (indices int64); P = N * OH * OW pixels."""
    pix, ch, pix_ok, ch_ok, _, oh, ow = _pixel_tile(P, OH, OW, C, BLOCK_P, BLOCK_C)
    offsets = pix.to(tl.int64)[:, None] * C + ch[None, :]
    mask = pix_ok[:, None] & ch_ok[None, :]
    k = tl.load(argmax_ptr + offsets, mask=mask, other=0).to(tl.int32)
    tl.store(indices_ptr + offsets, _winner_index(k, oh[:, None], ow[:, None], W, KW, SH, SW, PH, PW, DH, DW),
             mask=mask)


# ----------------------------------------------------------------------------- geometry


def _output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: floor (or ceil) division, then ceil_mode's last-window rule."""
    numerator = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = numerator // s + 1  # Python's // rounds toward -inf, like torch's div_rtn
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def _first_all_padding_window(size: int, out: int, k: int, s: int, p: int, d: int):
    """The first output position whose window holds no input element (dilation can step over the
    whole input from the left padding), or None."""
    for o in range(out):
        start = o * s - p
        if start >= size:
            return o
        if start < 0:
            j = (-start + d - 1) // d  # the first window position at or after 0
            if j >= k or start + j * d >= size:
                return o
    return None


@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """Everything the kernels need about one max pool: shapes, window, and the argmax dtype."""

    batched: bool                 # False for a CHW input (treated as N = 1)
    n: int
    c: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    ceil_mode: bool
    out_h: int
    out_w: int
    channels_last: bool = False   # the input (and so the outputs) laid out channels-last: the NHWC kernels
    relu_gate: bool = False       # argmax says "no winner" (KH * KW) where the max is <= 0: the gather only

    @property
    def window(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def argmax_dtype(self) -> torch.dtype:
        """The narrowest integer type that holds ``kh * KW + kw`` (and KH * KW, with relu_gate)."""
        values = self.window + self.relu_gate
        if values <= 256:
            return torch.uint8
        return torch.int16 if values <= 2**15 else torch.int32

    @property
    def input_shape(self) -> tuple:
        full = (self.n, self.c, self.h, self.w)
        return full if self.batched else full[1:]

    @property
    def output_shape(self) -> tuple:
        full = (self.n, self.c, self.out_h, self.out_w)
        return full if self.batched else full[1:]

    def kernel_args(self) -> tuple:
        """(KH, KW, SH, SW, PH, PW, DH, DW), the window arguments the kernels take."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (kh, kw, sh, sw, ph, pw, dh, dw)


def check_window(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Validate the window arguments alone; return (kernel, stride, padding, dilation) as pairs."""
    kernel = runtime.pair(kernel_size, "kernel_size")
    # torch: stride None (or empty) means stride = kernel_size
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else runtime.pair(stride, "stride")
    padding = runtime.pair(padding, "padding")
    dilation = runtime.pair(dilation, "dilation")
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    for name, value, low in (("kernel_size", kernel, 1), ("stride", stride, 1), ("padding", padding, 0),
                             ("dilation", dilation, 1)):
        if min(value) < low:
            raise ValueError(f"{name} must be >= {low} in both dimensions, got {value}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size, got padding={padding} "
                         f"for kernel_size={kernel}")
    return kernel, stride, padding, dilation


def pool_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  channels_last=False, relu_gate=False) -> PoolGeometry:
    """Validate max_pool2d's arguments against an input shape; see :func:`_pool_geometry`.
    ``channels_last``: the input is laid out channels-last (4-D only); ``relu_gate``: the argmax
    records no winner where the max is <= 0; see max_pool2d_forward for both.

    Cached (the launchers call it on every step, and Python time per launch adds to small pools);
    the key is the arguments' repr, so ``True`` and ``1`` (equal in Python) stay distinct."""
    key = repr((tuple(input_shape), kernel_size, stride, padding, dilation, ceil_mode, channels_last, relu_gate))
    geo = _GEOMETRY_CACHE.get(key)
    if geo is None:
        geo = _pool_geometry(input_shape, kernel_size, stride, padding, dilation, ceil_mode)
        if channels_last:
            if not geo.batched:
                raise ValueError(f"channels_last needs a 4-D (N, C, H, W) input, got shape {tuple(input_shape)}")
            geo = dataclasses.replace(geo, channels_last=True)
        if not isinstance(relu_gate, bool):
            raise TypeError(f"relu_gate must be a bool, got {relu_gate!r}")
        if relu_gate:
            geo = dataclasses.replace(geo, relu_gate=True)
        if len(_GEOMETRY_CACHE) >= 256:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = geo
    return geo


_GEOMETRY_CACHE: dict = {}


def _pool_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                   ) -> PoolGeometry:
    """Validate max_pool2d's arguments against an input shape (N, C, H, W) or (C, H, W).

    Raises TypeError for arguments of the wrong type and ValueError for bad values, naming the
    argument: non-positive kernel_size/stride/dilation, negative padding, padding above half the
    kernel (torch's rule), a window larger than the padded input (an output of size <= 0; with
    ceil_mode torch lets the last window hang off the end), and a window that (through dilation)
    would contain only padding (torch returns -inf and an out-of-range index there).
    """
    kernel, stride, padding, dilation = check_window(kernel_size, stride, padding, dilation, ceil_mode)
    shape = tuple(input_shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {shape}")
    batched = len(shape) == 4
    n, c, h, w = shape if batched else (1,) + shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"input must have non-zero channels, height and width, got shape {shape}")
    out = []
    for axis, size in (("height", h), ("width", w)):
        i = 0 if axis == "height" else 1
        k, s, p, d = kernel[i], stride[i], padding[i], dilation[i]
        o = _output_size(size, k, s, p, d, ceil_mode)
        if o <= 0:  # torch: "Output size is too small"; ceil_mode lets a window hang off the end
            raise ValueError(f"kernel_size {kernel} with dilation {dilation} (extent {d * (k - 1) + 1} in "
                             f"{axis}) is larger than the padded input {axis} {size} + 2*{p}: "
                             f"output {axis} would be {o}")
        bad = _first_all_padding_window(size, o, k, s, p, d)
        if bad is not None:
            raise ValueError(f"dilation {dilation} with padding {padding} makes window {bad} along {axis} "
                             f"hold only padding (input {axis} {size}); torch returns -inf and an "
                             f"out-of-range index there")
        out.append(o)
    return PoolGeometry(batched, n, c, h, w, kernel, stride, padding, dilation, ceil_mode, out[0], out[1])


# ----------------------------------------------------------------------------- tiles

_INT32_MAX = 2**31 - 1


# Under the interpreter a program costs ~1 ms whatever its size, so tiles there are large and
# fixed (two shapes per kernel, not one per problem size): every specialisation the test suite
# launches is also compiled for sm_90 in CI, and each distinct tile is another compile. On the GPU
# a tile of 1024 elements on 16 warps (see _warps) keeps every SM busy with loads in flight.
# Not larger: 16384-element tiles cut the pool tests' interpreter time by 12% but took ptxas 8x
# longer (the 2x2 forward, tiled and gather backwards and 3x3 forward: 57 s against 7 s for sm_90).
_INTERPRETER_TILES = runtime.INTERPRETED
_INTERPRETER_TILE = 4096
_GPU_TILE = 1024
_GPU_MAX_W = 64


def _tiles(rows: int, cols: int):
    """(BLOCK_R, BLOCK_W): powers of two, BLOCK_W covering a row of ``cols`` where it can."""
    if _INTERPRETER_TILES:
        block_w = 16 if cols <= 16 else 64
        return _INTERPRETER_TILE // block_w, block_w
    block_w = min(runtime.next_power_of_2(cols), _GPU_MAX_W)
    return max(1, min(_GPU_TILE // block_w, runtime.next_power_of_2(rows))), block_w


def _tile_grid(rows: int, cols: int, tile=None):
    """(grid, (BLOCK_rows, BLOCK_cols)) covering a [rows, cols] grid with ``tile`` or _tiles':
    plane rows x output columns for the plane kernels, pixels x channels for the NHWC ones."""
    block_r, block_c = tile or _tiles(rows, cols)
    return (runtime.cdiv(rows, block_r), runtime.cdiv(cols, block_c)), (block_r, block_c)


def _warps(block_r: int, block_w: int) -> int:
    """num_warps for a tile: two outputs (windows) per thread. Compiled for sm_90, the 2x2/s2
    forward and the tiled backward then keep each thread's window pair in registers from load to
    store; at eight per thread (1024 outputs on the default 4 warps) the compiler re-lays the
    split/joined pairs out through shared memory between load and store (the float32 tiled
    backward: 15 barriers and scalar LDS per program; none at two per thread). Used for the 2x2
    forward and the tiled backward only: the 3x3 forward and the gather keep 4 warps (eight per
    thread), which spreads each row's index arithmetic over more outputs (about 160 against 215
    instructions per output for the 3x3 forward) at the cost of a small shared-memory exchange."""
    return max(1, min(16, block_r * block_w // 64))


def _cast_block() -> int:
    return _INTERPRETER_TILE if _INTERPRETER_TILES else _GPU_TILE


def _tiles_input_exactly(geo) -> bool:
    """Windows of (1..3, 2) that tile the input with no gap, overlap or padding (2x2/s2 on even
    sizes): the backward then writes each window's input block straight from the window."""
    return (geo.kernel == geo.stride and geo.kernel[1] == 2 and geo.kernel[0] <= 3
            and geo.padding == (0, 0) and geo.dilation == (1, 1)
            and geo.h == geo.out_h * geo.kernel[0] and geo.w == geo.out_w * 2)


def _unroll(geo) -> int:
    """Compile-time unroll bound for the window loops: 2 or 3 for small windows, else 0 (loops)."""
    largest = max(geo.kernel)
    return 2 if largest <= 2 else 3 if largest == 3 else 0


def _pair_runs(geo, unroll: int) -> int:
    """The forward's PAIR_W: KW when windows of 2 or 3 columns step two columns (2x2/s2, 3x3/s2:
    read as contiguous runs), else 0 (one strided load per window column)."""
    if unroll > 0 and geo.kernel[1] in (2, 3) and geo.stride[1] == 2 and geo.dilation[1] == 1:
        return geo.kernel[1]
    return 0


def _gather_candidates(geo) -> tuple:
    """(CAND_H, CAND_W) for the gather backward: how many windows can cover one input position
    along each axis, ceil(extent / stride) (2 for 3x3/s2, 1 for 2x2/s2), or (0, 0) above 3 (the
    kernel then enumerates every kernel position instead)."""
    cand = tuple(-(-((k - 1) * d + 1) // s) for k, s, d in zip(geo.kernel, geo.stride, geo.dilation))
    return cand if max(cand) <= 3 else (0, 0)


def _alignment(x4, geo, pair_w: int) -> int:
    """The forward's ALIGN: the largest power of two, up to 16 bytes of elements, dividing the
    input's batch, channel and row strides and its width, when rows are read as contiguous runs
    (PAIR_W, unit column stride); 1 otherwise, and under the interpreter (where it changes nothing
    but would multiply the specialisations the sm_90 check compiles)."""
    if _INTERPRETER_TILES or not pair_w or x4.stride(3) != 1:
        return 1
    align = 16 // x4.element_size()
    for v in (*x4.stride()[:3], geo.w):
        align = min(align, _power_of_two_dividing(v))
    return align


def _power_of_two_dividing(value: int, limit: int = 16) -> int:
    """The largest power of two up to ``limit`` dividing ``value``; 1 under the interpreter (see
    :func:`_alignment`)."""
    if _INTERPRETER_TILES:
        return 1
    align = limit
    while align > 1 and value % align:
        align //= 2
    return align


def _check_rows(rows: int, name: str):
    if rows > _INT32_MAX:
        raise ValueError(f"{name} has too many rows (N*C*H = {rows}) for 32-bit row indices")


# ----------------------------------------------------------------------------- launchers


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       *, relu_gate=False, tile=None):
    """Max pool ``x`` ([N, C, H, W] or [C, H, W]). Returns ``(out, argmax, geometry)``.

    ``out`` has x's dtype; ``argmax`` holds ``kh * KW + kw`` of each window's winner in
    ``geometry.argmax_dtype`` (uint8 up to 256 window positions). Non-contiguous ``x`` is read
    through its strides (no copy: a copy would cost more memory traffic than the pool itself).
    An x laid out channels-last (torch's rule: see layout.prefers_channels_last) is pooled by the
    NHWC kernels, and ``out`` and ``argmax`` are then channels-last too (``geometry.channels_last``).
    ``relu_gate=True`` (x is a ReLU's output): windows whose max is <= 0 record no winner, so the
    gather backward returns the gradient with the ReLU's gate applied (module docstring); such an
    argmax serves that backward only, not the scatter or max_pool2d_indices.
    ``tile=(BLOCK_R, BLOCK_W)`` overrides the tile (tests force GPU-sized tiles with it).
    """
    runtime.check_tensor(x, "input", ndim=(3, 4))
    geo = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                        channels_last=prefers_channels_last(x.shape, x.stride()), relu_gate=relu_gate)
    out = empty_activation(geo.output_shape, x.dtype, geo.channels_last)
    argmax = empty_activation(geo.output_shape, geo.argmax_dtype, geo.channels_last)
    if geo.n == 0:
        return out, argmax, geo
    info = runtime.LaunchInfo("max_pool2d_forward", (tuple(x.shape), tuple(out.shape)), x.dtype,
                              flops=geo.n * geo.c * geo.out_h * geo.out_w * geo.window,
                              bytes=min_forward_bytes(geo, x.element_size()))
    unroll = _unroll(geo)
    if geo.channels_last:
        pixels = geo.n * geo.out_h * geo.out_w
        _check_rows(pixels, "input")
        grid, (block_p, block_c) = _tile_grid(pixels, geo.c, tile)
        runtime.launch(max_pool2d_forward_nhwc_kernel, grid,
                       (x, out, argmax, pixels, geo.c, geo.h, geo.w, geo.out_h, geo.out_w,
                        x.stride(0), x.stride(2), x.stride(3), *geo.kernel_args()),
                       {"UNROLL": unroll, "RELU_GATE": geo.relu_gate, "BLOCK_P": block_p, "BLOCK_C": block_c}, info)
        return out, argmax, geo
    x4 = x if geo.batched else x.unsqueeze(0)
    rows = geo.n * geo.c * geo.out_h
    _check_rows(rows, "input")
    grid, (block_r, block_w) = _tile_grid(rows, geo.out_w, tile)
    pair_w = _pair_runs(geo, unroll)
    runtime.launch(
        max_pool2d_forward_kernel, grid,
        (x4, out, argmax, rows, geo.c, geo.h, geo.w, geo.out_h, geo.out_w, *x4.stride(),
         *geo.kernel_args()),
        {"UNROLL": unroll, "PAIR_W": pair_w, "ALIGN": _alignment(x4, geo, pair_w), "RELU_GATE": geo.relu_gate,
         "BLOCK_R": block_r, "BLOCK_W": block_w, "num_warps": _warps(block_r, block_w) if pair_w == 2 else 4}, info)
    return out, argmax, geo


def min_forward_bytes(geo: PoolGeometry, element_size: int) -> int:
    """Read every input element that some window covers once (bounded by the whole input), write
    the output and the compact argmax."""
    n_out = geo.n * geo.c * geo.out_h * geo.out_w
    covered = geo.n * geo.c * _covered(geo.h, geo.out_h, *_axis(geo, 0)) * _covered(geo.w, geo.out_w, *_axis(geo, 1))
    return covered * element_size + n_out * (element_size + geo.argmax_dtype.itemsize)


def _axis(geo, i):
    return geo.kernel[i], geo.stride[i], geo.padding[i], geo.dilation[i]


@functools.lru_cache(maxsize=1024)
def _covered(size, out, k, s, p, d):
    """How many of ``size`` positions some window covers."""
    hit = set()
    for o in range(out):
        for j in range(k):
            i = o * s - p + j * d
            if 0 <= i < size:
                hit.add(i)
    return len(hit)


def min_backward_bytes(geo: PoolGeometry, element_size: int) -> int:
    """Read grad_out and the compact argmax once, write grad_in once."""
    n_out = geo.n * geo.c * geo.out_h * geo.out_w
    return n_out * (element_size + geo.argmax_dtype.itemsize) + geo.n * geo.c * geo.h * geo.w * element_size


def _check_backward_args(grad_out, argmax, geo):
    if not isinstance(geo, PoolGeometry):
        raise TypeError(f"geometry must be a PoolGeometry (from max_pool2d_forward), got {type(geo).__name__}")
    runtime.check_tensor(grad_out, "grad_output")
    runtime.check_tensor(argmax, "argmax", dtypes=(geo.argmax_dtype,))
    if tuple(grad_out.shape) != geo.output_shape:
        raise ValueError(f"grad_output must have the pool's output shape {geo.output_shape}, "
                         f"got {tuple(grad_out.shape)}")
    _check_argmax(argmax, geo)


def _check_argmax(argmax, geo):
    layout_ok = (is_channels_last(argmax.shape, argmax.stride()) if geo.channels_last
                 else argmax.is_contiguous())
    if tuple(argmax.shape) != geo.output_shape or not layout_ok:
        layout = "channels-last" if geo.channels_last else "contiguous"
        raise ValueError(f"argmax must be the {layout} {geo.output_shape} tensor max_pool2d_forward "
                         f"returned, got shape {tuple(argmax.shape)} with strides {argmax.stride()}")


def max_pool2d_backward(grad_out, argmax, geo: PoolGeometry, deterministic: bool = True, *, tile=None):
    """Gradient of the input of a max pool from its output gradient and compact argmax.

    ``deterministic=True`` (default): the gather kernel, one write per input element, bitwise
    reproducible (when the windows tile the input exactly, e.g. 2x2/s2 on even sizes, the block of
    input elements a program writes is the union of a block of windows).
    ``deterministic=False``: atomic float32 scatter into a zeroed buffer, plus a cast kernel for
    float16/bfloat16 (float32 atomics also sidestep the interpreter's broken bf16 atomics).
    Returns a contiguous tensor of the input's shape and grad_out's dtype, or with
    ``geometry.channels_last`` a channels-last one, from the NHWC gather whatever
    ``deterministic`` says (it reads grad_out, any strides, as it is).
    """
    _check_backward_args(grad_out, argmax, geo)
    if geo.relu_gate and not deterministic and not geo.channels_last:
        raise ValueError("deterministic=False (the scatter) cannot read a relu_gate argmax, which records "
                         "no winner for some windows: pool without relu_gate for it")
    shape = geo.input_shape
    if geo.n == 0:
        return empty_activation(shape, grad_out.dtype, geo.channels_last)
    es = grad_out.element_size()
    info = runtime.LaunchInfo("max_pool2d_backward", (tuple(grad_out.shape), shape), grad_out.dtype,
                              flops=geo.n * geo.c * geo.out_h * geo.out_w,
                              bytes=min_backward_bytes(geo, es))
    if geo.channels_last:
        grad_in = empty_activation(shape, grad_out.dtype, True)
        pixels = geo.n * geo.h * geo.w
        _check_rows(pixels, "grad_input")
        grid, (block_p, block_c) = _tile_grid(pixels, geo.c, tile)
        cand_h, cand_w = _gather_candidates(geo)
        runtime.launch(max_pool2d_backward_nhwc_kernel, grid,
                       (grad_out, argmax, grad_in, pixels, geo.c, geo.h, geo.w, geo.out_h, geo.out_w,
                        *grad_out.stride(), *geo.kernel_args()),
                       {"G_NHWC": is_channels_last(grad_out.shape, grad_out.stride()),
                        "UNROLL": 0 if cand_h else _unroll(geo),  # unused with candidates: one compile, not two
                        "CAND_H": cand_h, "CAND_W": cand_w, "BLOCK_P": block_p, "BLOCK_C": block_c}, info)
        return grad_in
    grad_out = grad_out.contiguous()
    if deterministic and _tiles_input_exactly(geo):
        grad_in = runtime.empty(shape, grad_out.dtype, grad_out.device)
        rows = geo.n * geo.c * geo.out_h
        _check_rows(rows * geo.kernel[0], "grad_input")
        grid, (block_r, block_w) = _tile_grid(rows, geo.out_w, tile)
        runtime.launch(max_pool2d_backward_tiled_kernel, grid, (grad_out, argmax, grad_in, rows, geo.out_w),
                       {"KH": geo.kernel[0], "ALIGN": _power_of_two_dividing(geo.out_w), "BLOCK_R": block_r,
                        "BLOCK_W": block_w,
                        "num_warps": _warps(block_r, block_w)}, info)
        return grad_in
    if deterministic:
        grad_in = runtime.empty(shape, grad_out.dtype, grad_out.device)
        rows = geo.n * geo.c * geo.h
        _check_rows(rows, "grad_input")
        grid, (block_r, block_w) = _tile_grid(rows, geo.w, tile)
        cand_h, cand_w = _gather_candidates(geo)
        runtime.launch(max_pool2d_backward_gather_kernel, grid,
                       (grad_out, argmax, grad_in, rows, geo.h, geo.w, geo.out_h, geo.out_w,
                        *geo.kernel_args()),
                       {"UNROLL": _unroll(geo), "CAND_H": cand_h, "CAND_W": cand_w, "BLOCK_R": block_r,
                        "BLOCK_W": block_w}, info)
        return grad_in

    # A zero-filled float32 accumulator: the scatter adds into it (a memset, not arithmetic).
    acc = torch.zeros(shape, dtype=torch.float32, device=grad_out.device)
    rows = geo.n * geo.c * geo.out_h
    _check_rows(rows, "grad_output")
    grid, (block_r, block_w) = _tile_grid(rows, geo.out_w, tile)
    runtime.launch(max_pool2d_backward_scatter_kernel, grid,
                   (grad_out, argmax, acc, rows, geo.h, geo.w, geo.out_h, geo.out_w, *geo.kernel_args()[1:]),
                   {"BLOCK_R": block_r, "BLOCK_W": block_w}, info)
    if grad_out.dtype == torch.float32:
        return acc
    grad_in = runtime.empty(shape, grad_out.dtype, grad_out.device)
    n = acc.numel()
    runtime.launch(cast_kernel, (runtime.cdiv(n, _cast_block()),), (acc, grad_in, n), {"BLOCK": _cast_block()},
                   runtime.LaunchInfo("cast", (shape,), grad_out.dtype, flops=0, bytes=n * (4 + es)))
    return grad_in


def max_pool2d_indices(argmax, geo: PoolGeometry, *, tile=None):
    """torch's int64 indices (``ih * W + iw`` within each plane) from the compact argmax."""
    if not isinstance(geo, PoolGeometry):
        raise TypeError(f"geometry must be a PoolGeometry (from max_pool2d_forward), got {type(geo).__name__}")
    runtime.check_tensor(argmax, "argmax", dtypes=(geo.argmax_dtype,))
    _check_argmax(argmax, geo)
    if geo.relu_gate:
        raise ValueError("a relu_gate argmax records no winner for some windows, torch's indices need "
                         "every winner: pool without relu_gate to get indices")
    indices = empty_activation(geo.output_shape, torch.int64, geo.channels_last)
    if geo.n == 0:
        return indices
    info = runtime.LaunchInfo("max_pool2d_indices", (tuple(argmax.shape),), torch.int64,
                              flops=0, bytes=argmax.numel() * (argmax.element_size() + 8))
    if geo.channels_last:
        pixels = geo.n * geo.out_h * geo.out_w
        grid, (block_p, block_c) = _tile_grid(pixels, geo.c, tile)
        runtime.launch(max_pool2d_indices_nhwc_kernel, grid,
                       (argmax, indices, pixels, geo.c, geo.w, geo.out_h, geo.out_w, *geo.kernel_args()[1:]),
                       {"BLOCK_P": block_p, "BLOCK_C": block_c}, info)
        return indices
    rows = geo.n * geo.c * geo.out_h
    grid, (block_r, block_w) = _tile_grid(rows, geo.out_w, tile)
    runtime.launch(max_pool2d_indices_kernel, grid,
                   (argmax, indices, rows, geo.w, geo.out_h, geo.out_w, *geo.kernel_args()[1:]),
                   {"BLOCK_R": block_r, "BLOCK_W": block_w}, info)
    return indices
