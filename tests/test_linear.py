"""Linear: the fused matmul kernel forward and backward against torch, the layer, and GPU tiles."""
import math

import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import layers
from tritonnet.kernels import linear as K

from aot import compile_specs

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _reference(x, w, b, activation):
    """float64 torch autograd of the same layer; returns leaves and output."""
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    br = b.double().requires_grad_() if b is not None else None
    y = xr @ wr.t() + (br if br is not None else 0)
    if activation == "relu":
        y = torch.relu(y)
    return xr, wr, br, y


def _check(batch, fin, fout, dtype, activation, has_bias, device, blocks=None):
    scale = 1 / math.sqrt(fin)
    x = torch.randn(batch, fin, device=device).to(dtype)
    w = (torch.rand(fout, fin, device=device) * 2 - 1).mul(scale).to(dtype)
    b = torch.randn(fout, device=device).to(dtype) if has_bias else None
    xt, wt = tn.Tensor(x, requires_grad=True), tn.Tensor(w, requires_grad=True)
    bt = tn.Tensor(b, requires_grad=True) if has_bias else None
    if blocks is None:
        y = F.linear(xt, wt, bt, activation)
    else:  # the kernels directly, with forced tiles
        y = tn.Tensor(K.linear_forward(x, w, b, activation, blocks=blocks))
    xr, wr, br, yr = _reference(x, w, b, activation)
    g = torch.randn(batch, fout, device=device).to(dtype)
    yr.backward(g.double())
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == (batch, fout)
    torch.testing.assert_close(y.data.double(), yr.detach(), **tol)
    if activation == "relu":
        assert (y.data >= 0).all()
    if blocks is None:
        y.backward(g)
        gx, gw, gb = xt.grad, wt.grad, (bt.grad if has_bias else None)
    else:
        gx, gw, gb = K.linear_backward(g, x, w, y.data if activation == "relu" else None,
                                       need_bias=has_bias, blocks=blocks)
    # The gradient tolerance scales with the reduction length (fp16/bf16 round the output too).
    torch.testing.assert_close(gx.double(), xr.grad, **tol)
    torch.testing.assert_close(gw.double(), wr.grad, rtol=tol["rtol"], atol=tol["atol"] * max(1, batch / 10))
    if has_bias:
        torch.testing.assert_close(gb.double(), br.grad, rtol=tol["rtol"], atol=tol["atol"] * max(1, batch / 10))


def test_linear_forward_backward_matches_torch_fp32(seed, device):
    # Every flag combination of the kernel: bias and ReLU or not, gated and row-summed backward.
    for batch, fin, fout, activation, has_bias in [(1, 45, 23, "relu", True), (100, 67, 10, None, True),
                                                   (100, 400, 120, "relu", False), (3, 5, 1, None, False)]:
        _check(batch, fin, fout, torch.float32, activation, has_bias, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_forward_backward_matches_torch_half(seed, device, dtype):
    for batch, fin, fout in [(1, 45, 23), (100, 400, 120)]:
        _check(batch, fin, fout, dtype, "relu", True, device)


def test_tf32_backward_reads_k_major_copies(seed, device):
    """TF32 (Hopper's tensor cores read shared memory K-major only): a product that is not
    launch-bound gets its backward from the gated gradient and transposed copies, with the
    results of the gated, strided path of "highest" and of torch (float64)."""
    M, fin, fout = 96, 2048, 256  # 2*M*N*K above SMALL_FLOPS
    assert not K.is_small_product(M, fout, fin)
    x = torch.randn(M, fin, device=device)
    w = (torch.rand(fout, fin, device=device) * 2 - 1) / math.sqrt(fin)
    b = torch.randn(fout, device=device)
    g = torch.randn(M, fout, device=device)
    xr, wr, br, yr = _reference(x, w, b, "relu")
    yr.backward(g.double())
    results = {}
    for precision in ("highest", "high"):
        previous = tn.get_float32_matmul_precision()
        tn.set_float32_matmul_precision(precision)
        ops = []

        def record(kernel, grid, args, constexprs, info, run):
            ops.append(info.op)
            return run()

        try:
            y = K.linear_forward(x, w, b, "relu")
            with tn.runtime.observing(record):
                results[precision] = K.linear_backward(g, x, w, y, need_bias=True)
        finally:
            tn.set_float32_matmul_precision(previous)
        staged = ["relu_backward", "transpose", "linear", "transpose", "transpose", "linear"]
        assert ops == (staged if precision == "high" else ["linear", "linear"]), (precision, ops)
    # TF32 rounds the operands to 10-bit mantissas: within ~1e-3 of each tensor's scale (on a GPU;
    # the interpreter may not round at all)
    for ours, ieee, ref in zip(results["high"], results["highest"], (xr.grad, wr.grad, br.grad)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(ours.double(), ieee.double(), rtol=0, atol=2e-3 * scale)
        torch.testing.assert_close(ours.double(), ref, rtol=0, atol=2e-3 * scale)


def test_transposed_copies_any_strides(seed, device):
    """layout.transposed (the TF32 backward's K-major operands): a contiguous copy of t.T, bit for
    bit, from a contiguous matrix, a transposed view and a strided slice; poisoned output fully written."""
    from tritonnet.kernels import layout

    base = torch.randn(70, 90, device=device)
    for src in (base, base.t(), base[3:60:2, 5:80:3]):
        out = layout.transposed(src)
        assert out.is_contiguous() and out.shape == src.t().shape
        assert torch.equal(out, src.t())


def test_gpu_sized_tiles_on_tiny_shapes(seed, device):
    """GPU tile configurations (launched, so the suite's compile check builds them too): several
    programs per axis, partial tiles and several K steps exercise the mask and program-id logic."""
    _check(37, 150, 40, torch.float32, "relu", True, device, blocks=K.SMALL_CONFIGS[0])
    _check(70, 150, 90, torch.float32, "relu", True, device, blocks=K.SMALL_CONFIGS[1])
    _check(40, 70, 90, torch.float16, None, True, device, blocks=K.SMALL_CONFIGS[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_k_matches_torch_and_is_reproducible(seed, device, dtype):
    """The split-K path (a GPU takes it for long-K products with few output tiles; forced here):
    forward with bias and ReLU, and the gated input gradient, against float64 torch; every
    output element written; bitwise the same result when run again."""
    M, K_, N = 37, 300, 45  # K = 300: splits of 64 and 128 with a partial last split
    x = torch.randn(M, K_, device=device).to(dtype)
    w = (torch.randn(N, K_, device=device) / K_ ** 0.5).to(dtype)
    b = torch.randn(N, device=device).to(dtype)
    ref = torch.relu(x.double() @ w.double().t() + b.double())
    tol = TOL[dtype]
    for split_k, blocks in [(2, None), (3, K.SMALL_CONFIGS[0]), (5, None)]:
        out = torch.full((M, N), float("nan"), device=device, dtype=dtype)
        y = K.matmul(x, w.t(), bias=b, relu=True, out=out, split_k=split_k, blocks=blocks)
        assert y is out and not torch.isnan(y).any()
        torch.testing.assert_close(y.double(), ref, **tol)
        again = K.matmul(x, w.t(), bias=b, relu=True, split_k=split_k, blocks=blocks)
        assert torch.equal(again, y)
    # the input gradient's product, gated by the ReLU output, split as well
    g = torch.randn(M, N, device=device).to(dtype)
    gx = K.matmul(g, w, gate=y, split_k=2)
    torch.testing.assert_close(gx.double(), (g.double() * (y.double() > 0)) @ w.double(), **tol)


def test_split_k_count_depends_on_the_shape_only():
    sms = 132  # the H100's
    assert K.split_k_count(512, 256, 2048, sms) == 4  # the VGG's fc1 forward: 32 tiles of 64x64
    assert K.split_k_count(512, 2048, 256, sms) == 1  # its input gradient: 256 tiles
    assert K.split_k_count(256, 2048, 512, sms) == 1  # its weight gradient: 128 tiles, most SMs
    assert K.split_k_count(512, 512, 4096, sms) == 2
    assert K.split_k_count(64, 64, 300, sms) == 1  # too shallow to split into >= 256-deep parts
    assert K.split_k_count(64, 64, 100_000, sms) == 131  # 132, rounded to parts of whole 64-deep tiles
    for k in (511, 512, 2048, 3000, 100_000):
        splits, per = K._split_k(k, K.split_k_count(64, 64, k, sms))
        assert per % K.K_GRAIN == 0 and (splits - 1) * per < k <= splits * per


def test_split_k_bad_arguments(device):
    a, b = torch.randn(4, 8, device=device), torch.randn(8, 3, device=device)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="split_k"):
            K.matmul(a, b, split_k=bad)
    with pytest.raises(ValueError, match="rowsum"):
        K.matmul(a, b, rowsum=True, split_k=2)


def test_relu_gate_follows_torch_at_zero_and_only_needed_grads_computed(seed, device):
    # x = 0 rows give pre-activation == bias; bias 0 there makes the output exactly 0: no gradient.
    x = tn.Tensor(torch.zeros(4, 6, device=device))
    w = tn.Tensor(torch.randn(3, 6, device=device), requires_grad=True)
    b = tn.Tensor(torch.tensor([0.0, 1.0, -1.0], device=device), requires_grad=True)
    y = F.linear(x, w, b, activation="relu")
    y.backward(torch.ones(4, 3, device=device))
    assert torch.equal(b.grad, torch.tensor([0.0, 4.0, 0.0], device=device))
    assert torch.equal(w.grad, torch.zeros(3, 6, device=device))
    assert x.grad is None


def test_linear_accepts_extra_leading_dims_and_torch_constants(seed, device):
    x = torch.randn(2, 3, 7, device=device)
    w = tn.Tensor(torch.randn(4, 7, device=device), requires_grad=True)
    y = F.linear(x, w)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y.data, x @ w.data.t(), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(6, 4, device=device).t() @ x.reshape(6, 7), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fin,fout", [(0, 3), (5, 0)])
def test_linear_with_zero_features_matches_torch(seed, device, fin, fout):
    """in_features = 0: the output is the bias alone and the bias gradient still sums the rows
    (the weight-grad product has no columns, only row sums); out_features = 0: empty output, zero
    input gradient. Every output poisoned first."""
    x = torch.randn(4, fin, device=device)
    w, b = torch.randn(fout, fin, device=device), torch.randn(fout, device=device)
    g = torch.randn(4, fout, device=device)
    xt, wt, bt = (tn.Tensor(t.clone(), requires_grad=True) for t in (x, w, b))
    y = F.linear(xt, wt, bt, activation="relu")
    y.backward(g)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    yr = torch.relu(torch.nn.functional.linear(xr, wr, br))
    yr.backward(g)
    for ours, ref in ((y.data, yr), (xt.grad, xr.grad), (wt.grad, wr.grad), (bt.grad, br.grad)):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-6, atol=1e-6)
    # the row sums alone, into poisoned memory
    gate = torch.randn(6, 4, device=device)
    a = torch.randn(6, 4, device=device)
    out, rows = K.matmul(a, torch.empty(4, 0, device=device), gate=gate, rowsum=True)
    assert out.shape == (6, 0)
    torch.testing.assert_close(rows, torch.where(gate > 0, a, 0.0).sum(1), rtol=1e-6, atol=1e-6)


def test_linear_errors_name_the_argument(device):
    x, w = torch.randn(2, 3, device=device), torch.randn(4, 5, device=device)
    with pytest.raises(ValueError, match="in_features=5"):
        F.linear(x, w)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        F.linear(x, torch.randn(4, 3, device=device).half())
    with pytest.raises(ValueError, match="bias must be"):
        F.linear(x, torch.randn(4, 3, device=device), torch.randn(5, device=device))
    with pytest.raises(ValueError, match="activation"):
        F.linear(x, torch.randn(4, 3, device=device), activation="gelu")
    with pytest.raises(TypeError, match="x must have dtype"):
        F.linear(x.long(), torch.randn(4, 3, device=device))


def test_linear_layer_init_names_and_state_dict_match_torch(seed, device):
    torch.manual_seed(seed)
    ours = layers.Sequential(layers.Flatten(), layers.Linear(12, 7, activation="relu"), layers.Linear(7, 3, bias=False))
    torch.manual_seed(seed)
    theirs = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7), torch.nn.Linear(7, 3, bias=False))
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict()) == ["1.weight", "1.bias", "2.weight"]
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in theirs.modules()]
    assert [name for name, _ in ours.named_modules()] == [name for name, _ in theirs.named_modules()]
    for k, v in theirs.state_dict().items():
        assert torch.equal(sd[k].cpu(), v), k  # same generator draws in the same order
    x = torch.randn(5, 3, 4)
    expected = theirs[2](torch.relu(theirs[1](theirs[0](x))))
    torch.testing.assert_close(ours(x.to(device)).data.cpu(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert "in_features=12, out_features=7" in repr(ours)
    with pytest.raises(ValueError, match="activation"):
        layers.Linear(3, 2, activation="tanh")


def test_module_to_converts_parameters_and_gradients(seed, device):
    """Module.to / .bfloat16() / .float(), as torch's: parameters and gradients converted in place,
    the module returned; a device other than tritonnet's and a non-float dtype are errors."""
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 5 * 5, 6))
    ours = layers.from_torch(theirs)
    assert ours.to(torch.bfloat16) is ours
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 3, 7, 7).bfloat16()
    for p in theirs.parameters():  # the reference: the same bf16-rounded weights, in float64
        p.data = p.data.bfloat16().double()
    expected = theirs(x.double())
    y = ours(tn.Tensor(x.to(device)))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.data.double().cpu(), expected.detach(), rtol=2e-2, atol=2e-2)
    F.cross_entropy(y, torch.randint(0, 6, (2,), device=device)).backward()
    grads = [p.grad for p in ours.parameters()]
    assert all(g.dtype == torch.bfloat16 for g in grads)
    assert ours.float() is ours
    for p, g in zip(ours.parameters(), grads):
        assert p.dtype == p.grad.dtype == torch.float32 and torch.equal(p.grad, g.float())
    assert ours.to(device=device, dtype=torch.float16).to(torch.empty(0, device=device)) is ours
    with pytest.raises(ValueError, match="device must be tritonnet's device"):
        ours.to("meta")
    with pytest.raises(TypeError, match="dtype must be one of"):
        ours.to(torch.int64)
    with pytest.raises(TypeError, match="to\\(\\) takes a dtype, a device or a tensor"):
        ours.to(3)


def _gpu_specs():
    """Specialisations the GPU tuner may launch and the interpreter path never does: every tile
    configuration once, across the dtypes/precisions (bf16 tensor-core operands, TF32) and both
    the forward (bias + ReLU epilogue) and weight-grad (gate + row sum) flag sets."""
    forward = dict(HAS_BIAS=True, RELU=True, HAS_GATE=False, HAS_ROWSUM=False)
    weight_grad = dict(HAS_BIAS=False, RELU=False, HAS_GATE=True, HAS_ROWSUM=True)
    tuned = K.TUNE_CONFIGS
    # The small-product configurations are launched by the test above; these are the tuned ones.
    cases = [(tuned[4][1], "fp32", "tf32", weight_grad), (tuned[4][2], "fp32", "ieee", forward),
             (tuned[2][0], "bf16", "tf32", forward), (tuned[2][1], "bf16", "tf32", weight_grad),
             (tuned[2][2], "fp16", "tf32", forward)]
    assert {c[0] for c in cases} | set(K.SMALL_CONFIGS) == set(K.GPU_CONFIGS)
    specs = []
    for (bm, bn, bk, warps, stages), tt, precision, flags in cases:
        signature = {name: ("*" + tt if name.endswith("_ptr") else "i32") for name in K.matmul_kernel.arg_names}
        consts = dict(flags, PRECISION=precision, UPCAST=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        signature.update({name: "constexpr" for name in consts})
        specs.append({"module": K.__name__, "kernel": "matmul_kernel", "signature": signature,
                      "constexprs": consts, "options": {"num_warps": warps, "num_stages": stages}})
    for tt in ("fp32", "bf16"):  # the split-K sum's GPU tile (the interpreter launches a larger one)
        signature = {name: ("*" + ("fp32" if name == "ws_ptr" else tt) if name.endswith("_ptr") else "i32")
                     for name in K.split_k_sum_kernel.arg_names}
        consts = dict(HAS_BIAS=True, RELU=True, BLOCK_M=K.SUM_TILE_GPU[0], BLOCK_N=K.SUM_TILE_GPU[1])
        signature.update({name: "constexpr" for name in consts})
        specs.append({"module": K.__name__, "kernel": "split_k_sum_kernel", "signature": signature,
                      "constexprs": consts, "options": {"num_warps": 4}})
    return specs


def test_gpu_tile_configurations_compile_for_sm90():
    failures = compile_specs(_gpu_specs())
    assert not failures, "\n\n".join(failures)
