"""Linear layers as one matmul kernel: forward with fused bias and ReLU, and both backward products.

One kernel computes ``C = act(A' @ B + bias)`` where every operand is addressed through strides,
so the three products of a linear layer are the same kernel with different views:

- forward        ``y  = relu(x @ W^T + b)``      A = x (M, K),     B = W^T (K, N)
- input grad     ``dx = g' @ W``                 A = g' (M, N),    B = W (N, K)
- weight grad    ``dW = g'^T @ x``, ``db = sum_rows g'``   A = g'^T (N, M), B = x (M, K)

where ``g' = g * (y > 0)`` is the output gradient masked by the ReLU derivative, applied as the A
operand is loaded (the "gate") rather than materialised. The bias gradient is the row sum of the
weight-grad product's A operand, accumulated by the programs of the first column of tiles, so it
costs no extra pass over g.

A product with a small output and a long reduction (the VGG's fc1 forward, 512x2048 -> 256: 32
tiles of 64x64 on 132 SMs; the H100 ran it in fp32 at 3.5 TFLOP/s, 0.41x cuBLAS) splits K: each
split writes its fp32 partial product into a workspace and a second kernel adds the splits in a
fixed order, then the bias and ReLU. The split depends on the shape and the SM count only, never
on the tile the autotuner picks, and there are no atomics: results are reproducible bit for bit.
"""
import functools

import torch
import triton
import triton.language as tl

from .. import runtime
from . import elementwise, layout


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, gate_ptr, rowsum_ptr, M, N, K, K_PER_SPLIT,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cs, stride_cm, stride_cn,
                  stride_gm, stride_gk,
                  HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_GATE: tl.constexpr,
                  HAS_ROWSUM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C[m, n] = act(sum_k A'[m, k] * B[k, n] + bias[n]) with fp32 accumulation, the k of split s
    being [s * K_PER_SPLIT, min((s + 1) * K_PER_SPLIT, K)).

    a: (M, K) via (stride_am, stride_ak); b: (K, N) via (stride_bk, stride_bn); c: (splits, M, N)
    via (stride_cs, stride_cm, stride_cn), written in its own dtype (one split: K_PER_SPLIT >= K,
    stride_cs unused; several: an fp32 workspace, with neither bias nor RELU); bias: (N,)
    contiguous (HAS_BIAS); gate: (M, K) via (stride_gm, stride_gk), A' = A where gate > 0 else 0
    (HAS_GATE; else A' = A); rowsum: (M,) contiguous, receives sum_k A'[m, k] (HAS_ROWSUM, one
    split only, written by programs with program_id(1) == 0). RELU: act = max(., 0), else
    identity. UPCAST: operands converted to fp32 before tl.dot (bf16 under the interpreter).
    K_PER_SPLIT: a multiple of BLOCK_K. Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), splits).
    """
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    in_m = offs_m < M
    in_n = offs_n < N
    k_end = tl.minimum((split + 1) * K_PER_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    rowsum = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(split * K_PER_SPLIT, k_end, BLOCK_K):
        kk = k0 + offs_k
        in_k = kk < k_end
        a_mask = in_m[:, None] & in_k[None, :]
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak, mask=a_mask, other=0.0)
        if HAS_GATE:
            gate = tl.load(gate_ptr + offs_m[:, None] * stride_gm + kk[None, :] * stride_gk, mask=a_mask,
                           other=0.0)
            # torch's ReLU backward zeroes the gradient where the output is <= 0 (NaN passes).
            a = tl.where(gate.to(tl.float32) <= 0, tl.zeros_like(a), a)
        if HAS_ROWSUM:
            rowsum += tl.sum(a.to(tl.float32), axis=1)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=in_k[:, None] & in_n[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, tl.zeros_like(acc), acc)
    tl.store(c_ptr + split.to(tl.int64) * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])
    if HAS_ROWSUM:
        if pid_n == 0:
            tl.store(rowsum_ptr + offs_m, rowsum.to(rowsum_ptr.dtype.element_ty), mask=in_m)


@triton.jit
def split_k_sum_kernel(ws_ptr, c_ptr, bias_ptr, M, N, SPLITS, stride_cm, stride_cn,
                       HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """C[m, n] = act(sum over s = 0, 1, ... of ws[s, m, n] + bias[n]), the splits added in order.

    ws: (SPLITS, M, N) fp32 contiguous (matmul_kernel's split partial products); c: (M, N) via
    (stride_cm, stride_cn) in its own dtype; bias: (N,) contiguous (HAS_BIAS). RELU: act =
    max(., 0). Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)).
    """
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tile = offs_m[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for s in range(SPLITS):
        acc += tl.load(ws_ptr + s * M * N + tile, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, tl.zeros_like(acc), acc)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=mask)


# GPU tile configurations: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Small products
# (the classifier layers of small CNNs) are launch-bound: a fixed choice by tile count, no timing
# trials (each trial configuration costs a compile). Larger ones are tuned once per shape over a
# few configurations per operand width: 16-bit operands feed the tensor cores 64 deep in K; the
# 32x64 and 32x32 tiles keep more programs busy when the output is small (results/
# 2026-11-27-h100-early: a 512x4096 -> 512 fp32 forward, 64 programs of 64x64, took 0.34 ms,
# 6 TFLOP/s, against cuBLAS's 0.10), and split-K (below) fills the rest.
SMALL_CONFIGS = ((32, 32, 64, 4, 3), (64, 64, 32, 4, 3))
TUNE_CONFIGS = {
    4: ((64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (32, 64, 32, 4, 4), SMALL_CONFIGS[0]),
    2: ((64, 64, 64, 4, 4), (128, 128, 64, 8, 3), (32, 64, 64, 4, 4), SMALL_CONFIGS[0]),
}
GPU_CONFIGS = tuple(dict.fromkeys(SMALL_CONFIGS + TUNE_CONFIGS[4] + TUNE_CONFIGS[2]))  # every one used
SMALL_FLOPS = 1 << 26
_TUNED: dict = {}
AUTOTUNE = not runtime.INTERPRETED


def set_autotune(enabled: bool) -> bool:
    """Turn the GPU timing trials for large products on or off (off: the first candidate of
    each list); returns the previous value. Always off under the interpreter."""
    global AUTOTUNE
    previous, AUTOTUNE = AUTOTUNE, bool(enabled) and not runtime.INTERPRETED
    return previous


# Split-K: only where the 64x64 tiles would occupy under half the SMs, one split per SM's worth
# of tiles, each split at least SPLIT_MIN_K deep (shallower, the partial sums cost more than the
# programs gain) and a whole number of K_GRAIN, the deepest BLOCK_K, so that the splits and with
# them the order of the additions are the same whichever tile the autotuner picks.
SPLIT_MIN_K = 256
K_GRAIN = 64
# the sum of the splits: rows of 128 fp32 (512 bytes) per tile row, 128 programs for fc1's output
SUM_TILE_GPU = (16, 128)
SUM_TILE = (128, 128) if runtime.INTERPRETED else SUM_TILE_GPU


def split_k_count(M, N, K, sms):
    """How many K splits a (M, K) @ (K, N) product gets on a GPU with ``sms`` SMs (1: none)."""
    tiles = runtime.cdiv(M, 64) * runtime.cdiv(N, 64)
    if 2 * tiles > sms:
        return 1
    return _split_k(K, max(1, min(sms // tiles, K // SPLIT_MIN_K)))[0]


def _split_k(K, splits):
    """(splits, k_per_split): ``splits`` rounded so every split is a whole number of K_GRAIN."""
    if K <= K_GRAIN:  # (K = 0: an empty reduction, the bias alone)
        return 1, K_GRAIN
    per = runtime.cdiv(runtime.cdiv(K, splits), K_GRAIN) * K_GRAIN
    return runtime.cdiv(K, per), per


def is_small_product(M, N, K) -> bool:
    """A product small enough to be launch-bound (the classifier layers of small CNNs)."""
    return 2 * M * N * K <= SMALL_FLOPS


def _small_config(M, N):
    # Enough 64x64 tiles to occupy most SMs -> 64x64; otherwise 32x32 tiles for more programs.
    return SMALL_CONFIGS[1] if runtime.cdiv(M, 64) * runtime.cdiv(N, 64) >= 64 else SMALL_CONFIGS[0]


# Under the interpreter one program costs ~1 ms whatever its tile, so tiles are large; and one
# fixed configuration (8 warps, 1 stage, BLOCK_K 32: quick for ptxas) keeps the number of
# specialisations the ahead-of-time compile check must build small.
INTERPRETER_CONFIG = (128, 128, 32, 8, 1)


def _tuned_config(key, run, candidates):
    """Pick the fastest of ``candidates`` for this key once (timing trials), then reuse it."""
    config = _TUNED.get(key)
    if config is None and runtime.capturing():
        return candidates[0]  # no timing trials inside a CUDA graph capture
    if config is None:
        import triton.testing

        best = None
        for cfg in candidates:
            # Trials launch directly, not through runtime.launch: they are tuning, not user work.
            try:
                ms = triton.testing.do_bench(lambda: run(cfg, direct=True), warmup=2, rep=8)
            except Exception:  # a config the card cannot run (e.g. out of shared memory) is skipped
                continue
            if best is None or ms < best[0]:
                best = (ms, cfg)
        config = _TUNED[key] = best[1] if best else candidates[0]
    return config


def _direct_launch(kernel, grid, args, constexprs, info):
    return kernel[grid](*args, **constexprs)


def matmul(a, b, *, bias=None, relu=False, gate=None, rowsum=False, out=None, blocks=None, split_k=None):
    """``act(A' @ B + bias)`` for 2-D views a (M, K) and b (K, N) of one float dtype.

    ``gate`` (M, K): A' = a where gate > 0 else 0. ``rowsum``: also return sum_k A'[:, k] (M,).
    ``blocks``: force (BLOCK_M, BLOCK_N, BLOCK_K[, num_warps, num_stages]), as tests do to run
    GPU-sized tiles under the interpreter. ``split_k``: force the number of K splits (default:
    ``split_k_count`` on a GPU, none under the interpreter; not with ``rowsum``).
    Returns c (M, N), or (c, rowsum) with ``rowsum``.
    """
    M, K = a.shape
    N = b.shape[1]
    dtype = a.dtype
    c = runtime.empty((M, N), dtype) if out is None else out
    rs = runtime.empty((M,), dtype) if rowsum else None
    if M == 0 or (N == 0 and not rowsum):  # (no columns, but row sums: one column of programs)
        return (c, rs) if rowsum else c
    if gate is not None and gate.shape != a.shape:
        raise ValueError(f"gate must have a's shape {tuple(a.shape)}, got {tuple(gate.shape)}")
    small = is_small_product(M, N, K)  # launch-bound: a fixed tile, no timing trials, no split
    if split_k is None:
        split_k = 1 if rowsum or runtime.INTERPRETED or small else split_k_count(M, N, K, runtime.sm_count())
    elif isinstance(split_k, bool) or not isinstance(split_k, int) or split_k < 1:
        raise ValueError(f"split_k must be a positive int, got {split_k!r}")
    elif rowsum and split_k > 1:
        raise ValueError("split_k > 1 cannot also return the row sums (rowsum=True)")
    g = gate if gate is not None else a
    bias_or_c = bias if bias is not None else c
    splits = _split_k(K, split_k)[0]
    key = (M, N, K, a.stride(), b.stride(), c.stride(), g.stride(), dtype, bias is not None, bool(relu),
           gate is not None, bool(rowsum), runtime.dot_precision(dtype), splits)

    def run(cfg, direct=False):
        product, split_sum = _matmul_plan(*key, cfg)
        launch = _direct_launch if direct else runtime.launch
        ws = c if split_sum is None else runtime.empty((splits, M, N), torch.float32)
        launch(matmul_kernel, product[0], (a, b, ws, bias_or_c, g, rs if rs is not None else c) + product[1],
               *product[2:])
        if split_sum is not None:
            launch(split_k_sum_kernel, split_sum[0], (ws, c, bias_or_c) + split_sum[1], *split_sum[2:])

    if blocks is not None:
        cfg = tuple(blocks)
    elif runtime.INTERPRETED:
        cfg = INTERPRETER_CONFIG
    elif small:
        cfg = _small_config(M, N)
    elif not AUTOTUNE:
        cfg = TUNE_CONFIGS[4 if a.element_size() == 4 else 2][0]
    else:
        cfg = _tuned_config(key, run, TUNE_CONFIGS[4 if a.element_size() == 4 else 2])
    run(cfg)
    return (c, rs) if rowsum else c


@functools.lru_cache(maxsize=1024)
def _matmul_plan(M, N, K, a_stride, b_stride, c_stride, g_stride, dtype, has_bias, relu, has_gate, rowsum,
                 precision, splits, cfg):
    """The launches of one product, each as (grid, scalar arguments, constexprs, LaunchInfo): the
    matmul, and with several K splits the sum of their partial products (else None). Computed
    once per shape, layout, flags, splits and tile config, since a training step repeats the same
    few products and at small sizes the host's time per launch matters as much as the kernel's."""
    # The interpreter computes bf16 wrongly: load bf16, compute in fp32 there.
    upcast = runtime.INTERPRETED and dtype == torch.bfloat16
    splits, k_per_split = _split_k(K, splits)
    bm, bn, bk = cfg[:3]
    split = splits > 1  # bias and ReLU then wait for the sum of the splits
    constexprs = {"HAS_BIAS": has_bias and not split, "RELU": relu and not split, "HAS_GATE": has_gate,
                  "HAS_ROWSUM": rowsum, "PRECISION": precision, "UPCAST": upcast,
                  "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
    if len(cfg) > 3:
        constexprs.update(num_warps=cfg[3], num_stages=cfg[4])
    size = torch.empty((), dtype=dtype).element_size()
    out_bytes = 4 * splits * M * N if split else size * (M * N + (N if has_bias else 0))
    product = ((runtime.cdiv(M, bm), max(1, runtime.cdiv(N, bn)), splits),
               (M, N, K, k_per_split, *a_stride, *b_stride, M * N, *((N, 1) if split else c_stride), *g_stride),
               constexprs,
               runtime.LaunchInfo("linear", ((M, K), (K, N)), dtype, flops=2 * M * N * K,
                                  bytes=size * (M * K * (2 if has_gate else 1) + K * N + (M if rowsum else 0))
                                  + out_bytes))
    if not split:
        return product, None
    sum_m, sum_n = SUM_TILE
    split_sum = ((runtime.cdiv(M, sum_m), runtime.cdiv(N, sum_n)), (M, N, splits, *c_stride),
                 {"HAS_BIAS": has_bias, "RELU": relu, "BLOCK_M": sum_m, "BLOCK_N": sum_n, "num_warps": 4},
                 runtime.LaunchInfo("linear_split_sum", ((splits, M, N),), torch.float32, flops=splits * M * N,
                                    bytes=out_bytes + size * (M * N + (N if has_bias else 0))))
    return product, split_sum


def _check_linear(x, weight, bias):
    runtime.check_tensor(x, "x", ndim=2)
    runtime.check_tensor(weight, "weight", ndim=2)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but weight expects in_features={weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if bias is not None:
        runtime.check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0] or bias.dtype != x.dtype:
            raise ValueError(f"bias must be ({weight.shape[0]},) of dtype {x.dtype}, "
                             f"got {tuple(bias.shape)} {bias.dtype}")


def linear_forward(x, weight, bias=None, activation=None, *, blocks=None):
    """y = act(x @ weight^T + bias): x (M, K), weight (N, K), bias (N,) -> y (M, N) in x's dtype."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    _check_linear(x, weight, bias)
    return matmul(x, weight.t(), bias=bias.contiguous() if bias is not None else None,
                  relu=activation == "relu", blocks=blocks)


def linear_backward(grad, x, weight, y=None, *, need_input=True, need_weight=True, need_bias=False,
                    blocks=None):
    """Gradients of y = act(x @ weight^T + bias) from grad = dL/dy (M, N).

    ``y``: the saved output when act is ReLU (its derivative gates grad), else None.
    Returns (grad_x or None, grad_weight or None, grad_bias or None).
    """
    runtime.check_tensor(grad, "grad", ndim=2)
    _check_linear(x, weight, None)
    M, N = grad.shape
    if M != x.shape[0] or N != weight.shape[0] or grad.dtype != x.dtype:
        raise ValueError(f"grad must be ({x.shape[0]}, {weight.shape[0]}) of dtype {x.dtype}, "
                         f"got {tuple(grad.shape)} {grad.dtype}")
    if y is not None and y.shape != grad.shape:
        raise ValueError(f"y must have grad's shape {tuple(grad.shape)}, got {tuple(y.shape)}")
    grad_x = grad_w = grad_b = None
    # Hopper's TF32 tensor cores read shared memory K-major only. Both backward products read
    # B along N (W's rows for dx, x's for dW) and dW's A along M, and the ReLU gate passes A
    # through registers: sm_90 filled the tiles with 4-byte copies (48-96 LDGSTS.E a thread a
    # step) and serialised the wgmma (fc1's TF32 backward: 0.082 ms on an H100, IEEE 0.055).
    # There, the gated g once and transposed copies instead (fc1: 0.5 + 2 + 0.5 + 4 MB): 16-byte
    # copies only, as in the forward. Small products are launch-bound and keep single launches.
    stage = runtime.dot_precision(grad.dtype) == "tf32" and not is_small_product(M, N, x.shape[1])
    g, gate = (grad if y is None else elementwise.relu_backward(grad, y), None) if stage else (grad, y)
    if need_input:
        b = layout.transposed(weight, "weight").t() if stage else weight
        grad_x = matmul(g, b, gate=gate, blocks=blocks)
    if need_weight or need_bias:
        a = layout.transposed(g, "grad") if stage else g.t()
        b = layout.transposed(x, "x").t() if stage and need_weight else x
        product = matmul(a, b, gate=None if gate is None else gate.t(), rowsum=need_bias, blocks=blocks)
        grad_w, grad_b = product if need_bias else (product, None)
        if not need_weight:
            grad_w = None
    return grad_x, grad_w, grad_b
