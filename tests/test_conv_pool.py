"""conv2d with its 2x2 max pool fused into the epilogue (F.conv2d_max_pool2d, Sequential's fusion).

Inputs are drawn on a binary grid (multiples of 1/8 and 1/16): every convolution output is then
exact in float32 whatever the summation order, so the fused kernel, the two unfused kernels and
torch's float64 must agree bit for bit, winners and ties included (the grid makes ties common).
With inputs off the grid only the rounding of the sums may differ (the interpreter's dot rounds a
row by its position in the tile; on a GPU each output's order is fixed): tolerances there.
Outputs are poisoned (conftest): equality also proves every pooled value and argmax was written.
"""
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import layers, runtime
from tritonnet.layers.convert import build, build_torch, numbered
from tritonnet.kernels import conv as conv_kernels
from tritonnet.kernels import pool as pool_kernels

from launches import launched
from strategies import conv_options, int_or_pair, pairs_of


@pytest.fixture(autouse=True)
def fixed_tiles():
    previous = conv_kernels.set_autotune(False)
    yield
    conv_kernels.set_autotune(previous)


def _grid(shape, device, scale=8):
    return (torch.randint(-scale, scale + 1, shape) / scale).to(device)


def _same(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


# (N, C_in, C_out, H, W, kernel, conv options, channels-last input): the packed kernel (C_in < 16),
# the channels-last one (C_in >= 16), odd conv outputs (their last row/column is in no window),
# stride 2, dilation, groups and depthwise, batch 1
CASES = [
    (2, 3, 8, 9, 11, 3, dict(padding=1), False),
    (1, 1, 6, 12, 12, 5, dict(padding=2), False),
    (2, 3, 16, 10, 8, 3, dict(padding=1), True),
    (2, 16, 24, 8, 7, 3, dict(padding=1), True),
    (2, 16, 20, 9, 9, 3, dict(stride=2, padding=1, dilation=2), True),
    (1, 32, 32, 6, 6, 3, dict(padding="same", groups=2), True),
    (2, 4, 4, 8, 8, 3, dict(padding=1, groups=4), False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_fused_forward_is_conv_then_pool(seed, device, case):
    """Values and argmax of the fused kernel are those of conv2d_forward then max_pool2d_forward
    (with the ReLU's gate when fused), bitwise, NaN included; torch's pooled values and indices
    (float64) agree exactly; the layout follows x's."""
    n, c_in, c_out, h, w, k, opts, channels_last = case
    x = _grid((n, c_in, h, w), device)
    x[0, 0, h // 2, w // 3] = float("nan")  # a NaN spreads over every output whose window reads it
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = _grid((c_out, c_in // opts.get("groups", 1), k, k), device)
    b = _grid((c_out,), device)
    for activation in (None, "relu"):
        relu = activation == "relu"
        for bias in (b, None):
            out, argmax, geo = conv_kernels.conv2d_max_pool2d_forward(x, wt, bias, activation=activation, **opts)
            y = conv_kernels.conv2d_forward(x, wt, bias, activation=activation, **opts)
            ref_out, ref_argmax, ref_geo = pool_kernels.max_pool2d_forward(y, 2, relu_gate=relu)
            what = f"{activation} bias={bias is not None}"
            assert geo == ref_geo and out.stride() == ref_out.stride() and argmax.stride() == ref_argmax.stride()
            _same(out, ref_out, what)
            _same(argmax, ref_argmax, what + " argmax")
            yd = torch.nn.functional.conv2d(x.double().cpu(), wt.double().cpu(),
                                            None if bias is None else bias.double().cpu(), **opts)
            yd = torch.relu(yd) if relu else yd
            torch_out, torch_idx = torch.nn.functional.max_pool2d(yd, 2, return_indices=True)
            _same(out.double().cpu(), torch_out, what + " vs torch")
            if not relu:  # a relu_gate argmax has no torch indices (test_conv.py)
                _same(pool_kernels.max_pool2d_indices(argmax, geo).cpu(), torch_idx, what + " indices")


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=["packed", "channels-last"])
def test_fused_forward_on_small_tiles(seed, device, case):
    """GPU-sized tiles (several programs in rows and channels, partial last tiles): the fused
    epilogue splits each tile into whole windows wherever it starts, bitwise as the default tiles
    (one program in rows under the interpreter) and the unfused pair on the same tiles."""
    n, c_in, c_out, h, w, k, opts, channels_last = case
    x = _grid((n, c_in, h, w), device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt, b = _grid((c_out, c_in, k, k), device), _grid((c_out,), device)
    tiles = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    out, argmax, _ = conv_kernels.conv2d_max_pool2d_forward(x, wt, b, activation="relu", config=tiles, **opts)
    default_out, default_argmax, _ = conv_kernels.conv2d_max_pool2d_forward(x, wt, b, activation="relu", **opts)
    y = conv_kernels.conv2d_forward(x, wt, b, activation="relu", config=tiles, **opts)
    ref_out, ref_argmax, _ = pool_kernels.max_pool2d_forward(y, 2, relu_gate=True)
    _same(out, default_out, "small tiles vs default")
    _same(argmax, default_argmax, "small tiles vs default argmax")
    _same(out, ref_out, "small tiles vs unfused")
    _same(argmax, ref_argmax, "small tiles vs unfused argmax")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_forward_half_precision(seed, device, dtype):
    """bf16/fp16: the pool compares the values the unfused conv stores (rounded), so the same
    winners as the unfused pair, bitwise."""
    for c_in, channels_last in ((3, False), (16, True)):
        x = _grid((2, c_in, 8, 10), device, scale=16).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        wt, b = _grid((24, c_in, 3, 3), device).to(dtype), _grid((24,), device).to(dtype)
        out, argmax, _ = conv_kernels.conv2d_max_pool2d_forward(x, wt, b, padding=1, activation="relu")
        ref_out, ref_argmax, _ = pool_kernels.max_pool2d_forward(
            conv_kernels.conv2d_forward(x, wt, b, padding=1, activation="relu"), 2, relu_gate=True)
        assert out.dtype == dtype
        _same(out, ref_out, f"{dtype} C_in={c_in}")
        _same(argmax, ref_argmax, f"{dtype} C_in={c_in} argmax")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_gradients_match_torch(seed, device, layout):
    """F.conv2d_max_pool2d's input, weight and bias gradients are torch's (float64) for
    max_pool2d(act(conv2d)): windows with ties, windows the ReLU zeroes (bias pushed negative in
    some channels), a dropped odd row, and off-grid inputs within float32's tolerance."""
    c_in = 3 if layout == "contiguous" else 16
    for on_grid in (True, False):
        x = _grid((2, c_in, 9, 8), device) if on_grid else torch.randn(2, c_in, 9, 8, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        wt = _grid((12, c_in, 3, 3), device)
        b = _grid((12,), device)
        b[::3] = -4.0  # every third channel: most windows dead after the ReLU
        for activation in ("relu", None):
            xt, wp, bp = (tn.Tensor(t, requires_grad=True) for t in (x, wt, b))
            out = F.conv2d_max_pool2d(xt, wp, bp, padding=1, activation=activation)
            g = _grid(tuple(out.shape), device)
            out.backward(g)
            xd, wd, bd = (t.detach().double().cpu().requires_grad_() for t in (x, wt, b))
            yd = torch.nn.functional.conv2d(xd, wd, bd, padding=1)
            yd = torch.relu(yd) if activation else yd
            ref = torch.nn.functional.max_pool2d(yd, 2)
            ref.backward(g.double().cpu())
            tol = 0 if on_grid else 1e-5
            what = f"{layout} {activation} grid={on_grid}"
            torch.testing.assert_close(out.data.double().cpu(), ref.detach(), rtol=tol, atol=tol, msg=what)
            if on_grid:
                for name, ours, theirs in (("dx", xt.grad, xd.grad), ("dw", wp.grad, wd.grad),
                                           ("db", bp.grad, bd.grad)):
                    _same(ours.double().cpu(), theirs, f"{what} {name}")
            else:
                # off the grid a near-tie (values apart by less than float32's rounding) may have
                # another winner than float64's, which moves dx and dw but not db: a window's
                # gradient reaches the bias wherever it wins (and, with the ReLU, whether it does)
                torch.testing.assert_close(bp.grad.double().cpu(), bd.grad, rtol=1e-5, atol=1e-5, msg=what)
            assert xt.grad.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_sequential_fuses_conv_and_pool(seed, device):
    """A Sequential runs Conv2d + 2x2 MaxPool2d as one kernel: no pool forward launched, no
    full-size activation kept, the same loss and gradients as with fuse_conv_pool=False (bitwise,
    on grid weights and data); children and state_dict keys unchanged; pools that cannot fuse
    (3x3, ceil_mode, torch's indices) run on their own."""
    spec = [("Conv2d", dict(in_channels=3, out_channels=16, kernel_size=3, padding=1)), ("ReLU",),
            ("MaxPool2d", dict(kernel_size=2)),
            ("Conv2d", dict(in_channels=16, out_channels=16, kernel_size=3, padding=1)), ("ReLU",),
            ("MaxPool2d", dict(kernel_size=2, stride=2)),
            ("Conv2d", dict(in_channels=16, out_channels=16, kernel_size=1)),
            ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1)),
            ("Flatten",), ("Linear", dict(in_features=16 * 2 * 2, out_features=10))]
    model = build(numbered(*spec))
    torch_keys = list(build_torch(numbered(*spec)).state_dict())
    assert list(model.state_dict()) == torch_keys
    model.load_state_dict({k: _grid(tuple(v.shape), device, 16) for k, v in model.state_dict().items()})
    x = _grid((2, 3, 16, 16), device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (2,), device=device)
    results = {}
    for fuse in (True, False):
        model.fuse_conv_pool = fuse
        model.zero_grad()

        def step():
            loss = F.cross_entropy(model(tn.Tensor(x)), target)
            loss.backward()
            results[fuse] = (loss.data, [p.grad for p in model.parameters()])

        _, ops = launched(step)
        pools = [op for op in ops if op == "max_pool2d_forward"]
        assert len(pools) == (1 if fuse else 3), ops
        assert ops.count("conv2d_fwd_relu_maxpool") == (2 if fuse else 0), ops
    _same(results[True][0], results[False][0], "loss")
    for (name, _), a, b in zip(model.named_parameters(), results[True][1], results[False][1]):
        _same(a, b, name)
    for pool in (layers.MaxPool2d(2, ceil_mode=True), layers.MaxPool2d(2, return_indices=True),
                 layers.MaxPool2d(2, stride=1), layers.MaxPool2d((2, 1))):
        assert not pool.fuses_into_conv
    assert layers.MaxPool2d(2).fuses_into_conv and layers.MaxPool2d((2, 2), stride=(2, 2)).fuses_into_conv


def test_unbatched_input(seed, device):
    """A (C, H, W) input, as torch takes one: the fused op and its layer give torch's values and
    the unfused pair's gradients (bitwise, on grid data), without a batch dimension."""
    x, wt, b = _grid((3, 10, 10), device), _grid((4, 3, 3, 3), device, 16), _grid((4,), device)
    expected = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(x, wt, b, padding=1)), 2)
    upstream = _grid((4, 5, 5), device)
    results = {}
    for fused in (True, False):
        xt, wtt, bt = (tn.Tensor(t, requires_grad=True) for t in (x, wt, b))
        if fused:
            y = F.conv2d_max_pool2d(xt, wtt, bt, padding=1, activation="relu")
        else:
            y = F.max_pool2d(F.conv2d(xt, wtt, bt, padding=1, activation="relu"), 2)
        _same(y.data, expected, "output")
        y.backward(upstream)
        results[fused] = (xt.grad, wtt.grad, bt.grad)
    for name, a, e in zip(("dx", "dw", "db"), results[True], results[False]):
        _same(a, e, name)
    assert results[True][0].shape == x.shape
    model = build(numbered(("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)), ("ReLU",),
                           ("MaxPool2d", dict(kernel_size=2))))
    model.load_state_dict({"0.weight": wt, "0.bias": b})
    _, ops = launched(lambda: _same(model(tn.Tensor(x)).data, expected, "Sequential's output"))
    assert ops.count("conv2d_fwd_relu_maxpool") == 1, ops


def test_fused_errors(device):
    """Bad arguments are the convolution's errors, and a convolution output too small for one 2x2
    window is the pool's."""
    x = torch.randn(1, 3, 5, 5, device=device)
    with pytest.raises(ValueError, match="channel mismatch"):
        conv_kernels.conv2d_max_pool2d_forward(x, torch.randn(4, 2, 3, 3, device=device))
    with pytest.raises(ValueError, match="activation"):
        conv_kernels.conv2d_max_pool2d_forward(x, torch.randn(4, 3, 3, 3, device=device), activation="tanh")
    with pytest.raises(ValueError, match="kernel_size|output|small"):
        conv_kernels.conv2d_max_pool2d_forward(x, torch.randn(4, 3, 5, 5, device=device))  # 1x1 output


@st.composite
def fused_cases(draw):
    opts = draw(conv_options(max_stride=2))
    groups = opts["groups"]
    cg_in = draw(st.sampled_from([1, 3, 16]))  # packed, and channels-last from 16
    return {"x": (draw(st.integers(1, 3)), cg_in * groups, draw(st.integers(2, 11)), draw(st.integers(2, 11))),
            "w": (draw(st.sampled_from([1, 6, 16])) * groups, cg_in) + pairs_of(draw(int_or_pair(1, 3))),
            "opts": opts, "relu": draw(st.booleans()), "bias": draw(st.booleans()),
            "channels_last": draw(st.booleans()), "sliced": draw(st.booleans())}


# On a GPU each drawn window size and layout is a compile (seconds, in one test worker): fewer there
@settings(max_examples=20 if runtime.INTERPRETED else 8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=fused_cases())
def test_drawn_geometries_fused_equal_unfused(seed, device, case):
    """Random geometries, layouts and sliced inputs: F.conv2d_max_pool2d equals F.conv2d then
    F.max_pool2d(2) bit for bit (grid data), output, layout and all three gradients; where torch
    rejects the convolution or its output has no 2x2 window, a ValueError."""
    n, c, h, w = case["x"]
    x = _grid((n, c, h, w + 3 * case["sliced"]), device)[..., :w]  # a slice: strides that are not x's shape's
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = _grid(case["w"], device)
    b = _grid((case["w"][0],), device) if case["bias"] else None
    act = "relu" if case["relu"] else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out_shape = torch.nn.functional.conv2d(x, wt, b, **case["opts"]).shape
        assume(min(out_shape) > 0)
        torch.nn.functional.max_pool2d(torch.zeros(out_shape), 2)
    except RuntimeError:
        with pytest.raises(ValueError):
            F.conv2d_max_pool2d(tn.Tensor(x), tn.Tensor(wt), None if b is None else tn.Tensor(b), activation=act,
                                **case["opts"])
        return
    results = []
    for fused in (True, False):
        xt, wp = tn.Tensor(x, requires_grad=True), tn.Tensor(wt, requires_grad=True)
        bp = tn.Tensor(b, requires_grad=True) if b is not None else None
        if fused:
            out = F.conv2d_max_pool2d(xt, wp, bp, activation=act, **case["opts"])
        else:
            out = F.max_pool2d(F.conv2d(xt, wp, bp, activation=act, **case["opts"]), 2)
        if not results:
            g = _grid(tuple(out.shape), device)
        out.backward(g)
        results.append((out.data, xt.grad, wp.grad, None if bp is None else bp.grad))
    for name, a, e in zip(("out", "dx", "dw", "db"), *results):
        if e is None:
            assert a is None
            continue
        for layout in (torch.contiguous_format, torch.channels_last):  # (a size-1 dimension's stride is free)
            assert a.is_contiguous(memory_format=layout) == e.is_contiguous(memory_format=layout), (name, layout)
        _same(a, e, name)
