"""Max pool: values, indices and gradients against torch, bit for bit where torch's are exact.

The batch question is tested directly: in a batch of 100 where every example's maximum sits
somewhere else, each example's input gradient is non-zero only at its own winners and equals what
the example gets alone, and a per-channel scale upstream of the pool gets the batch mean of the
per-example gradients.
"""
import gc
import weakref

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import layers, runtime
from tritonnet.kernels import pool as P

from launches import kernel_name, launched

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}

# kernel_size, stride, padding, dilation, ceil_mode
CONFIGS = [
    (2, 2, 0, 1, False),                       # 2x2/s2: the LeNet/VGG pool (paired-column path)
    (2, 2, 1, 1, True),                        # paired path, with padding and ceil_mode
    (3, 2, 1, 1, False),                       # ResNet stem: overlapping windows
    (3, 2, 0, 1, True),                        # overlapping, ceil_mode's last window
    (3, 1, 1, 1, False),                       # heavy overlap
    (3, 3, 1, 1, True),                        # non-overlapping with padding
    (2, 3, 1, 1, True),                        # stride > kernel: input elements no window covers
    (3, 2, 1, 2, False),                       # dilation
    (2, 1, 1, 3, True),                        # dilation larger than the kernel
    ((3, 2), (2, 1), (1, 0), (1, 2), True),    # rectangular everything
    ((1, 4), (1, 3), 0, 1, True),
    ((3, 1), 1, (1, 0), 2, False),             # gather unrolled to 3 columns past a 1-wide window
    (1, 1, 0, 1, False),
]
# odd sizes, batch 1, batch 100, and a CHW input
SHAPES = [(2, 3, 9, 11), (1, 2, 7, 5), (100, 2, 7, 6), (3, 8, 9)]


def _ids(configs):
    return ["k{}-s{}-p{}-d{}-{}".format(*[str(v).replace(" ", "") for v in c[:4]], "ceil" if c[4] else "floor")
            for c in configs]


def _pairs(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def overlapping(config) -> bool:
    k, s, _, d, _ = (_pairs(v) if i < 4 else v for i, v in enumerate(config))
    return any(s[i] < d[i] * (k[i] - 1) + 1 for i in range(2))


def bits(t):
    return t.contiguous().view(_BITS[t.dtype])


def assert_values_equal(ours, ref):
    """Same shape and dtype, NaN exactly where torch has NaN, every other element bit for bit."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ours.dtype, ref.shape, ref.dtype)
    ours_nan, ref_nan = torch.isnan(ours), torch.isnan(ref)
    assert torch.equal(ours_nan, ref_nan), f"NaN at {(ours_nan != ref_nan).nonzero()[:5].tolist()}"
    diff = (bits(ours) != bits(ref)) & ~ref_nan
    assert not diff.any(), f"{int(diff.sum())} values differ, first at {diff.nonzero()[:5].tolist()}"


def torch_pool(x, config):
    k, s, p, d, c = config
    return torch.nn.functional.max_pool2d(x, k, s, p, d, c, return_indices=True)


def torch_grad(x, config, grad_out):
    xr = x.detach().clone().requires_grad_(True)
    torch.nn.functional.max_pool2d(xr, *config).backward(grad_out)
    return xr.grad


def exact_grad_bound(x_shape, indices, grad_out):
    """float64 gradient from torch's indices, and the sum of |contributions| per input element
    (a rounding bound: a float sum of these terms is within ~eps * that of the exact value)."""
    planes = grad_out.numel() // max(grad_out.shape[-1] * grad_out.shape[-2], 1)
    hw = x_shape[-1] * x_shape[-2]
    idx = indices.reshape(planes, -1)
    g = grad_out.double().reshape(planes, -1)
    exact = torch.zeros(planes, hw, dtype=torch.float64, device=g.device).scatter_add_(1, idx, g)
    magnitude = torch.zeros(planes, hw, dtype=torch.float64, device=g.device).scatter_add_(1, idx, g.abs())
    return exact.reshape(x_shape), magnitude.reshape(x_shape)


_GRAD_RTOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_grad_matches(ours, x, config, grad_out, indices):
    ref = torch_grad(x, config, grad_out)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if not overlapping(config):
        assert_values_equal(ours, ref)  # one window per input element: nothing to round
        return
    exact, magnitude = exact_grad_bound(x.shape, indices, grad_out)
    rtol = _GRAD_RTOL[x.dtype]
    assert not torch.isnan(ours).any()
    err = (ours.double() - exact).abs()
    assert (err <= rtol * magnitude + 1e-30).all(), f"max error {err.max().item()} vs bound"
    # torch's own reduced-precision CPU backward rounds at every step; both are within tolerance
    assert torch.allclose(ours.double(), ref.double(), rtol=2 * rtol, atol=2 * rtol * magnitude.max().item())


def assert_matches_torch(x, config, device):
    """Values and torch's indices bitwise, and the deterministic gradient, against torch."""
    ref, ref_idx = torch_pool(x, config)
    out, idx = F.max_pool2d(x, *config, return_indices=True)
    assert_values_equal(out.data, ref)
    assert torch.equal(idx.data, ref_idx)
    grad_out = torch.randn(ref.shape, device=device).to(x.dtype)
    xt = tn.Tensor(x, requires_grad=True)
    F.max_pool2d(xt, *config).backward(grad_out)
    assert_grad_matches(xt.grad, x, config, grad_out, ref_idx)
    return ref


# ----------------------------------------------------------------------------- values and indices


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_values_and_indices_equal_torch(seed, device, config):
    for shape in SHAPES:
        for dtype in DTYPES:
            x = torch.randn(shape, device=device).to(dtype)
            ref, ref_idx = torch_pool(x, config)
            out, idx = F.max_pool2d(x, *config, return_indices=True)
            assert isinstance(out, tn.Tensor) and isinstance(idx, tn.Tensor)
            assert_values_equal(out.data, ref)
            assert idx.dtype == torch.int64 and torch.equal(idx.data, ref_idx), (shape, dtype)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[1] != 1 or c[0] != 1], ids=_ids(
    [c for c in CONFIGS if c[1] != 1 or c[0] != 1]))
def test_gradients_match_torch_both_variants(seed, device, config):
    for shape in (SHAPES[0], SHAPES[2], (2, 3, 12, 10)):  # the even one: windows may tile it exactly
        for dtype in DTYPES:
            x = torch.randn(shape, device=device).to(dtype)
            _, ref_idx = torch_pool(x, config)
            grad_out = torch.randn(ref_idx.shape, device=device).to(dtype)
            for deterministic in (True, False):
                xt = tn.Tensor(x, requires_grad=True)
                F.max_pool2d(xt, *config, deterministic=deterministic).backward(grad_out)
                assert_grad_matches(xt.grad, x, config, grad_out, ref_idx)


def test_planted_ties_go_to_the_first_maximum(seed, device):
    for config in CONFIGS[:5] + CONFIGS[7:10]:
        for dtype in DTYPES:
            # three distinct values: almost every window holds a tie for its maximum
            x = torch.randint(-1, 2, (3, 2, 9, 10), device=device).to(dtype)
            x[0, 0] = 1.0  # a plane of equal values: every window is one big tie
            x[1, 1, :, ::2] = 2.0  # ties at the stride's period
            assert_matches_torch(x, config, device)


def test_nan_propagates_like_torch(seed, device):
    # torch's scan takes every NaN it meets (val > max || isnan(val)): the window reports its last NaN
    for config in (CONFIGS[0], CONFIGS[2], CONFIGS[4], CONFIGS[7]):
        for dtype in DTYPES:
            x = torch.randn(2, 3, 9, 10, device=device).to(dtype)
            x.view(-1)[torch.randperm(x.numel(), device=device)[:30]] = float("nan")
            x[1, 2, 2:5, 2:5] = float("nan")  # windows with several NaNs
            x[0, 1, 0, :] = float("inf")      # +inf beside NaN
            assert torch.isnan(assert_matches_torch(x, config, device)).any()


def test_all_minus_inf_windows_and_padding_never_wins(seed, device):
    for config in (CONFIGS[1], CONFIGS[2], CONFIGS[5], CONFIGS[7], CONFIGS[9]):
        for dtype in DTYPES:
            x = torch.full((2, 2, 9, 10), float("-inf"), device=device).to(dtype)
            x[0, 0, 4:, 5:] = torch.randn(5, 5, device=device).to(dtype)  # finite in one corner
            x[1] = -torch.rand(2, 9, 10, device=device).to(dtype) - 1.0  # all negative: zero padding would win
            ref, ref_idx = torch_pool(x, config)
            out, idx = F.max_pool2d(x, *config, return_indices=True)
            assert (ref == float("-inf")).any()
            assert_values_equal(out.data, ref)
            assert torch.equal(idx.data, ref_idx)  # the first valid position, never a padding one
            assert (out.data[1] < 0).all()


def test_large_windows_use_a_wider_argmax(seed, device):
    geo = P.pool_geometry((1, 1, 300, 300), 200)
    assert geo.argmax_dtype == torch.int32
    assert P.pool_geometry((1, 1, 9, 9), (16, 16), padding=8).argmax_dtype == torch.uint8
    x = torch.randn(2, 17, 19, device=device)  # CHW; a 17x17 window has 289 positions
    ref, ref_idx = torch_pool(x, (17, 1, 1, 1, False))
    out, argmax, geo = P.max_pool2d_forward(x, 17, 1, 1)
    assert argmax.dtype == torch.int16
    assert_values_equal(out, ref)
    assert torch.equal(P.max_pool2d_indices(argmax, geo), ref_idx)
    grad_out = torch.randn(ref.shape, device=device)
    assert_grad_matches(P.max_pool2d_backward(grad_out, argmax, geo), x, (17, 1, 1, 1, False), grad_out,
                        ref_idx)


def test_non_contiguous_inputs_are_read_through_their_strides(seed, device):
    base = torch.randn(3, 4, 12, 14, device=device)
    views = {
        "transposed": base.transpose(2, 3),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": base[:, 1:, ::2, 1::3],
        "batch_slice": base[::2],
        "chw_slice": base[1, :, 2:, :-1],
    }
    for name, view in views.items():
        for dtype in DTYPES:
            x = view.to(dtype)  # keeps the strides (and memory format) of the view
            for config in (CONFIGS[0], CONFIGS[2]):
                ref, ref_idx = torch_pool(x.contiguous(), config)
                out, idx = F.max_pool2d(x, *config, return_indices=True)
                assert_values_equal(out.data, ref)
                assert torch.equal(idx.data, ref_idx), name
                grad_out = torch.randn(ref.shape, device=device).to(dtype)
                xt = tn.Tensor(x, requires_grad=True)
                F.max_pool2d(xt, *config).backward(grad_out)
                assert xt.grad.shape == x.shape
                assert_grad_matches(xt.grad, x.contiguous(), config, grad_out, ref_idx)


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def test_channels_last_inputs_are_pooled_channels_last(seed, device):
    """Every geometry through the NHWC kernels: values and indices bit for bit, outputs and the
    input gradient laid out channels-last as torch returns them, whatever grad_out's layout."""
    for config in CONFIGS:
        for shape in ((2, 5, 9, 11), (100, 3, 7, 6)) if config is CONFIGS[2] else ((2, 5, 9, 11),):
            # every geometry in float32; the half types (the same float32 comparisons after the
            # load) on the two common window shapes: each extra combination is another sm_90 compile
            for dtype in DTYPES if config in (CONFIGS[0], CONFIGS[2]) else DTYPES[:1]:
                x = _channels_last(torch.randn(shape, device=device).to(dtype))
                ref, ref_idx = torch_pool(x, config)
                (out, idx), names = launched(lambda: F.max_pool2d(x, *config, return_indices=True), kernel_name)
                assert names == ["max_pool2d_forward_nhwc_kernel", "max_pool2d_indices_nhwc_kernel"]
                assert out.data.is_contiguous(memory_format=torch.channels_last) and not out.data.is_contiguous()
                assert idx.data.stride() == ref_idx.stride() == out.data.stride()
                assert_values_equal(out.data, ref)
                assert torch.equal(idx.data, ref_idx), (config, shape, dtype)
                grad_out = torch.randn(ref.shape, device=device).to(dtype)
                # grad_out channels-last (as a channels-last network passes it) and, on the common
                # windows, contiguous (read through its strides); deterministic=False takes the
                # (deterministic) gather too
                layouts = [(_channels_last(grad_out), True)]
                if config in (CONFIGS[0], CONFIGS[2]):
                    layouts.append((grad_out, False))
                for g, deterministic in layouts:
                    xt = tn.Tensor(x, requires_grad=True)
                    _, names = launched(lambda: F.max_pool2d(xt, *config, deterministic=deterministic).backward(g),
                                        kernel_name)
                    assert "max_pool2d_backward_nhwc_kernel" in names
                    assert xt.grad.stride() == x.stride()
                    assert_grad_matches(xt.grad, x, config, grad_out, ref_idx)


def test_channels_last_gpu_sized_tiles(seed, device):
    """Several programs along pixels and channels, partial tiles on both axes."""
    for config in (CONFIGS[0], CONFIGS[2], CONFIGS[8]):
        x = _channels_last(torch.randn(2, 20, 9, 11, device=device))
        ref, ref_idx = torch_pool(x, config)
        out, argmax, geo = P.max_pool2d_forward(x, *config, tile=(8, 16))
        assert geo.channels_last and geo.n * geo.out_h * geo.out_w > 8
        assert_values_equal(out, ref)
        assert torch.equal(P.max_pool2d_indices(argmax, geo, tile=(4, 16)), ref_idx)
        grad_out = _channels_last(torch.randn(ref.shape, device=device))
        assert_grad_matches(P.max_pool2d_backward(grad_out, argmax, geo, tile=(16, 16)), x, config, grad_out,
                            ref_idx)


def test_channels_last_ties_nan_and_layout_ambiguity(seed, device):
    for config in (CONFIGS[0], CONFIGS[2], CONFIGS[4], CONFIGS[7]):
        for dtype in DTYPES if config in (CONFIGS[0], CONFIGS[2]) else DTYPES[:1]:
            x = torch.randint(-1, 2, (3, 4, 9, 10), device=device).to(dtype)
            x[0, 0] = 1.0  # every window one big tie
            x[1, 1:3, 2:5, 2:5] = float("nan")  # several NaNs per window, two channels of one pixel
            assert_matches_torch(_channels_last(x), config, device)
    # one channel, or 1x1 planes: channels-last and contiguous are the same memory, torch's rule
    # calls the result contiguous, and so do the plane kernels here
    for shape in ((2, 1, 9, 10), (2, 6, 1, 1)):
        x = _channels_last(torch.randn(shape, device=device))
        (out, idx), names = launched(lambda: F.max_pool2d(x, 1, return_indices=True), kernel_name)
        assert names[0] == "max_pool2d_forward_kernel" and out.data.is_contiguous()
        assert torch.equal(out.data, torch_pool(x, (1, 1, 0, 1, False))[0])


def test_channels_last_argmax_is_checked(device):
    x = _channels_last(torch.randn(2, 3, 8, 8, device=device))
    out, argmax, geo = P.max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match="argmax must be the channels-last"):
        P.max_pool2d_backward(out, argmax.contiguous(), geo)
    with pytest.raises(ValueError, match="argmax must be the channels-last"):
        P.max_pool2d_indices(argmax.contiguous(), geo)
    with pytest.raises(ValueError, match="channels_last needs a 4-D"):
        P.pool_geometry((3, 8, 8), 2, channels_last=True)


def test_batch_zero_gives_empty_outputs_without_a_launch(device):
    launches = []

    def count(kernel, grid, args, constexprs, info, run):
        launches.append(kernel)
        return run()

    x = tn.Tensor(torch.randn(0, 3, 8, 8, device=device), requires_grad=True)
    with runtime.observing(count):
        out, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        out.backward(torch.randn(0, 3, 4, 4, device=device))
    assert out.shape == (0, 3, 4, 4) and idx.shape == (0, 3, 4, 4) and idx.dtype == torch.int64
    assert x.grad.shape == (0, 3, 8, 8)
    grad = P.max_pool2d_backward(torch.randn(0, 3, 4, 4, device=device),
                                 *P.max_pool2d_forward(x.data, 3, 2, 1)[1:], deterministic=False)
    assert grad.shape == (0, 3, 8, 8)
    assert launches == []


# ----------------------------------------------------------------------------- gradients


def test_deterministic_backward_is_bitwise_stable_and_scatter_agrees(seed, device):
    config = (3, 2, 1, 1, False)  # overlapping: several windows add into one input element
    for dtype in DTYPES:
        x = torch.randint(-2, 3, (4, 3, 11, 13), device=device).to(dtype)  # ties: shared winners
        out, argmax, geo = P.max_pool2d_forward(x, *config)
        grad_out = torch.randn(out.shape, device=device).to(dtype)
        runs = [P.max_pool2d_backward(grad_out, argmax, geo) for _ in range(3)]
        assert all(torch.equal(bits(r), bits(runs[0])) for r in runs[1:])
        tiled_out, tiled_argmax, tiled_geo = P.max_pool2d_forward(x[:, :, :10, :12], 2)
        assert P._tiles_input_exactly(tiled_geo)
        tiled = [P.max_pool2d_backward(tiled_out, tiled_argmax, tiled_geo) for _ in range(2)]
        assert torch.equal(bits(tiled[0]), bits(tiled[1]))
        _, ref_idx = torch_pool(x, config)
        exact, magnitude = exact_grad_bound(x.shape, ref_idx, grad_out)
        assert (magnitude == 0).any()  # elements no window chose: written as zeros, not skipped
        assert (runs[0][magnitude == 0] == 0).all() and not torch.isnan(runs[0]).any()
        scatter = P.max_pool2d_backward(grad_out, argmax, geo, deterministic=False)
        assert torch.allclose(scatter.double(), runs[0].double(), rtol=2 * _GRAD_RTOL[dtype],
                              atol=2 * _GRAD_RTOL[dtype] * magnitude.max().item())


def test_negative_zero_gradients_land_as_in_torch(seed, device):
    """torch zero-fills grad_input and adds: a -0.0 output gradient arrives as +0.0, bit for bit."""
    for shape, config in (((2, 3, 8, 10), CONFIGS[0]), ((2, 3, 9, 11), CONFIGS[0]), ((2, 3, 9, 11), CONFIGS[2])):
        x = torch.randn(shape, device=device)
        out, argmax, geo = P.max_pool2d_forward(x, *config)
        grad_out = torch.randn(out.shape, device=device)
        grad_out[:, :, ::2] = -0.0
        ref = torch_grad(x, config, grad_out)
        for deterministic in (True, False):
            assert_values_equal(P.max_pool2d_backward(grad_out, argmax, geo, deterministic), ref)


def test_gpu_sized_tiles_on_tiny_shapes(seed, device):
    """Several programs per grid axis and partial tiles, so program-id and mask logic is exercised."""
    for config, shape in ((CONFIGS[0], (2, 1, 11, 13)), (CONFIGS[0], (2, 1, 12, 36)), (CONFIGS[1], (2, 1, 11, 13)),
                          (CONFIGS[2], (2, 1, 11, 13)), (CONFIGS[9], (2, 1, 11, 13))):
        x = torch.randn(shape, device=device)
        ref, ref_idx = torch_pool(x, config)
        out, argmax, geo = P.max_pool2d_forward(x, *config, tile=(4, 4))
        assert geo.n * geo.c * geo.out_h > 4 and geo.out_w > 4  # >= 2 programs per axis, partial tiles
        assert_values_equal(out, ref)
        assert torch.equal(P.max_pool2d_indices(argmax, geo, tile=(8, 4)), ref_idx)
        grad_out = torch.randn(ref.shape, device=device)
        for deterministic in (True, False):
            grad = P.max_pool2d_backward(grad_out, argmax, geo, deterministic, tile=(8, 8))
            assert_grad_matches(grad, x, config, grad_out, ref_idx)


def test_the_comparison_catches_an_unwritten_element(device):
    """Outputs are poisoned (conftest); a launch that skips its last program must fail the check."""
    x = torch.randn(2, 3, 8, 8, device=device)
    ref, _ = torch_pool(x, CONFIGS[0])
    geo = P.pool_geometry(x.shape, 2)
    out = runtime.empty(geo.output_shape, x.dtype)
    argmax = runtime.empty(geo.output_shape, geo.argmax_dtype)
    rows = 2 * 3 * 4
    runtime.launch(P.max_pool2d_forward_kernel, (rows // 4 - 1, 1),
                   (x, out, argmax, rows, 3, 8, 8, 4, 4, *x.stride(), *geo.kernel_args()),
                   {"UNROLL": 2, "PAIR_W": 2, "ALIGN": 1, "RELU_GATE": False, "BLOCK_R": 4, "BLOCK_W": 4})
    with pytest.raises(AssertionError, match="NaN"):
        assert_values_equal(out, ref)


# ----------------------------------------------------------------------------- the batch question


@triton.jit
def _channel_scale_kernel(x_ptr, scale_ptr, y_ptr, C, HW, total, BLOCK: tl.constexpr):
    """y[n, c, h, w] = x[n, c, h, w] * scale[c]; x, y contiguous [N, C, H, W], scale [C]."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    c = (offsets // HW) % C
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    s = tl.load(scale_ptr + c, mask=mask).to(tl.float32)
    tl.store(y_ptr + offsets, (x * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_scale_backward_kernel(g_ptr, x_ptr, scale_ptr, gx_ptr, gscale_ptr, N, C, HW,
                                   BLOCK: tl.constexpr):
    """One program per channel c: gx = g * scale[c]; gscale[c] = sum over n, h, w of g * x."""
    c = tl.program_id(0)
    s = tl.load(scale_ptr + c).to(tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    for n in range(N):
        for start in range(0, HW, BLOCK):
            hw = start + tl.arange(0, BLOCK)
            mask = hw < HW
            offsets = (n * C + c).to(tl.int64) * HW + hw
            g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            acc += g * x
            tl.store(gx_ptr + offsets, (g * s).to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gscale_ptr + c, tl.sum(acc, axis=0))


def channel_scale(x, scale):
    """A differentiable per-channel scale built from kernels, upstream of the pool."""
    xd, sd = x.data.contiguous(), scale.data
    n, c, h, w = xd.shape
    y = runtime.empty(xd.shape, xd.dtype)
    runtime.launch(_channel_scale_kernel, (triton.cdiv(xd.numel(), 4096),),
                   (xd, sd, y, c, h * w, xd.numel()), {"BLOCK": 4096})

    def backward(g):
        g = g.contiguous()
        gx = runtime.empty(xd.shape, xd.dtype)
        gscale = runtime.empty((c,), torch.float32)
        runtime.launch(_channel_scale_backward_kernel, (c,), (g, xd, sd, gx, gscale, n, c, h * w),
                       {"BLOCK": triton.next_power_of_2(h * w)})
        return gx, gscale

    return tn.tape.record("channel_scale", y, (x, scale), backward, saved=(xd,))


def test_batch_of_100_each_example_gradient_goes_to_its_own_winners(seed, device):
    n, c, h, w = 100, 2, 10, 10
    config = (3, 2, 1, 1, False)  # overlapping: a maximum can win several windows
    x = torch.randn(n, c, h, w, device=device)
    for i in range(n):  # example i's maximum sits at its own position (i // 10, i % 10)
        x[i, :, i // 10, i % 10] = 10.0 + torch.rand(c, device=device)
    xt = tn.Tensor(x, requires_grad=True)
    out, idx = F.max_pool2d(xt, *config, return_indices=True)
    grad_out = torch.randn(out.shape, device=device)
    out.backward(grad_out)
    grad = xt.grad
    assert_grad_matches(grad, x, config, grad_out, idx.data)
    for i in range(n):
        alone = tn.Tensor(x[i:i + 1].clone(), requires_grad=True)
        F.max_pool2d(alone, *config).backward(grad_out[i:i + 1])
        assert torch.equal(bits(alone.grad[0]), bits(grad[i])), f"example {i}"
        winners = torch.zeros(c, h * w, dtype=torch.bool, device=device)
        winners.scatter_(1, idx.data[i].reshape(c, -1), True)
        assert torch.equal(grad[i].reshape(c, -1) != 0, winners), f"example {i}: gradient off its winners"
        # the planted maximum wins every window that covers it and collects all their gradients
        covering = (idx.data[i] == (i // 10) * w + i % 10)
        assert covering.any(dim=(1, 2)).all()
        expected = (grad_out[i] * covering).double().sum(dim=(1, 2))
        assert torch.allclose(grad[i, :, i // 10, i % 10].double(), expected, rtol=1e-6, atol=1e-6)


def test_parameter_gradient_is_the_batch_mean_of_per_example_gradients(seed, device):
    n, c, h, w = 100, 3, 6, 6
    config = (2, 2, 0, 1, False)
    x = torch.randn(n, c, h, w, device=device)
    for i in range(n):
        x[i, :, (i // 6) % 6, i % 6] = 5.0 + torch.rand(c, device=device)
    scale = tn.Tensor(torch.rand(c, device=device) + 0.5, requires_grad=True)
    grad_out = torch.randn(n, c, h // 2, w // 2, device=device)

    # loss = mean over the batch of <grad_out[i], pool(scale * x[i])>
    pooled = F.max_pool2d(channel_scale(tn.Tensor(x), scale), *config)
    pooled.backward(grad_out / n)
    per_example = []
    for i in range(n):
        s_i = tn.Tensor(scale.data.clone(), requires_grad=True)
        F.max_pool2d(channel_scale(tn.Tensor(x[i:i + 1].clone()), s_i), *config).backward(grad_out[i:i + 1])
        per_example.append(s_i.grad.double())
    mean = torch.stack(per_example).mean(0)
    assert torch.allclose(scale.grad.double(), mean, rtol=1e-5, atol=1e-6)

    s_ref = scale.data.clone().requires_grad_(True)
    ref = torch.nn.functional.max_pool2d(x * s_ref[None, :, None, None], *config)
    (ref * grad_out).sum().div(n).backward()
    assert torch.allclose(scale.grad, s_ref.grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the tape


def test_tape_saves_only_the_compact_argmax(seed, device):
    x = tn.Tensor(torch.randn(8, 4, 16, 16, device=device), requires_grad=True)
    before = tn.tape.saved_bytes()
    out = F.max_pool2d(x, 2)
    saved = tn.tape.saved_bytes() - before
    assert saved == out.numel()  # one byte per output
    torch_index_bytes = out.numel() * 8
    assert saved * 8 == torch_index_bytes
    closure = out._node.backward_fn.__closure__
    tensors = [cell.cell_contents for cell in closure if isinstance(cell.cell_contents, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].dtype == torch.uint8  # not the input, not the output
    out.backward(torch.randn(out.shape, device=device))
    assert tn.tape.saved_bytes() == before

    # without a tensor that needs a gradient, nothing is kept at all
    argmax_refs = []
    with runtime.observing(lambda k, g, a, c, i, run: (argmax_refs.extend(
            weakref.ref(t) for t in a if isinstance(t, torch.Tensor) and t.dtype == torch.uint8), run())[1]):
        F.max_pool2d(torch.randn(2, 2, 4, 4, device=device), 2)
    gc.collect()  # the interpreter's frames can sit in a reference cycle for a moment
    assert argmax_refs and all(r() is None for r in argmax_refs)


def test_layer_matches_torch_module(seed, device):
    pool = layers.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    assert pool.parameters() == [] and pool.state_dict() == {}
    assert "kernel_size=3, stride=2" in repr(pool)
    ref_pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    x = torch.randn(5, 3, 11, 9, device=device)
    xt = tn.Tensor(x, requires_grad=True)
    out = pool(xt)
    assert_values_equal(out.data, ref_pool(x))
    grad_out = torch.randn(out.shape, device=device)
    out.backward(grad_out)
    _, ref_idx = torch_pool(x, (3, 2, 1, 1, True))
    assert_grad_matches(xt.grad, x, (3, 2, 1, 1, True), grad_out, ref_idx)
    seq = layers.Sequential(layers.MaxPool2d(2), layers.MaxPool2d(2, deterministic=False))
    assert_values_equal(seq(x).data, torch.nn.functional.max_pool2d(torch.nn.functional.max_pool2d(x, 2), 2))
    out, idx = layers.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(idx.data, torch_pool(x, (2, 2, 0, 1, False))[1])


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_the_documented_error(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    cases = [
        (TypeError, "input must be a tn.Tensor or torch.Tensor", ([1.0, 2.0], 2), {}),
        (TypeError, "input must have dtype", (torch.ones(2, 3, 8, 8, dtype=torch.int32, device=device), 2), {}),
        (TypeError, "input must have dtype", (x.double(), 2), {}),
        (ValueError, "input must be 3-D or 4-D", (x[0, 0], 2), {}),
        (ValueError, "input must be 3-D or 4-D", (x[None], 2), {}),
        (ValueError, "input must be on device", (torch.randn(2, 3, 8, 8, device="meta"), 2), {}),
        (ValueError, "non-zero channels, height and width", (torch.randn(2, 0, 8, 8, device=device), 2), {}),
        (ValueError, "non-zero channels, height and width", (torch.randn(2, 3, 0, 8, device=device), 2), {}),
        (ValueError, "kernel_size must be >= 1", (x, 0), {}),
        (ValueError, "stride must be >= 1", (x, 2, (1, 0)), {}),
        (ValueError, "padding must be >= 0", (x, 2, 2, -1), {}),
        (ValueError, "dilation must be >= 1", (x, 2, 2, 0, 0), {}),
        (ValueError, "padding must be at most half of kernel_size", (x, 3, 1, 2), {}),
        (ValueError, "padding must be at most half of kernel_size", (x, (4, 2), 1, (2, 2)), {}),
        (ValueError, "larger than the padded input", (x, 9), {}),
        (ValueError, "larger than the padded input", (x, 3, 1, 1, 5), {}),
        (ValueError, "hold only padding", (torch.randn(1, 1, 2, 2, device=device), 2, 1, 1, 3), {}),
        (TypeError, "kernel_size must be an int or a pair of ints", (x, 2.0), {}),
        (TypeError, "kernel_size must be an int or a pair of ints", (x, True), {}),
        (TypeError, "kernel_size must be an int or a pair of ints", (x, (2, 2, 2)), {}),
        (TypeError, "stride must be an int or a pair of ints", (x, 2, "2"), {}),
        (TypeError, "ceil_mode must be a bool", (x, 2), {"ceil_mode": 1}),
        (TypeError, "deterministic must be a bool", (x, 2), {"deterministic": "yes"}),
    ]
    for error, message, args, kwargs in cases:
        with pytest.raises(error, match=message):
            F.max_pool2d(*args, **kwargs)
        # torch rejects the same geometries (it does not reject the all-padding one: it returns
        # -inf with an out-of-range index there)
        if error is ValueError and "padding" in message and "only" not in message:
            with pytest.raises(RuntimeError):
                torch.nn.functional.max_pool2d(*args)
    for error, message, args in [(ValueError, "kernel_size must be >= 1", (0,)),
                                 (ValueError, "padding must be at most half", (2, 2, 2)),
                                 (TypeError, "dilation must be an int", (2, 2, 0, 1.5))]:
        with pytest.raises(error, match=message):
            layers.MaxPool2d(*args)

    out, argmax, geo = P.max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match="grad_output must have the pool's output shape"):
        P.max_pool2d_backward(torch.randn(2, 3, 4, 5, device=device), argmax, geo)
    with pytest.raises(TypeError, match="argmax must have dtype"):
        P.max_pool2d_backward(out, argmax.to(torch.int32), geo)
    with pytest.raises(TypeError, match="grad_output must have dtype"):
        P.max_pool2d_backward(out.to(torch.int32), argmax, geo)
    with pytest.raises(TypeError, match="geometry must be a PoolGeometry"):
        P.max_pool2d_indices(argmax, (2, 2))
    with pytest.raises(ValueError, match="argmax must be the contiguous"):
        P.max_pool2d_indices(argmax[:, :, :2], geo)


# ----------------------------------------------------------------------------- drawn geometries


@st.composite
def geometries(draw):
    def pair(lo, hi):
        a = draw(st.integers(lo, hi))
        return a if draw(st.booleans()) else (a, draw(st.integers(lo, hi)))

    kernel = pair(1, 4)
    kh, kw = _pairs(kernel)
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    return {
        "shape": (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 12)),
                  draw(st.integers(1, 12))),
        "config": (kernel, pair(1, 4), padding, pair(1, 3), draw(st.booleans())),
        "dtype": draw(st.sampled_from(DTYPES)),
        "chw": draw(st.booleans()),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=geometries())
def test_drawn_geometries_match_torch(seed, device, case):
    shape = case["shape"][1:] if case["chw"] else case["shape"]
    x = torch.randn(shape, device=device).to(case["dtype"])
    config = case["config"]
    try:
        ref, ref_idx = torch_pool(x, config)
    except RuntimeError:  # torch rejects it: so must we, with a ValueError
        with pytest.raises(ValueError):
            F.max_pool2d(x, *config)
        return
    try:
        geo = P.pool_geometry(x.shape, *config)
    except ValueError as exc:  # the one geometry we reject and torch does not
        assert "hold only padding" in str(exc)
        assume(False)
    assert geo.output_shape == tuple(ref.shape)
    xt = tn.Tensor(x, requires_grad=True)
    out, idx = F.max_pool2d(xt, *config, return_indices=True)
    assert_values_equal(out.data, ref)
    assert torch.equal(idx.data, ref_idx)
    grad_out = torch.randn(ref.shape, device=device).to(x.dtype)
    out.backward(grad_out)
    assert_grad_matches(xt.grad, x, config, grad_out, ref_idx)


# ----------------------------------------------------------------------------- GPU specialisations


def test_gpu_tile_specialisations_are_recorded_for_the_sm90_compile(device, monkeypatch):
    """The GPU picks other tiles than the interpreter; launch (without running) with the GPU's
    choices for the benchmark shapes so tests/test_zz_aot.py compiles those specialisations too."""
    monkeypatch.setattr(P, "_INTERPRETER_TILES", False)
    seen = []

    def dry(kernel, grid, args, constexprs, info, run):
        seen.append((kernel, dict(constexprs)))  # record only: conftest's recorder saw it first

    with runtime.observing(dry):
        for shape, k in (((2, 64, 32, 32), 2), ((2, 64, 32, 32), 3), ((2, 6, 28, 28), 2), ((2, 6, 28, 28), 3)):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(shape, device=device).to(dtype)
                out, argmax, geo = P.max_pool2d_forward(x, k, 2)
                P.max_pool2d_backward(out, argmax, geo)
                P.max_pool2d_backward(out, argmax, geo, deterministic=False)
                P.max_pool2d_indices(argmax, geo)
    assert sum(kern is P.max_pool2d_backward_tiled_kernel for kern, _ in seen) == 4  # the 2x2 cases
    forward = [c for kern, c in seen if kern is P.max_pool2d_forward_kernel]
    assert {(c["BLOCK_R"], c["BLOCK_W"], c["UNROLL"], c["PAIR_W"]) for c in forward} == {(64, 16, 2, 2),
                                                                                          (64, 16, 3, 3)}
    assert {c["ALIGN"] for c in forward} == {4, 8}  # 16 bytes of rows of 32 (and fp32 28) columns; bf16 28: 4
    tiled = [c for kern, c in seen if kern is P.max_pool2d_backward_tiled_kernel]
    assert {c["ALIGN"] for c in tiled} == {16, 2}  # OW = 16 (VGG), 14 (LeNet)
    assert {c["num_warps"] for c in forward if c["PAIR_W"] == 2} | {c["num_warps"] for c in tiled} == {16}
    gather = [c for kern, c in seen if kern is P.max_pool2d_backward_gather_kernel]
    assert {(c["CAND_H"], c["CAND_W"]) for c in gather} == {(2, 2)}  # the 3x3/s2 cases


def test_alignment_promised_to_the_compiler_holds(device, monkeypatch):
    """ALIGN is a promise the GPU compiler turns into vector loads: it must divide every stride and
    width it covers, whatever the layout (a wrong promise would be a misaligned access on the GPU)."""
    monkeypatch.setattr(P, "_INTERPRETER_TILES", False)
    base = torch.randn(2, 6, 28, 30, device=device)
    cases = {"contiguous 28": (base[..., :28].contiguous(), 4), "sliced columns": (base[..., 1:29], 2),
             "width 10": (torch.randn(2, 3, 10, 10, device=device), 2),
             "bf16 width 32": (torch.randn(2, 3, 32, 32, device=device).to(torch.bfloat16), 8),
             "channels last": (base.contiguous(memory_format=torch.channels_last), 1),
             "odd width": (torch.randn(1, 2, 9, 9, device=device), 1)}
    for name, (x, expected) in cases.items():
        geo = P.pool_geometry(x.shape, 2)
        align = P._alignment(x, geo, P._pair_runs(geo, P._unroll(geo)))
        assert align == expected, name
        assert all(v % align == 0 for v in (*x.stride()[:3], geo.w)), name
    for ow, expected in ((16, 16), (14, 2), (5, 1), (12, 4)):
        assert P._power_of_two_dividing(ow) == expected
    monkeypatch.setattr(P, "_INTERPRETER_TILES", True)  # the interpreter's specialisations stay few
    assert P._alignment(cases["contiguous 28"][0], P.pool_geometry((2, 6, 28, 28), 2), 2) == 1
