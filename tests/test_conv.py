"""conv2d: forward (+bias +ReLU), input/weight/bias gradients against torch, layer, errors, sm_90 specs.

References are computed in float64 from the same (rounded) inputs. Outputs are poisoned by
conftest, so a comparison also proves every element was written.
"""
import contextlib
import gc
import random
import warnings

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
import torch
import triton
import triton.language as tl

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import layers, runtime, tape
from tritonnet.kernels import conv as conv_kernels

from strategies import conv_options, int_or_pair, pairs_of

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# The packed GEMM's tiles, for the tests of its own promises on layers whose weight gradient the
# direct kernel computes by default (a config with BLOCK_M/N/K chooses the GEMM)
GEMM_WGRAD = conv_kernels._fixed_config("wgrad")


@pytest.fixture(autouse=True)
def fixed_tiles():
    """One fixed config per kernel (on a GPU too): autotuning every test shape would compile each
    candidate config for each of them. test_autotuned_path covers the autotuned launch."""
    previous = conv_kernels.set_autotune(False)
    yield
    conv_kernels.set_autotune(previous)


def _close(actual, expected, tol, what):
    """|a - e| <= tol * (|e| + max|e|): relative, with the scale of the tensor as the floor."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double().cpu(), expected.double().cpu()
    assert not torch.isnan(a).any(), f"{what}: NaN (an element left unwritten?)"
    scale = e.abs().max().item() or 1.0
    err = ((a - e).abs() - tol * (e.abs() + scale)).max().item()
    assert err <= 0, f"{what}: max error {(a - e).abs().max().item():.3g} over tolerance {tol} x scale {scale:.3g}"


def _reference(x, w, b, gy, activation, **opts):
    """torch float64 forward and gradients for the same inputs."""
    xd = x.detach().double().cpu().requires_grad_()
    wd = w.detach().double().cpu().requires_grad_()
    bd = b.detach().double().cpu().requires_grad_() if b is not None else None
    with warnings.catch_warnings():  # torch notes that even 'same' kernels copy the input; irrelevant here
        warnings.simplefilter("ignore")
        y = torch.nn.functional.conv2d(xd, wd, bd, **opts)
    if activation == "relu":
        y = torch.relu(y)
    y.backward(gy.double().cpu())
    return y.detach(), xd.grad, wd.grad, (bd.grad if bd is not None else None)


def _run(x, w, b, activation, dtype, **opts):
    """tritonnet forward and backward (upstream gradient random); returns outputs and the reference."""
    xt = tn.Tensor(x, requires_grad=True)
    wt = tn.Tensor(w, requires_grad=True)
    bt = tn.Tensor(b, requires_grad=True) if b is not None else None
    y = F.conv2d(xt, wt, bt, activation=activation, **opts)
    gy = torch.randn(y.shape, device=x.device).to(dtype)
    y.backward(gy)
    ref = _reference(x, w, b, gy, activation, **opts)
    ours = (y.data, xt.grad, wt.grad, bt.grad if bt is not None else None)
    return ours, ref


def _check_all(ours, ref, tol):
    for name, a, e in zip(("y", "dx", "dw", "db"), ours, ref):
        if e is None:
            assert a is None, f"{name} should be None"
            continue
        _close(a, e, tol, name)


def _inputs(device, dtype, n, c_in, h, w, c_out, kernel, groups, bias=True):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(n, c_in, h, w, device=device).to(dtype)
    wt = (torch.randn(c_out, c_in // groups, kh, kw, device=device) / (c_in // groups * kh * kw) ** 0.5).to(dtype)
    b = torch.randn(c_out, device=device).to(dtype) if bias else None
    return x, wt, b


# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, activation)
GRID = [
    (2, 3, 9, 11, 5, 3, 1, 1, 1, 1, None),                 # basic, odd sizes, C_out not a power of two
    (1, 1, 12, 10, 6, 5, 1, 0, 1, 1, "relu"),              # C_in = 1 (MNIST), batch 1, 5x5
    (2, 4, 10, 9, 6, 3, 2, 1, 1, 2, "relu"),               # stride 2, groups 2
    (2, 5, 8, 7, 7, 3, 1, "same", 1, 1, None),             # 'same'
    (2, 4, 9, 9, 6, 4, 1, "same", 1, 1, "relu"),           # 'same' with an even kernel: asymmetric padding
    (2, 3, 5, 6, 4, 2, 1, "same", 1, 1, None),             # 'same', kernel 2: padding only bottom/right
    (2, 6, 9, 9, 6, 3, 1, 2, 2, 6, None),                  # depthwise, dilation 2
    (2, 6, 9, 8, 12, 3, 2, 1, 1, 6, "relu"),               # depthwise with multiplier 2, stride 2
    (2, 8, 5, 7, 12, 1, 1, 0, 1, 1, "relu"),               # 1x1: plain GEMM path
    (2, 8, 7, 7, 12, 1, 2, 0, 1, 1, None),                 # 1x1 stride 2: dgrad phases no tap reaches
    (3, 36, 6, 5, 20, 3, 1, 1, 1, 1, "relu"),              # channels-last kernels, weight read in place
    (2, 64, 7, 6, 64, 3, 2, 1, 1, 2, "relu"),              # channels-last, 32 per group, stride-2 phases
    (2, 6, 10, 9, 16, 5, 1, 0, 1, 1, "relu"),              # LeNet conv2: packed fwd/wgrad, channels-last dgrad
    (100, 3, 6, 6, 5, 3, 1, 1, 1, 1, "relu"),              # batch 100
    (2, 3, 13, 11, 5, 5, 2, "valid", 2, 1, None),          # 5x5, stride 2, dilation 2
    (2, 3, 13, 13, 4, 3, 3, 2, 2, 1, "relu"),              # stride 3 with dilation 2 (taps skip phases)
    (2, 3, 9, 10, 4, (3, 2), (2, 1), (1, 0), (1, 2), 1, None),  # pairs everywhere
]


@pytest.mark.parametrize("case", GRID, ids=[f"case{i}" for i in range(len(GRID))])
def test_conv2d_matches_torch_float32(seed, device, case):
    n, c_in, h, w, c_out, k, s, p, d, g, act = case
    x, wt, b = _inputs(device, torch.float32, n, c_in, h, w, c_out, k, g)
    ours, ref = _run(x, wt, b, act, torch.float32, stride=s, padding=p, dilation=d, groups=g)
    _check_all(ours, ref, TOL[torch.float32])


@pytest.mark.parametrize("dtype, case", [
    (torch.float16, GRID[2]), (torch.float16, GRID[13]),
    (torch.bfloat16, GRID[2]), (torch.bfloat16, GRID[10]), (torch.bfloat16, GRID[13]),
    (torch.float16, GRID[11]), (torch.bfloat16, GRID[12]),
], ids=["fp16-groups-stride2", "fp16-batch100", "bf16-groups-stride2", "bf16-wide", "bf16-batch100", "fp16-wide-groups",
        "bf16-lenet-conv2"])
def test_conv2d_half_precision(seed, device, dtype, case):
    n, c_in, h, w, c_out, k, s, p, d, g, act = case
    x, wt, b = _inputs(device, dtype, n, c_in, h, w, c_out, k, g)
    ours, ref = _run(x, wt, b, act, dtype, stride=s, padding=p, dilation=d, groups=g)
    assert all(t.dtype == dtype for t in ours), "outputs and gradients keep the input dtype"
    _check_all(ours, ref, TOL[dtype])


@pytest.fixture
def quiet_gc():
    """tape.saved_bytes() is global: earlier tests' graphs collected mid-measurement would shift it."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_conv2d_without_bias_and_input_gradient(seed, device, quiet_gc):
    """No bias; x a constant (first layer): only dw is computed, and only x is saved."""
    x, wt, _ = _inputs(device, torch.float32, 2, 3, 8, 9, 5, 3, 1, bias=False)
    wp = tn.Tensor(wt, requires_grad=True)
    before = tape.saved_bytes()
    y = F.conv2d(x, wp, padding=1)
    assert tape.saved_bytes() - before == x.numel() * 4, "only the input is saved when x needs no gradient"
    gy = torch.randn(y.shape, device=device)
    y.backward(gy)
    _, _, dw_ref, _ = _reference(x, wt, None, gy, None, padding=1)
    _close(wp.grad, dw_ref, 1e-5, "dw")


def _saved_storages(t):
    """{storage address: bytes} of what t's node holds for backward."""
    return {key: tape._saved_storages[key][1] for key in t._node.saved}


def test_saved_for_backward_is_input_weight_and_relu_bit_mask(seed, device, quiet_gc):
    """With the fused ReLU the tape holds x, w and one bit per output element, never the output."""
    x, wt, b = _inputs(device, torch.float32, 2, 3, 9, 7, 5, 3, 1)  # 2*9*7 = 126 pixels: not whole bytes
    xt, wp, bp = (tn.Tensor(t, requires_grad=True) for t in (x, wt, b))
    before = tape.saved_bytes()
    y = F.conv2d(xt, wp, bp, padding=1, activation="relu")
    mask_bytes = 5 * 16  # per out channel, cdiv(126, 8) bytes
    saved = _saved_storages(y)
    assert y.data.untyped_storage().data_ptr() not in saved, "the output must not be saved"
    assert saved.pop(x.untyped_storage().data_ptr()) == x.numel() * 4
    assert saved.pop(wt.untyped_storage().data_ptr()) == wt.numel() * 4
    assert list(saved.values()) == [mask_bytes], "besides x and w, only the bit mask"
    assert tape.saved_bytes() - before == (x.numel() + wt.numel()) * 4 + mask_bytes
    before = tape.saved_bytes()
    y2 = F.conv2d(xt, wp, bp, padding=1)  # kept alive: a dropped output frees what its node saved
    assert y2.requires_grad and y.requires_grad
    # The same x and weight again, no ReLU: the tape counts storages, so nothing new is held.
    assert tape.saved_bytes() - before == 0
    assert set(_saved_storages(y2)) == {x.untyped_storage().data_ptr(), wt.untyped_storage().data_ptr()}


def _packed_bits(live, c_out):
    """live: bool [N, C_out, OH, OW] -> the kernel's [C_out, cdiv(M, 8)] uint8 layout (bit m % 8 of byte m // 8)."""
    rows = live.permute(1, 0, 2, 3).reshape(c_out, -1).to(torch.int32)
    rows = torch.nn.functional.pad(rows, (0, -rows.shape[1] % 8)).reshape(c_out, -1, 8)
    return (rows << torch.arange(8, device=rows.device)).sum(-1).to(torch.uint8)


def test_relu_bit_mask_fully_written_with_torch_gates(seed, device):
    """Several programs per axis, a partial last byte, NaN and exact zeros: every byte of the
    (poisoned) mask is written, bit set exactly where torch's threshold_backward passes dy."""
    x, wt, b = _inputs(device, torch.float32, 3, 2, 7, 5, 20, 3, 1)  # M = 105 pixels
    x[1, 0, 3, 2] = float("nan")
    wt[4] = 0.0  # channel 4 outputs exactly relu(b[4]) = 0 (NaN in image 1: 0 * NaN)
    b[4] = -abs(b[4])
    tiles = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    y, mask = conv_kernels.conv2d_forward(x, wt, b, padding=1, activation="relu", config=tiles, save_relu_mask=True)
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == (20, 14)
    y_ref = torch.relu(torch.nn.functional.conv2d(x.double().cpu(), wt.double().cpu(), b.double().cpu(), padding=1))
    assert torch.equal(torch.isnan(y.cpu()), torch.isnan(y_ref)) and torch.isnan(y_ref).any()
    assert (y_ref[[0, 2], 4] == 0).all()
    assert torch.equal(mask.cpu(), _packed_bits(~(y.cpu() <= 0), 20))
    assert torch.equal(mask.cpu(), _packed_bits(~(y_ref <= 0), 20))


@contextlib.contextmanager
def launched_constexpr(name):
    """The value of constexpr ``name`` in every launch inside the block, in launch order."""
    seen = []

    def observe(kernel, grid, args, constexprs, info, run):
        seen.append(constexprs.get(name))
        return run()

    with runtime.observing(observe):
        yield seen


def test_inference_writes_no_mask(seed, device):
    """No gradient wanted (constant inputs or no_grad): the forward is compiled without the mask store."""
    x, wt, b = _inputs(device, torch.float32, 2, 3, 6, 6, 4, 3, 1)
    params = [tn.Tensor(t, requires_grad=True) for t in (wt, b)]
    with launched_constexpr("SAVE_MASK") as seen:
        y_const = F.conv2d(x, wt, b, activation="relu")
        with tn.no_grad():
            y_nograd = F.conv2d(x, *params, activation="relu")
        y_train = F.conv2d(x, *params, activation="relu")
    assert seen == [False, False, True]
    assert not y_const.requires_grad and not y_nograd.requires_grad and y_train.requires_grad
    assert torch.equal(y_const.data, y_train.data) and torch.equal(y_nograd.data, y_train.data)


def test_fused_relu_equals_conv_then_relu(seed, device):
    """conv(activation='relu') and conv followed by F.relu agree in value and in every gradient."""
    x, wt, b = _inputs(device, torch.float32, 3, 4, 7, 9, 6, 3, 1)
    results = []
    for fused in (True, False):
        ts = [tn.Tensor(t.clone(), requires_grad=True) for t in (x, wt, b)]
        if fused:
            y = F.conv2d(*ts, padding=1, activation="relu")
        else:
            y = F.relu(F.conv2d(*ts, padding=1))
        gy = 0.5 + torch.arange(y.numel(), device=device).reshape(y.shape) % 3  # no zeros, no randomness
        y.backward(gy.float())
        results.append([y.data] + [t.grad for t in ts])
    for name, a, e in zip(("y", "dx", "dw", "db"), *results):
        _close(a, e, 1e-6, name)


def test_tf32_mode_runs_tf32_dots(seed, device):
    """set_float32_matmul_precision('high') switches the fp32 dots to TF32 (ieee by default)."""
    x, wt, b = _inputs(device, torch.float32, 2, 3, 8, 8, 5, 3, 1)
    with launched_constexpr("PRECISION") as seen:
        F.conv2d(x, wt, b, padding=1)
        tn.set_float32_matmul_precision("high")
        try:
            y = F.conv2d(x, wt, b, padding=1)
        finally:
            tn.set_float32_matmul_precision("highest")
    assert seen == ["ieee", "tf32"]
    _close(y.data, _reference(x, wt, b, torch.ones(y.shape), None, padding=1)[0], 1e-3, "y (tf32)")


def test_tf32_reads_the_weight_k_major(seed, device):
    """TF32 wgmma takes B from shared memory K-major only: in 'high' precision the channels-last
    forward and dgrad read a weight staged with the reduction's channels contiguous (W_LAYOUT 2),
    grouped, with stride phases; a channels_last weight is that layout already."""
    cases = ((torch.float32, "high", conv_kernels.W_K_MAJOR), (torch.float32, "highest", conv_kernels.W_N_MAJOR),
             (torch.bfloat16, "highest", conv_kernels.W_N_MAJOR))
    for dtype, precision, layout in cases:
        x, wt, b = _inputs(device, torch.float32, 2, 32, 7, 6, 48, 3, 2)  # 16 in, 24 out channels per group
        gy = torch.randn(2, 48, 4, 3, device=device)
        # no ReLU: a TF32- or bf16-rounded output near 0 would flip the mask against the reference
        ref = _reference(x, wt, b, gy, None, stride=2, padding=1, groups=2)
        opts = dict(stride=2, padding=1, groups=2)
        tn.set_float32_matmul_precision(precision)
        try:
            with launched_constexpr("W_LAYOUT") as seen:
                y = conv_kernels.conv2d_forward(x.to(dtype), wt.to(dtype), b.to(dtype), **opts)
                dx = conv_kernels.conv2d_input_grad(gy.to(dtype), wt.to(dtype), x.shape, **opts)
        finally:
            tn.set_float32_matmul_precision("highest")
        assert [v for v in seen if v is not None] == [layout] * 5, (precision, dtype, seen)  # fwd + 4 dgrad phases
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-3 if precision == "high" else 1e-5
        _close(y, ref[0], tol, f"y {precision} {dtype}")
        _close(dx, ref[1], tol, f"dx {precision} {dtype}")
    launches = []

    def count(kernel, grid, args, constexprs, info, run):
        launches.append(info.op)
        return run()

    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), wt.contiguous(memory_format=torch.channels_last)
    tn.set_float32_matmul_precision("high")
    try:
        with runtime.observing(count):
            y = conv_kernels.conv2d_forward(x_cl, w_cl, b, **opts)
    finally:
        tn.set_float32_matmul_precision("highest")
    assert launches == ["conv2d_fwd"], f"x and the weight are channels-last already: nothing to stage, {launches}"
    _close(y, _reference(x, wt, b, gy, None, **opts)[0], 1e-3, "y from channels-last x and weight")


def test_tf32_wgrad_fma_variant(seed, device):
    """The channels-last wgrad's FMA_DOT variant (a TF32 autotune candidate) computes in IEEE fp32
    whatever the precision mode: grouped, strided, split-K, with the bias gradient."""
    x, wt, b = _inputs(device, torch.float32, 3, 32, 9, 7, 32, 3, 2)
    gy = torch.randn(3, 32, 5, 4, device=device)
    _, _, dw_ref, db_ref = _reference(x, wt, b, gy, None, stride=2, padding=1, groups=2)
    fma = next(c for c in conv_kernels.WGRAD_CL_FMA_CONFIGS if c.kwargs["BLOCK_N"] == 32)
    config = dict(fma.kwargs, num_warps=4, num_stages=1)
    tn.set_float32_matmul_precision("high")
    try:
        with launched_constexpr("FMA_DOT") as seen:
            dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, stride=2, padding=1, groups=2, bias_grad=True,
                                                     split_k=2, config=config)
    finally:
        tn.set_float32_matmul_precision("highest")
    assert [v for v in seen if v is not None] == [True], seen  # staging and the split-K reduce have none
    _close(dw, dw_ref, 1e-5, "dw")
    _close(db, db_ref, 1e-5, "db")


def test_unbatched_input_is_one_example(seed, device):
    """As torch: a (C_in, H, W) input is one example; the output and the input's gradient come
    back without the batch dimension."""
    x, w, b = _inputs(device, torch.float32, 1, 3, 9, 8, 5, 3, 1)
    ours, ref = _run(x[0], w, b, "relu", torch.float32, padding=1, stride=2)
    assert ours[0].shape == (5, 5, 4) and ours[1].shape == (3, 9, 8)
    _check_all(ours, ref, 1e-5)


def test_noncontiguous_inputs_and_gradient(seed, device):
    base = torch.randn(2, 9, 12, 5, device=device)
    x = base.permute(0, 3, 1, 2)[:, :, ::1, 1:]                # (2, 5, 9, 11), strided, not contiguous
    wt = torch.randn(3, 3, 5, 6, device=device).permute(3, 2, 1, 0) / 6  # (6, 5, 3, 3) transposed view
    b = torch.randn(12, device=device)[::2]                    # stride 2
    assert not (x.is_contiguous() or wt.is_contiguous() or b.is_contiguous())
    xt, wp, bp = (tn.Tensor(t, requires_grad=True) for t in (x, wt, b))
    y = F.conv2d(xt, wp, bp, padding=(1, 2), activation="relu")
    gy = torch.randn(y.shape[::-1], device=device).permute(3, 2, 1, 0)  # non-contiguous upstream gradient
    y.backward(gy)
    ref = _reference(x, wt, b, gy, "relu", padding=(1, 2))
    _check_all((y.data, xt.grad, wp.grad, bp.grad), ref, 1e-5)


def test_gpu_sized_tiles_on_tiny_shapes(seed, device):
    """Small tiles: several programs on every grid axis, partial tiles in M, N and K, split-K."""
    x, wt, b = _inputs(device, torch.float32, 2, 6, 7, 9, 20, 3, 2)
    gy = torch.randn(2, 20, 4, 5, device=device)
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, wt, b, gy, "relu", stride=2, padding=1, groups=2)
    tiles = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    opts = dict(stride=2, padding=1, groups=2)
    y, mask = conv_kernels.conv2d_forward(x, wt, b, activation="relu", config=tiles, save_relu_mask=True, **opts)
    _close(y, y_ref, 1e-5, "y")
    dx = conv_kernels.conv2d_input_grad(gy, wt, x.shape, relu_mask=mask, config=tiles, **opts)
    _close(dx, dx_ref, 1e-5, "dx")
    wtiles = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, relu_mask=mask, bias_grad=True, split_k=3,
                                             config=wtiles, **opts)
    _close(dw, dw_ref, 1e-5, "dw")
    _close(db, db_ref, 1e-5, "db")
    # channels-last kernels (>= 16 channels per group) with the same small tiles
    x, wt, b = _inputs(device, torch.float32, 1, 34, 5, 6, 18, 3, 1)
    gy = torch.randn(1, 18, 5, 6, device=device)
    y_ref, dx_ref, _, _ = _reference(x, wt, b, gy, None, padding=1)
    _close(conv_kernels.conv2d_forward(x, wt, b, padding=1, config=tiles), y_ref, 1e-5, "y wide")
    _close(conv_kernels.conv2d_input_grad(gy, wt, x.shape, padding=1, config=tiles), dx_ref, 1e-5, "dx wide")


def test_channels_last_kernels_stage_only_what_is_not_channels_last(seed, device):
    """Wide layers run on channels-last operands: an NHWC x is read as it is, grad_out is staged
    once (with the ReLU gate) for both gradients, and wgrad's split-K stays bitwise reproducible."""
    x, wt, b = _inputs(device, torch.float32, 2, 32, 6, 7, 40, 3, 1)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(2, 40, 6, 7, device=device)
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, wt, b, gy, "relu", padding=1)
    launches = []

    def count(kernel, grid, args, constexprs, info, run):
        launches.append(info.op)
        return run()

    with runtime.observing(count):
        y, mask = conv_kernels.conv2d_forward(x_cl, wt, b, padding=1, activation="relu", save_relu_mask=True)
        assert launches == ["to_channels_last", "conv2d_fwd_relu"], "x is NHWC already: only the weight is staged"
        launches.clear()
        dx, dw, db = conv_kernels.conv2d_backward(gy, x_cl, wt, x.shape, wt.shape, padding=1, relu_mask=mask,
                                                  bias_grad=True)
        assert launches.count("to_channels_last") == 2, launches  # grad_out once, dgrad's weight once
    _close(y, y_ref, 1e-5, "y")
    _close(dx, dx_ref, 1e-5, "dx")
    _close(dw, dw_ref, 1e-5, "dw")
    _close(db, db_ref, 1e-5, "db")
    # an NHWC grad_out without ReLU is read as it is; NCHW x is staged; split-K reproducible
    gy_cl = gy.contiguous(memory_format=torch.channels_last)
    _, dx_ref, dw_ref, db_ref = _reference(x, wt, b, gy, None, padding=1)
    _close(conv_kernels.conv2d_input_grad(gy_cl, wt, x.shape, padding=1), dx_ref, 1e-5, "dx from NHWC grad_out")
    first = conv_kernels.conv2d_weight_grad(gy_cl, x, wt.shape, padding=1, bias_grad=True, split_k=3)
    again = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, padding=1, bias_grad=True, split_k=3)
    _close(first[0], dw_ref, 1e-5, "dw split 3")
    _close(first[1], db_ref, 1e-5, "db split 3")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]), "split-K not reproducible"


def test_channels_last_input_gives_channels_last_output_and_input_gradient(seed, device):
    """torch's memory-format rule: a channels_last input gives a channels_last output and input
    gradient (both kernel families: 3 input channels take the packed ones, 32 the others)."""
    cl = torch.channels_last
    for c_in in (3, 32):
        x, wt, b = _inputs(device, torch.float32, 2, c_in, 6, 5, 16, 3, 1)
        x = x.contiguous(memory_format=cl)
        ours, ref = _run(x, wt, b, "relu", torch.float32, padding=1)
        _check_all(ours, ref, TOL[torch.float32])
        y, dx = ours[0], ours[1]
        assert y.is_contiguous(memory_format=cl) and not y.is_contiguous(), f"y layout, C_in {c_in}"
        assert dx.is_contiguous(memory_format=cl) and not dx.is_contiguous(), f"dx layout, C_in {c_in}"
    one_pixel = torch.randn(2, 32, 1, 1, device=device).contiguous(memory_format=cl)  # both layouts at once
    assert conv_kernels.conv2d_forward(one_pixel, torch.randn(8, 32, 1, 1, device=device)).is_contiguous()


def test_grids_fit_cuda_limits_for_large_inputs(device, monkeypatch):
    """Pixel tiles can outnumber the 65535 programs a CUDA grid's y and z axes allow (200 images
    of 224x224 at 64 pixels a tile: 157k): every conv launch keeps them on axis 0. Launched with
    the GPU's fixed tiles and recorded, not run."""
    grids = []

    def record_only(kernel, grid, args, constexprs, info, run):
        grids.append((kernel.__name__ if hasattr(kernel, "__name__") else str(kernel), grid))

    monkeypatch.setattr(runtime, "_OBSERVERS", [record_only])
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(runtime, "_POISON", False)  # nothing runs: leave the large buffers untouched
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)
    for c_in, k in ((3, 3), (16, 3), (16, 1)):  # packed, channels-last, 1x1
        x = torch.empty(200, c_in, 224, 224, dtype=torch.bfloat16, device=device)
        w = torch.empty(16, c_in, k, k, dtype=torch.bfloat16, device=device)
        y = conv_kernels.conv2d_forward(x, w, padding=k // 2)
        conv_kernels.conv2d_backward(y, x, w, x.shape, w.shape, padding=k // 2, bias_grad=True)
    assert {name for name, _ in grids} >= {"conv2d_fwd_kernel", "conv2d_fwd_cl_kernel", "conv2d_dgrad_cl_kernel",
                                          "conv2d_wgrad_kernel", "conv2d_wgrad_cl_kernel", "to_channels_last_kernel"}
    for name, grid in grids:
        assert len(grid) <= 3 and grid[0] < 2**31 and all(g <= 65535 for g in grid[1:]), (name, grid)
    with pytest.raises(ValueError, match="groups must be at most 65535"):
        conv_kernels.conv2d_forward(torch.empty(1, 65536, 1, 1, device=device), torch.empty(65536, 1, 1, 1, device=device),
                                    groups=65536)


def test_nchw_store_run_promises_are_true(seed, device, monkeypatch):
    """PIX_POW2 promises the NCHW store that its rows come in aligned runs of consecutive pixels
    (the GPU vectorises on it; the interpreter ignores the hint, so a false promise would only show
    on a GPU). It must divide the pixels per image, and be 1 for a dgrad split into stride phases,
    whose rows skip pixels."""
    seen = []

    def record(kernel, grid, args, constexprs, info, run):
        seen.append((getattr(kernel, "__name__", str(kernel)), constexprs.get("PIX_POW2")))
        run()

    monkeypatch.setattr(runtime, "_OBSERVERS", [record])
    cases = [  # (x shape, C_out, kernel, stride, padding, the forward's and the dgrad's PIX_POW2)
        ((2, 3, 6, 8), 4, 3, 1, 1, 16, 16),     # packed; 48 pixels an image
        ((1, 16, 5, 5), 16, 3, 1, 1, 1, 1),     # channels-last; 25 pixels
        ((2, 16, 8, 8), 16, 3, 1, 1, 64, 64),   # channels-last; 64
        ((2, 16, 8, 8), 16, 3, 2, 1, 16, 1),    # stride 2: 4x4 outputs, dx in four phases
        ((2, 3, 20, 20), 4, 5, 1, 0, 256, 16),  # 16x16 outputs; dx 400 = 16 * 25 pixels
    ]
    for x_shape, c_out, k, stride, pad, fwd_pow2, dgrad_pow2 in cases:
        seen.clear()
        x = torch.randn(x_shape, device=device)
        wt = torch.randn(c_out, x_shape[1], k, k, device=device)
        y = conv_kernels.conv2d_forward(x, wt, stride=stride, padding=pad)
        conv_kernels.conv2d_input_grad(torch.randn_like(y), wt, x.shape, stride=stride, padding=pad)
        pow2 = {name: value for name, value in seen if value is not None}
        fwd = [v for n, v in pow2.items() if "fwd" in n]
        dgrad = [v for n, v in pow2.items() if "dgrad" in n]
        assert fwd == [fwd_pow2] and dgrad == [dgrad_pow2], (x_shape, stride, pow2)
        assert (y.shape[2] * y.shape[3]) % fwd_pow2 == 0 and (x_shape[2] * x_shape[3]) % dgrad_pow2 == 0


def test_wgrad_gather_run_promises_are_true(seed, device, monkeypatch):
    """The packed wgrad promises its gathers runs of ROW_POW2 pixels that are neighbours in memory
    (see _row_runs): a power of two dividing the output row and each split's first pixel, and 1
    where a row's pixels are not neighbours (a strided conv's x, a non-contiguous x or dy); and
    dy's runs aligned (DY_ALIGNED: 16-byte loads) only where every stride of dy is a multiple of
    the run, not for a dy cut from wider rows."""
    rows = []

    def record(kernel, grid, args, constexprs, info, run):
        if "X_ROW_POW2" in constexprs:
            rows.append((constexprs["X_ROW_POW2"], constexprs["DY_ROW_POW2"], constexprs["DY_ALIGNED"]))
        run()

    monkeypatch.setattr(runtime, "_OBSERVERS", [record])
    x = torch.randn(3, 3, 12, 24, device=device)
    wt = torch.randn(4, 3, 3, 3, device=device)
    cases = [  # (x, dy's layout, stride, split_k, expected (X_ROW_POW2, DY_ROW_POW2, DY_ALIGNED))
        (x, "contiguous", 1, 1, (8, 8, True)),             # 24-pixel rows
        (x, "contiguous", 2, 1, (1, 4, True)),             # 12-pixel rows; x read every other pixel
        (x[..., ::2], "contiguous", 1, 1, (1, 4, True)),   # x strided along its rows; 12-pixel rows
        (x, "transposed", 1, 1, (8, 1, False)),            # dy's rows not contiguous
        (x, "cut", 1, 1, (8, 8, False)),                   # dy's rows 24 of 26 elements: runs unaligned
        (torch.randn(1, 3, 1, 32, device=device), "contiguous", 1, 2, (16, 16, True)),  # 32-pixel rows,
    ]                                                                                  # two splits of 16
    for xx, layout, stride, split, expected in cases:
        rows.clear()
        y = conv_kernels.conv2d_forward(xx, wt, stride=stride, padding=1)
        if layout == "contiguous":
            gy = torch.randn_like(y)
        elif layout == "cut":
            gy = torch.randn(y.shape[:3] + (y.shape[3] + 2,), device=device)[..., :y.shape[3]]
        else:
            gy = torch.randn(y.shape[:2] + y.shape[:1:-1], device=device).transpose(2, 3)
        dw, _ = conv_kernels.conv2d_weight_grad(gy, xx, wt.shape, stride=stride, padding=1, split_k=split,
                                                config=GEMM_WGRAD)
        assert rows == [expected], (xx.shape, layout, stride, split, rows)
        _, _, dw_ref, _ = _reference(xx, wt, torch.zeros(4, device=device), gy, None, stride=stride, padding=1)
        _close(dw, dw_ref, 1e-5, f"dw {layout} stride {stride}")


def test_channels_last_packed_promises_are_true(seed, device, monkeypatch):
    """The packed kernels on channels-last tensors (a channels-last network's RGB stem) promise
    alignment of their rows of out channels: CH_ALIGN to the forward's NHWC store, DY_NHWC to the
    weight gradient's channels-last dy. Each is a power of two dividing C_out and C_out/groups
    (at most 16 bytes), 1 where they are odd; DY_NHWC is 0 for a dy that is not channels-last.
    The kernels rewrite the channel counts as (C // ALIGN) * ALIGN, so a false promise would give
    wrong results here too, not only on a GPU."""
    seen = {}

    def record(kernel, grid, args, constexprs, info, run):
        for key in ("CH_ALIGN", "DY_NHWC"):
            if key in constexprs:
                seen[key] = constexprs[key]
        run()

    monkeypatch.setattr(runtime, "_OBSERVERS", [record])
    cl = torch.channels_last
    cases = [  # (C_in, C_out, groups, dtype, expected CH_ALIGN, DY_NHWC)
        (3, 8, 1, torch.float32, 4, 4),
        (3, 32, 1, torch.float16, 8, 8),
        (4, 6, 2, torch.float32, 1, 1),    # 3 out channels a group
    ]
    for c_in, c_out, groups, dtype, ch_align, dy_nhwc in cases:
        x, wt, b = _inputs(device, torch.float32, 2, c_in, 5, 6, c_out, 3, groups)
        gy = torch.randn(2, c_out, 5, 6, device=device)
        x, wt, b, gy = (t.to(dtype) for t in (x, wt, b, gy))
        y_ref, _, dw_ref, db_ref = _reference(x, wt, b, gy, None, padding=1, groups=groups)
        seen.clear()
        y = conv_kernels.conv2d_forward(x.contiguous(memory_format=cl), wt, b, padding=1, groups=groups)
        dw, db = conv_kernels.conv2d_weight_grad(gy.contiguous(memory_format=cl), x.contiguous(memory_format=cl),
                                                 wt.shape, padding=1, groups=groups, bias_grad=True, config=GEMM_WGRAD)
        assert seen == {"CH_ALIGN": ch_align, "DY_NHWC": dy_nhwc}, (c_in, c_out, groups, seen)
        assert y.is_contiguous(memory_format=cl)
        tol = TOL[dtype]
        _close(y, y_ref, tol, f"y {c_out}")
        _close(dw, dw_ref, tol, f"dw {c_out}")
        _close(db, db_ref, tol, f"db {c_out}")
        seen.clear()
        conv_kernels.conv2d_weight_grad(gy, x, wt.shape, padding=1, groups=groups, config=GEMM_WGRAD)
        assert seen == {"DY_NHWC": 0}


def test_64_bit_output_offsets(seed, device, monkeypatch):
    """Outputs of 2**31 or more elements are stored with 64-bit offsets: forced here on small
    shapes (both kernel families), which must give the same results."""
    monkeypatch.setattr(conv_kernels, "OFFSETS_64_ABOVE", 0)
    for plan in (conv_kernels._forward_plan, conv_kernels._dgrad_plan):
        plan.cache_clear()
    try:
        for c_in, c_out in ((3, 8), (32, 32)):  # packed kernels, then channels-last ones
            x, wt, b = _inputs(device, torch.float32, 2, c_in, 5, 6, c_out, 3, 1)
            gy = torch.randn(2, c_out, 5, 6, device=device)
            y_ref, dx_ref, _, _ = _reference(x, wt, b, gy, None, padding=1)
            _close(conv_kernels.conv2d_forward(x, wt, b, padding=1), y_ref, 1e-5, f"y, C_in {c_in}")
            _close(conv_kernels.conv2d_input_grad(gy, wt, x.shape, padding=1), dx_ref, 1e-5, f"dx, C_in {c_in}")
    finally:
        for plan in (conv_kernels._forward_plan, conv_kernels._dgrad_plan):
            plan.cache_clear()


@pytest.mark.parametrize("kernel", ["direct", "gemm"])
def test_wgrad_split_k_is_deterministic(seed, device, kernel):
    x, wt, _ = _inputs(device, torch.float32, 6, 3, 11, 11, 5, 3, 1)
    gy = torch.randn(6, 5, 11, 11, device=device)
    _, _, dw_ref, db_ref = _reference(x, wt, torch.zeros(5), gy, None, padding=1)
    config = GEMM_WGRAD if kernel == "gemm" else None
    results = {}
    for split in (1, 3, 3, 7):
        dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, padding=1, bias_grad=True, split_k=split,
                                                 config=config)
        _close(dw, dw_ref, 1e-5, f"dw split {split}")
        _close(db, db_ref, 1e-5, f"db split {split}")
        if split in results:
            assert torch.equal(results[split][0], dw) and torch.equal(results[split][1], db), "not reproducible"
        results[split] = (dw, db)
    assert conv_kernels.wgrad_split(conv_kernels.ConvGeometry(x.shape, wt.shape, 1, 1, 1, 1), 3)[0] == 3


def _wgrad_kernel_names(monkeypatch):
    launched = []

    def record(kernel, grid, args, constexprs, info, run):
        launched.append(kernel.__name__)
        run()

    monkeypatch.setattr(runtime, "_OBSERVERS", [record])
    return launched


# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, x and dy layout, split_k)
DIRECT_WGRAD_CASES = [
    (3, 1, 28, 28, 6, 5, 1, 2, 1, 1, "contiguous", 3),             # LeNet conv1 (two blocks of 4 out channels)
    (2, 3, 9, 12, 5, 3, 2, 1, 1, 1, "channels_last", 2),           # RGB, stride 2, channels-last x and dy
    (2, 3, 9, 24, 4, 3, 1, 1, 1, 1, "sliced", 1),                  # x read through every other column
    (2, 4, 12, 11, 8, 5, 1, 4, 2, 4, "contiguous", 5),             # depthwise x2, 5x5, dilation 2
    (1, 2, 6, 5, 2, (1, 4), (1, 2), (0, 1), 1, 2, "contiguous", 1),  # 1x4 window, batch 1
    (2, 2, 10, 9, 12, 5, 1, 2, 1, 2, "contiguous", 3),             # 2 groups x 2 blocks x 3 splits
]


@pytest.mark.parametrize("case", DIRECT_WGRAD_CASES, ids=[f"direct{i}" for i in range(len(DIRECT_WGRAD_CASES))])
def test_direct_wgrad_matches_torch(seed, device, monkeypatch, case):
    """Weights of at most 32 slots (taps, and the bias) in two blocks of out channels take the
    direct kernel (no GEMM): dw and db against torch float64 through the forward's ReLU bit mask,
    over several pixel splits (the workspace is poisoned: every row is written), with
    channels-last and sliced operands; twice the same call gives the same bits."""
    n, c_in, h, w, c_out, k, s, p, d, g, layout, split = case
    x, wt, b = _inputs(device, torch.float32, n, c_in, h, w, c_out, k, g)
    if layout == "sliced":
        x = x[..., ::2]
    y, mask = conv_kernels.conv2d_forward(x, wt, b, stride=s, padding=p, dilation=d, groups=g, activation="relu",
                                          save_relu_mask=True)
    gy = torch.randn(y.shape, device=device)
    gy[~(y > 0)] = float("nan")  # gated away, as torch's threshold_backward does: never summed
    if layout == "channels_last":
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    launched = _wgrad_kernel_names(monkeypatch)
    opts = dict(stride=s, padding=p, dilation=d, groups=g)
    dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, relu_mask=mask, bias_grad=True, split_k=split, **opts)
    assert launched == ["conv2d_wgrad_direct_kernel"] + (["column_sums_kernel"] if split > 1 else []), launched
    _, _, dw_ref, db_ref = _reference(x, wt, b, torch.nan_to_num(gy), "relu", **opts)
    _close(dw, dw_ref, 1e-5, "dw")
    _close(db, db_ref, 1e-5, "db")
    again = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, relu_mask=mask, bias_grad=True, split_k=split, **opts)
    assert torch.equal(again[0], dw) and torch.equal(again[1], db), "not reproducible"
    # without the bias slot and the gate: every slot of the row is a tap
    gy = torch.nan_to_num(gy)
    dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, split_k=split, **opts)
    assert db is None
    _close(dw, _reference(x, wt, None, gy, None, **opts)[2], 1e-5, "dw without bias and gate")


def test_direct_wgrad_route(seed, device, monkeypatch):
    """Which weight gradients are direct (see direct_wgrad_co_block), a NaN in x reaching exactly
    the weights torch's does, and the tile checks of ``config``."""
    co_block = lambda x_shape, w_shape, bias=True, **opts: conv_kernels.direct_wgrad_co_block(  # noqa: E731
        conv_kernels.geometry(x_shape, w_shape, opts.get("stride", 1), opts.get("padding", 0), 1,
                              opts.get("groups", 1)), bias)
    assert co_block((1, 1, 28, 28), (6, 1, 5, 5)) == 4            # LeNet conv1: 26 slots, 4 x 26 accumulators
    assert co_block((1, 1, 28, 28), (16, 1, 3, 3)) == 8           # 1->16 3x3: 10 slots
    assert co_block((1, 6, 14, 14), (16, 6, 5, 5)) == 0           # LeNet conv2: 150 taps, a GEMM
    assert co_block((1, 3, 32, 32), (32, 3, 3, 3)) == 0           # the RGB stem: 8 blocks of 4, a GEMM
    assert co_block((1, 3, 32, 32), (8, 3, 3, 3)) == 4            # two blocks of 4
    assert co_block((1, 2, 8, 8), (2, 1, 4, 8), bias=False, groups=2) == 1  # exactly 32 taps without the bias
    assert co_block((1, 2, 8, 8), (2, 1, 4, 8), groups=2) == 0    # 33 slots with it
    assert co_block((1, 64, 8, 8), (64, 1, 3, 3), groups=64) == 1  # depthwise
    assert co_block((1, 32, 8, 8), (32, 32, 1, 1)) == 0           # channels-last kernels
    x, wt, b = _inputs(device, torch.float32, 2, 1, 7, 6, 3, 3, 1)
    x[1, 0, 2, 3] = float("nan")
    gy = torch.randn(2, 3, 7, 6, device=device)
    dw, db = conv_kernels.conv2d_weight_grad(gy, x, wt.shape, padding=1, bias_grad=True)
    _, _, dw_ref, db_ref = _reference(x, wt, b, gy, None, padding=1)
    assert torch.equal(torch.isnan(dw.cpu()), torch.isnan(dw_ref)) and torch.isnan(dw_ref).any()
    assert not torch.isnan(db).any()
    _close(torch.nan_to_num(dw), torch.nan_to_num(dw_ref), 1e-5, "dw beside the NaNs")
    launched = _wgrad_kernel_names(monkeypatch)
    conv_kernels.conv2d_weight_grad(gy, x, wt.shape, padding=1, config=GEMM_WGRAD)
    assert launched == ["conv2d_wgrad_kernel"], "a GEMM config takes the GEMM"
    x2, w2, _ = _inputs(device, torch.float32, 1, 6, 9, 9, 16, 5, 1)
    with pytest.raises(ValueError, match="BLOCK_P"):
        conv_kernels.conv2d_weight_grad(torch.randn(1, 16, 5, 5, device=device), x2, w2.shape,
                                        config={"BLOCK_P": 128, "CO_BLOCK": 4, "num_warps": 4})


def _conv_pool_inputs(device, layout):
    """x with a NaN, and a conv whose channel 1 is mostly <= 0 and channel 2 exactly 0 after the
    ReLU: whole pool windows with no positive value (dead), and NaN windows (which pass)."""
    x, wt, b = _inputs(device, torch.float32, 2, 3, 6, 8, 4, 3, 1)
    x[1, 0, 2, 5] = float("nan")
    b[1] = -2.0
    wt[2], b[2] = 0.0, 0.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt, b


def _torch_conv_pool(x, wt, b, pool, extra=None):
    """float64 gradients of sum(pool(relu(conv(x)))) (+ extra(relu(conv(x))))."""
    xd, wd, bd = (t.detach().double().cpu().requires_grad_() for t in (x, wt, b))
    y = torch.relu(torch.nn.functional.conv2d(xd, wd, bd, padding=1))
    loss = torch.nn.functional.max_pool2d(y, **pool).sum()
    if extra is not None:
        loss = loss + extra(y)
    loss.backward()
    return xd.grad, wd.grad, bd.grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_applies_the_convs_relu_gate(seed, device, monkeypatch, layout):
    """conv2d(relu) -> max_pool2d: the pool's gather applies the ReLU's gate (no winner where a
    window's max is <= 0, NaN passing) and the conv's backward runs ungated: no "_relu" backward
    op and no staged gradient. Gradients as torch's float64 (NaN where torch has NaN) for the
    tiled (2x2) and gathered (3x3/s2, padded) backwards. A second consumer of the conv's output, or
    a pool that keeps torch's indices or scatters, leaves the gating to the conv."""
    ops = []

    def record(kernel, grid, args, constexprs, info, run):
        ops.append(info.op)
        return run()

    monkeypatch.setattr(runtime, "_OBSERVERS", [record])
    x, wt, b = _conv_pool_inputs(device, layout)
    cases = [  # (pool arguments, the other consumer of the conv's output, pool options, gated by the pool?)
        (dict(kernel_size=2), None, {}, True),
        (dict(kernel_size=3, stride=2, padding=1), None, {}, True),
        (dict(kernel_size=(3, 2), stride=2, dilation=(1, 2), ceil_mode=True), None, {}, True),  # windows off the end
        (dict(kernel_size=2), "sum", {}, False),
        (dict(kernel_size=2), None, dict(return_indices=True), False),
        (dict(kernel_size=2), None, dict(deterministic=False), False),
    ]
    for pool, other, pool_opts, pooled_gate in cases:
        if layout == "channels_last" and pool_opts.get("deterministic") is False:
            continue  # a channels-last pool always gathers
        xt, wp, bp = (tn.Tensor(t, requires_grad=True) for t in (x, wt, b))
        y = F.conv2d(xt, wp, bp, padding=1, activation="relu")
        z = F.max_pool2d(y, **pool, **pool_opts)
        z = z[0] if pool_opts.get("return_indices") else z
        loss = F.sum_all(z) if other is None else F.add(F.sum_all(z), F.mul_scalar(F.sum_all(y), 0.5))
        ops.clear()
        loss.backward()
        conv_ops = [op for op in ops if op.startswith(("conv2d_dgrad", "conv2d_wgrad"))]
        assert conv_ops and all(op.endswith("_relu") != pooled_gate for op in conv_ops), (pool, other, ops)
        if pooled_gate:
            assert "to_channels_last" not in ops, ops
        extra = (lambda y: 0.5 * y.sum()) if other else None
        refs = _torch_conv_pool(x, wt, b, pool, extra)
        for name, ours, ref in zip(("dx", "dw", "db"), (xt.grad, wp.grad, bp.grad), refs):
            assert torch.equal(torch.isnan(ours.cpu()), torch.isnan(ref)), (name, pool, other)
            _close(torch.nan_to_num(ours), torch.nan_to_num(ref), 1e-5, f"{name} {pool} {other} {pool_opts}")


def test_relu_gate_argmax_serves_the_gather_only(seed, device):
    """A relu_gate pool's argmax names no winner (KH*KW) where the max is <= 0; torch's indices and
    the atomic scatter cannot read that, and say so."""
    from tritonnet.kernels import pool as pool_kernels
    x = torch.randn(1, 2, 4, 4, device=device)
    x[0, 0] = x[0, 0].abs() + 0.1  # channel 0: every window has a winner
    x[0, 1] = -x[0, 1].abs()  # channel 1: none has
    out, argmax, geo = pool_kernels.max_pool2d_forward(torch.relu(x), 2, relu_gate=True)
    assert geo.relu_gate and (argmax[0, 1] == 4).all() and (argmax[0, 0] < 4).all()
    with pytest.raises(ValueError, match="indices"):
        pool_kernels.max_pool2d_indices(argmax, geo)
    with pytest.raises(ValueError, match="scatter"):
        pool_kernels.max_pool2d_backward(torch.ones_like(out), argmax, geo, deterministic=False)
    with pytest.raises(TypeError, match="relu_gate"):
        pool_kernels.max_pool2d_forward(x, 2, relu_gate=1)


def test_autotuned_path(seed, device):
    """On a GPU the default launch autotunes over the config list; the interpreter never does."""
    if runtime.INTERPRETED:
        assert conv_kernels.set_autotune(True) is False and conv_kernels.AUTOTUNE is False
        return
    conv_kernels.set_autotune(True)
    x, wt, b = _inputs(device, torch.bfloat16, 4, 16, 10, 10, 24, 3, 1)
    ours, ref = _run(x, wt, b, "relu", torch.bfloat16, padding=1)
    _check_all(ours, ref, TOL[torch.bfloat16])


def test_conv2d_layer_matches_torch_module(seed, device):
    torch.manual_seed(seed)
    ref = torch.nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding="valid", groups=2)
    torch.manual_seed(seed)
    ours = layers.Conv2d(4, 6, (3, 5), stride=(2, 1), padding="valid", groups=2)
    assert list(ours.state_dict()) == ["weight", "bias"]
    assert torch.equal(ours.weight.data.cpu(), ref.weight.data) and torch.equal(ours.bias.data.cpu(), ref.bias.data)
    other = torch.nn.Conv2d(4, 6, (3, 5), stride=(2, 1), groups=2)
    ours.load_state_dict(other.state_dict())
    x = torch.randn(2, 4, 9, 10)
    _close(ours(x.to(device)).data, other(x).detach().double(), 1e-5, "layer forward")
    fused = layers.Conv2d(1, 3, 3, padding="same", bias=False, activation="relu")
    assert list(fused.state_dict()) == ["weight"] and fused.bias is None
    y = fused(torch.randn(1, 1, 5, 5, device=device))
    assert y.shape == (1, 3, 5, 5) and (y.data >= 0).all()


def test_conv2d_layer_init_distribution(seed):
    """kaiming_uniform(a=sqrt(5)): uniform in +-1/sqrt(fan_in) for weight and bias."""
    m = layers.Conv2d(8, 64, 3)
    bound = 1 / (8 * 9) ** 0.5
    w, b = m.weight.data, m.bias.data
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert abs(w.std().item() - bound / 3 ** 0.5) < 0.1 * bound
    assert b.abs().max() <= bound


@pytest.mark.parametrize("make, error, match", [
    (lambda d: ((2, 4, 8, 8), (5, 3, 3, 3), {}), ValueError, "channel mismatch"),
    (lambda d: ((2, 6, 8, 8), (5, 2, 3, 3), {"groups": 3}), ValueError, "groups=3 must divide weight's out"),
    (lambda d: ((2, 6, 8, 8), (6, 2, 3, 3), {"groups": 4}), ValueError, "groups=4 must divide x's channels"),
    (lambda d: ((2, 3, 4, 4), (5, 3, 5, 5), {"padding": 0}), ValueError, "larger than the padded input"),
    (lambda d: ((2, 3, 4, 4), (5, 3, 3, 3), {"dilation": 3}), ValueError, "larger than the padded input"),
    (lambda d: ((3, 8), (5, 3, 3, 3), {}), ValueError, r"x must be 3-D \(C_in, H, W\) or 4-D .* got 2-D"),
    (lambda d: ((1, 2, 3, 8, 8), (5, 3, 3, 3), {}), ValueError, "x must be 3-D .* got 5-D"),
    (lambda d: ((2, 3, 8, 8), (5, 3, 3), {}), ValueError, "weight must be 4-D"),
    (lambda d: ((2, 3, 8, 8), (5, 3, 3, 3), {"padding": "full"}), ValueError, "padding must be"),
    (lambda d: ((2, 3, 8, 8), (5, 3, 3, 3), {"padding": "same", "stride": 2}), ValueError, "needs stride 1"),
    (lambda d: ((2, 3, 8, 8), (5, 3, 3, 3), {"stride": 0}), ValueError, "stride must be >= 1"),
    (lambda d: ((2, 3, 8, 8), (5, 3, 3, 3), {"activation": "gelu"}), ValueError, "activation must be"),
])
def test_bad_arguments_raise(device, make, error, match):
    x_shape, w_shape, kwargs = make(device)
    x, wt = torch.randn(x_shape, device=device), torch.randn(w_shape, device=device)
    with pytest.raises(error, match=match):
        F.conv2d(x, wt, **kwargs)


def test_shapes_beyond_int32_indexing_raise():
    """The kernels index pixels and in-image offsets in int32: the launchers' guard refuses more."""
    big_batch = conv_kernels.ConvGeometry((2**15, 1, 256, 256), (4, 1, 1, 1), 1, 0, 1, 1)  # 2**31 pixels
    with pytest.raises(ValueError, match="too large for 32-bit pixel indexing"):
        conv_kernels._check_int32_indexing(big_batch)
    big_image = conv_kernels.ConvGeometry((1, 2**16, 128, 256), (4, 2**16, 1, 1), 1, 0, 1, 1)  # 2**31 per image
    with pytest.raises(ValueError, match="too large for 32-bit pixel indexing"):
        conv_kernels._check_int32_indexing(big_image)
    conv_kernels._check_int32_indexing(conv_kernels.ConvGeometry((2**14, 1, 128, 256), (4, 1, 1, 1), 1, 0, 1, 1))


def test_bad_tensors_raise(device):
    x, wt = torch.randn(2, 3, 8, 8, device=device), torch.randn(5, 3, 3, 3, device=device)
    with pytest.raises(TypeError, match="x must have dtype"):
        F.conv2d(x.to(torch.int32), wt)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        F.conv2d(x, wt.half())
    with pytest.raises(ValueError, match="bias must have shape"):
        F.conv2d(x, wt, torch.randn(4, device=device))
    wrong = torch.device("meta")
    with pytest.raises(ValueError, match="x must be on device"):
        F.conv2d(x.to(wrong), wt)
    with pytest.raises(ValueError, match="weight must be on device"):
        F.conv2d(x, wt.to(wrong))
    with pytest.raises(ValueError, match="groups"):
        layers.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="save_relu_mask needs activation='relu'"):
        conv_kernels.conv2d_forward(x, wt, save_relu_mask=True)
    gy = torch.randn(2, 5, 6, 6, device=device)
    with pytest.raises(TypeError, match=r"relu_mask must have dtype in \(uint8\)"):
        conv_kernels.conv2d_input_grad(gy, wt, x.shape, relu_mask=gy[0, 0])
    with pytest.raises(ValueError, match=r"relu_mask must be the forward's contiguous bit mask of shape \(5, 9\)"):
        conv_kernels.conv2d_weight_grad(gy, x, wt.shape, relu_mask=torch.ones(5, 8, dtype=torch.uint8, device=device))


def test_autotune_candidates_fit_the_layer():
    """The pruner's candidates (at most two per layer): tiles no wider than the GEMM's N side and
    reduction chunk, whose pipeline fits in shared memory, the largest of those, and for IEEE fp32
    at most 2048 FMAs per thread."""
    def kept(kernel, precision="tf32", dtype=torch.bfloat16, fma=False, **named):
        named = {"x_ptr": torch.empty(1, dtype=dtype), **named}  # the operand dtype sizes the pipeline
        configs = kernel.early_config_prune(kernel.configs, named, PRECISION=precision)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                + ((bool(c.kwargs.get("FMA_DOT")),) if fma else ()) for c in configs]

    # the VGG's 32->64 layer: 32 in channels cap BLOCK_K at 32, out channels BLOCK_N at 64
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, CG_IN=32, CG_OUT=64) == [(128, 64, 32), (128, 32, 32)]
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, "ieee", torch.float32, CG_IN=32, CG_OUT=64) == \
        [(128, 64, 32), (128, 32, 32)]
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, CG_IN=64, CG_OUT=128) == [(128, 128, 64), (128, 64, 64)]
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, "ieee", torch.float32, CG_IN=64, CG_OUT=128) == \
        [(128, 64, 32), (128, 32, 64)]
    # 128x256x64 x 3 stages: 144 KB in bf16, 288 KB in fp32 (TF32), over the H100's 227 KB
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, CG_IN=128, CG_OUT=256) == [(128, 256, 64), (128, 128, 64)]
    assert kept(conv_kernels.conv2d_fwd_cl_autotuned, "tf32", torch.float32, CG_IN=128, CG_OUT=256) == \
        [(128, 128, 64), (128, 64, 64)]
    assert kept(conv_kernels.conv2d_dgrad_cl_autotuned, CG_IN=6, CG_OUT=16) == [(128, 16, 16), (64, 16, 16)]  # LeNet
    assert kept(conv_kernels.conv2d_wgrad_cl_autotuned, CG_IN=32, CG_OUT=64) == [(64, 32, 64)]
    assert kept(conv_kernels.conv2d_wgrad_cl_autotuned, CG_IN=64, CG_OUT=128) == [(128, 64, 64), (64, 64, 64)]
    # TF32 wgrad: the FMA variant (FMA_DOT) joins the tensor-core tiles, for fp32 operands only
    wgrad = conv_kernels.conv2d_wgrad_cl_autotuned
    assert kept(wgrad, "tf32", torch.float32, CG_IN=64, CG_OUT=128, fma=True) == \
        [(128, 64, 64, False), (64, 64, 64, False), (64, 64, 64, True)]
    assert kept(wgrad, "tf32", torch.float32, CG_IN=32, CG_OUT=64, fma=True) == [(64, 32, 64, False), (64, 32, 64, True)]
    assert kept(wgrad, "ieee", torch.float32, CG_IN=64, CG_OUT=128, fma=True) == \
        [(64, 64, 64, False), (64, 32, 64, False)]
    assert not any(fma for *_, fma in kept(wgrad, "tf32", torch.bfloat16, CG_IN=64, CG_OUT=128, fma=True))
    # packed wgrad: LeNet's 6 and 16 out channels get the 64- and 32-deep 16-row tiles, the stem's 32 rows
    packed = conv_kernels.conv2d_wgrad_autotuned
    assert kept(packed, "ieee", torch.float32, K_W=25, CG_OUT=6) == [(16, 32, 64), (16, 32, 32)]
    assert kept(packed, "ieee", torch.float32, K_W=150, CG_OUT=16) == [(16, 32, 64), (16, 32, 32)]
    assert kept(packed, K_W=27, CG_OUT=32) == [(32, 32, 64), (16, 32, 64)]


def test_one_step_reductions_run_unpipelined():
    """A packed forward or dgrad whose whole reduction fits one BLOCK_K step (the RGB stem's 27,
    LeNet conv1's 25) runs with num_stages 1, autotuned or fixed: the pipeline would compute the
    addresses of steps that do not exist. Longer reductions, the channels-last kernels (whose depth
    argument is a channel count, not the loop) and a caller's own config keep their stages."""
    def stages(kernel, **named):
        named = {"x_ptr": torch.empty(1), **named}
        return [c.num_stages for c in kernel.early_config_prune(kernel.configs, named, PRECISION="ieee")]

    assert stages(conv_kernels.conv2d_fwd_autotuned, CG_OUT=32, K_RED=27) == [1, 1]
    assert stages(conv_kernels.conv2d_dgrad_autotuned, CG_IN=6, K_RED=25) == [1, 1]
    assert stages(conv_kernels.conv2d_fwd_autotuned, CG_OUT=16, K_RED=150) == [3, 3]  # LeNet conv2
    assert stages(conv_kernels.conv2d_fwd_cl_autotuned, CG_OUT=64, CG_IN=32) == [4, 4]
    fixed = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    assert conv_kernels._one_step(fixed, 27)["num_stages"] == 1
    assert conv_kernels._one_step(fixed, 33) is fixed and conv_kernels._one_step(fixed, None) is fixed
    seen = []

    def record(kernel, grid, args, constexprs, info, run):
        seen.append(constexprs.get("num_stages"))
        return run()

    x, wt = torch.randn(1, 3, 6, 6, device=runtime.device()), torch.randn(4, 3, 3, 3, device=runtime.device())
    with runtime.observing(record):
        conv_kernels.conv2d_forward(x, wt, config={**fixed, "num_stages": 3})
    assert seen == [3]


def test_gpu_autotune_configs_and_bf16_tensor_core_dots_compile_for_sm90(monkeypatch, device):
    from aot import SpecRecorder, compile_specs

    recorder = SpecRecorder()

    def record_only(kernel, grid, args, constexprs, info, run):  # compile, never interpret, these
        return recorder(kernel, grid, args, constexprs, info, lambda: None)

    monkeypatch.setattr(runtime, "_OBSERVERS", [record_only])
    monkeypatch.setattr(runtime, "INTERPRETED", False)  # so bf16 keeps its tensor-core operands
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)  # the H100's, for the split-K sizing
    # each compile costs a second or more: a packed forward (the RGB stem) and two channels-last
    # forward configs, one dgrad and one wgrad config in bf16 (with the staging kernels), and TF32
    def config(configs, *tile):
        return next(c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) == tile)

    packed = conv_kernels.FWD_CONFIGS[3]
    picks = [config(conv_kernels.CL_CONFIGS, 128, 16, 16), config(conv_kernels.CL_CONFIGS, 128, 64, 32)]
    wcfg = config(conv_kernels.WGRAD_CL_CONFIGS, 128, 64, 64)
    assert packed.maxnreg == 128, "the register-capped packed config is among those compiled"

    def tiles(cfg):
        return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))

    for dtype, precision, shapes in ((torch.bfloat16, "highest", ((3, 64, [packed]), (64, 128, picks))),
                                     (torch.float32, "high", ((64, 128, picks[:1]),))):
        tn.set_float32_matmul_precision(precision)
        try:
            for c_in, c_out, configs in shapes:
                x = torch.randn(2, c_in, 8, 8, device=device).to(dtype)
                w = torch.randn(c_out, c_in, 3, 3, device=device).to(dtype)
                b = torch.randn(c_out, device=device).to(dtype)
                y = torch.randn(2, c_out, 8, 8, device=device).to(dtype)
                training = dtype == torch.bfloat16 and c_in == 64  # the others: inference, no mask
                for cfg in configs:
                    out = conv_kernels.conv2d_forward(x, w, b, padding=1, activation="relu", config=tiles(cfg),
                                                      save_relu_mask=training)
                if precision == "high":  # TF32 dgrad reads its weight K-major too (the forward does above)
                    conv_kernels.conv2d_input_grad(y, w, x.shape, padding=1, config=tiles(configs[0]))
                    conv_kernels.conv2d_weight_grad(y, x, w.shape, padding=1, bias_grad=True, split_k=2,
                                                    config=tiles(conv_kernels.WGRAD_CL_FMA_CONFIGS[1]))
                if training:
                    conv_kernels.conv2d_backward(y, x, w, x.shape, w.shape, padding=1, relu_mask=out[1],
                                                 bias_grad=True)
                    conv_kernels.conv2d_input_grad(y, w, x.shape, padding=1, relu_mask=out[1], config=tiles(picks[0]))
                    conv_kernels.conv2d_weight_grad(y, x, w.shape, padding=1, relu_mask=out[1], bias_grad=True,
                                                    split_k=2, config=tiles(wcfg))
        finally:
            tn.set_float32_matmul_precision("highest")
    specs = list(recorder.specs.values())
    kernels = sorted({s["kernel"] for s in specs})
    assert kernels == ["column_sums_kernel", "conv2d_dgrad_cl_kernel", "conv2d_fwd_cl_kernel", "conv2d_fwd_kernel",
                       "conv2d_wgrad_cl_kernel", "to_channels_last_kernel"], kernels
    gemms = [s for s in specs if s["kernel"].startswith("conv2d")]
    assert all(s["constexprs"]["DOT_FP32"] is False for s in gemms), "bf16 must reach tl.dot as bf16"
    assert any(s["constexprs"]["PRECISION"] == "tf32" and s["signature"].get("x_ptr") == "*fp32" for s in gemms)
    assert {s["kernel"] for s in gemms if s["constexprs"].get("W_LAYOUT") == conv_kernels.W_K_MAJOR} == \
        {"conv2d_fwd_cl_kernel", "conv2d_dgrad_cl_kernel"}, "TF32's K-major weight tiles are compiled"
    assert any(s["constexprs"].get("FMA_DOT") for s in gemms), "TF32 wgrad's FMA variant is compiled"
    assert sorted(s["constexprs"]["SAVE_MASK"] for s in specs if "SAVE_MASK" in s["constexprs"]) == [0, 0, 1, 1]
    assert {s["constexprs"]["RELU_MASK"] for s in specs if s["kernel"] == "to_channels_last_kernel"} == {0, 1}, \
        "dy is staged with the ReLU gate"
    failures = compile_specs(specs)
    assert not failures, "\n\n".join(failures)


# ----------------------------------------------------------------------------- drawn geometries


@st.composite
def conv_cases(draw):
    opts = draw(conv_options(max_stride=3))
    groups = opts["groups"]
    # channels per group: narrow ones take the packed kernels, >= 16 the channels-last ones
    cg_in = draw(st.sampled_from([1, 2, 3, 5, 16, 20]))
    cg_out = draw(st.sampled_from([1, 3, 6, 16, 24]))
    return {"x": (draw(st.integers(1, 3)), cg_in * groups, draw(st.integers(1, 9)), draw(st.integers(1, 9))),
            "w": (cg_out * groups, cg_in) + pairs_of(draw(int_or_pair(1, 4))), "opts": opts,
            "relu": draw(st.booleans()), "bias": draw(st.booleans())}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_drawn_geometries_match_torch(seed, device, case):
    """Random shapes and options against torch (float64): forward and all three gradients, or,
    where torch rejects the geometry, a ValueError from us too."""
    x = torch.randn(case["x"], device=device)
    w = torch.randn(case["w"], device=device) / (case["w"][1] * case["w"][2] * case["w"][3]) ** 0.5
    b = torch.randn(case["w"][0], device=device) if case["bias"] else None
    act = "relu" if case["relu"] else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out_shape = torch.nn.functional.conv2d(x, w, b, **case["opts"]).shape
    except RuntimeError:
        with pytest.raises(ValueError):
            F.conv2d(tn.Tensor(x), tn.Tensor(w), None if b is None else tn.Tensor(b), **case["opts"])
        return
    assume(min(out_shape) > 0)
    ours, ref = _run(x, w, b, act, torch.float32, **case["opts"])
    _check_all(ours, ref, TOL[torch.float32])


@triton.jit
def _divide_kernel(n_ptr, q_ptr, divisor, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(q_ptr + offs, conv_kernels._divide(tl.load(n_ptr + offs), divisor))


def test_magic_divisor_divides_every_int32_numerator(seed, device):
    """The forwards and dgrads split pixel indices with a multiply and a shift (conv._divide):
    exact for every 0 <= n < 2**31 by Granlund and Montgomery's bound; checked here for divisors
    of every size, powers of two and their neighbours, at the numerators where rounding would
    first go wrong (multiples of d and one below) and at the int32 edge, in Python and in the
    kernel."""
    rng = random.Random(seed)
    divisors = list(range(1, 300)) + [2**k + e for k in range(1, 31) for e in (-1, 0, 1)] + \
        [rng.randrange(1, 2**31) for _ in range(300)]
    kernel_d = []
    for d in divisors:
        magic = conv_kernels.magic_divisor(d)
        assert 2**36 <= magic < 2**39  # typed int64 by Triton whatever d is: one specialisation
        top = (2**31 - 1) // d * d
        numerators = {0, 1, d - 1, d, top - 1, top, 2**31 - 1} | {rng.randrange(2**31) for _ in range(20)}
        for n in numerators:
            if 0 <= n < 2**31:
                assert (n * (magic & 0xFFFFFFFF)) >> (magic >> 32) == n // d, (n, d)
        if len(kernel_d) < 8 and d > 1000:
            kernel_d.append(d)
    for bad in (0, 2**31):
        with pytest.raises(ValueError, match="divisor"):
            conv_kernels.magic_divisor(bad)
    for d in kernel_d + [1, 3, 784, 2**30 + 1]:
        n = torch.tensor([0, 1, d - 1, d, d + 1, 2**31 - 1, (2**31 - 1) // d * d, rng.randrange(2**31)],
                         dtype=torch.int32, device=device)
        q = runtime.empty(n.shape, torch.int32)
        runtime.launch(_divide_kernel, (1,), (n, q, conv_kernels.magic_divisor(d)), {"BLOCK": 8})
        assert torch.equal(q.cpu(), n.cpu() // d), d
