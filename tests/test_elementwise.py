"""Elementwise kernels, reductions and the Tensor arithmetic built on them, against torch."""
import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet.kernels import elementwise as E
from tritonnet.kernels import reduce as R

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_backward_match_torch_with_nan_and_zero(seed, device, dtype):
    x = torch.randn(1001, device=device).to(dtype)
    x[:4] = torch.tensor([0.0, -0.0, float("nan"), float("-inf")])
    y = E.relu(x)
    assert torch.equal(torch.isnan(y), torch.isnan(x))
    assert torch.equal(y.nan_to_num(), torch.relu(x).nan_to_num())
    g = torch.randn(1001, device=device).to(dtype)
    ref = x.clone().requires_grad_()
    torch.relu(ref).backward(g)
    assert torch.equal(E.relu_backward(g, y), ref.grad)  # NaN inputs pass the gradient, as torch


@pytest.mark.parametrize("dtype", DTYPES)
def test_axpby_and_scale_by_scalar(seed, device, dtype):
    a, b = torch.randn(3, 77, device=device).to(dtype), torch.randn(3, 77, device=device).to(dtype)
    expect = (2.5 * a.double() - 0.75 * b.double() + 1.25).to(dtype)
    torch.testing.assert_close(E.axpby(a, b, 2.5, -0.75, 1.25), expect, **TOL[dtype])
    torch.testing.assert_close(E.axpby(a, alpha=-3.0), (-3.0 * a.double()).to(dtype), **TOL[dtype])
    s = torch.randn((), device=device).to(dtype)
    torch.testing.assert_close(E.scale_by_scalar(a, s, 0.5), (a.double() * s.double() * 0.5).to(dtype), **TOL[dtype])
    filled = E.scale_by_scalar(None, s, 0.25, shape=(4, 5), dtype=dtype)
    assert filled.shape == (4, 5) and filled.dtype == dtype
    torch.testing.assert_close(filled, (s.double() * 0.25).to(dtype).expand(4, 5), **TOL[dtype])
    with pytest.raises(ValueError, match="must match in shape"):
        E.axpby(a, b[:, :5])
    with pytest.raises(ValueError, match="s must have exactly one element"):
        E.scale_by_scalar(a, a)
    rows = torch.randn(3, device=device).to(dtype)  # scale_rows: row r times rows[r]
    torch.testing.assert_close(E.scale_rows(a, rows), (a.double() * rows.double()[:, None]).to(dtype), **TOL[dtype])
    wide = torch.randn(2, 3, 700, device=device).to(dtype)  # rows of 2100 elements across blocks
    torch.testing.assert_close(E.scale_rows(wide, rows[:2]), (wide.double() * rows.double()[:2, None, None]).to(dtype),
                               **TOL[dtype])
    with pytest.raises(ValueError, match=r"s must have one element per row of a \(3\)"):
        E.scale_rows(a, rows[:2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_and_mean_match_torch_and_are_deterministic(seed, device, dtype):
    for n in (1, 999, 40000):  # 40000: several partial sums, then the final pass
        x = torch.randn(n, device=device).to(dtype)
        s, m = R.sum_all(x), R.mean_all(x.reshape(-1, 1) if n > 1 else x)
        assert s.shape == () and s.dtype == dtype
        ref = x.double().sum()
        torch.testing.assert_close(s.double(), ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * n ** 0.5)
        torch.testing.assert_close(m.double(), ref / n, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])
        assert torch.equal(R.sum_all(x), s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_sums_match_torch_and_are_deterministic(seed, device, dtype):
    """Sums over the rows of [P, C] (a channels-last conv's bias gradient): one part and several,
    odd column counts, a view into a larger buffer as ``out``; NaN propagates."""
    for rows, cols in ((1, 1), (7, 130), (700, 48)):  # 700 rows: two parts, then the final pass
        x = torch.randn(rows, cols, device=device).to(dtype)
        s = R.column_sums(x)
        assert s.shape == (cols,) and s.dtype == dtype
        ref = x.double().sum(0)
        torch.testing.assert_close(s.double(), ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * rows ** 0.5)
        assert torch.equal(R.column_sums(x), s)
    buffer = torch.full((60,), 7.0, device=device, dtype=dtype)
    x[3, 5] = float("nan")
    R.column_sums(x, out=buffer[12:])
    assert torch.equal(buffer[:12], torch.full((12,), 7.0, device=device, dtype=dtype)), "wrote outside out"
    assert torch.isnan(buffer[12 + 5]) and not torch.isnan(buffer[12:12 + 5]).any()
    with pytest.raises(ValueError, match="x must be contiguous"):
        R.column_sums(x.t())
    with pytest.raises(ValueError, match="out must be a contiguous tensor of shape"):
        R.column_sums(x, out=buffer[:10])


def test_gpu_sized_blocks(seed, device, monkeypatch):
    """GPU block sizes on small inputs: many programs, partial blocks, many partial sums."""
    monkeypatch.setattr(E, "BLOCK", 1024)
    monkeypatch.setattr(E, "OPTIONS", {})  # the GPU's launch options too: these specs are compiled for sm_90
    monkeypatch.setattr(R, "OPTIONS", {})
    monkeypatch.setattr(R, "BLOCK", 2048)
    monkeypatch.setattr(R, "MAX_PARTIALS", 512)
    x, y = torch.randn(3000, device=device), torch.randn(3000, device=device)
    assert torch.equal(E.relu(x), torch.relu(x))
    torch.testing.assert_close(E.axpby(x, y, 2.0, 3.0), 2 * x + 3 * y)
    torch.testing.assert_close(E.scale_rows(x.reshape(3, 1000), y[:3]), x.reshape(3, 1000) * y[:3, None])
    z = torch.randn(9000, device=device)
    torch.testing.assert_close(R.sum_all(z).double(), z.double().sum(), rtol=1e-6, atol=1e-4)
    monkeypatch.setattr(R, "COLUMN_TILE", (128, 64))
    monkeypatch.setattr(R, "COLUMN_OPTIONS", {"num_warps": 8, "num_stages": 3})
    cols = torch.randn(1000, 80, device=device)  # parts of 128 rows, a partial column tile
    torch.testing.assert_close(R.column_sums(cols).double(), cols.double().sum(0), rtol=1e-6, atol=1e-4)


def test_tensor_arithmetic_and_gradients_match_autograd(seed, device):
    x0, y0 = torch.randn(4, 6, device=device), torch.randn(4, 6, device=device)
    x, y = tn.Tensor(x0, requires_grad=True), tn.Tensor(y0, requires_grad=True)
    xr, yr = x0.clone().requires_grad_(), y0.clone().requires_grad_()

    def program(a, b):
        # x feeds several ops: its gradients must accumulate.
        c = (a * 2.0 - b + 1.5) * 0.5 + (-a) / 4 + 3 - b
        d = 2 * c.reshape(24).flatten() + 1.0
        return d.sum() - 0.5 * c.view(6, 4).mean() + (1 - a).mean()

    out, ref = program(x, y), program(xr, yr)
    assert isinstance(out, tn.Tensor) and out.shape == ()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    out.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.grad, yr.grad, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="second time"):
        out.backward()
    # A second, fresh graph accumulates into the existing .grad, as torch does.
    program(x, y).backward()
    torch.testing.assert_close(x.grad, 2 * xr.grad, rtol=1e-6, atol=1e-6)


def test_tensor_arithmetic_errors_and_relu_layer(seed, device):
    x = tn.Tensor(torch.randn(2, 3, device=device), requires_grad=True)
    with pytest.raises(TypeError):
        x * x  # only scalar products
    with pytest.raises(ValueError, match="must match in shape"):
        x + tn.Tensor(torch.randn(3, device=device))
    with pytest.raises(ValueError, match="one-element"):
        x.item()
    assert x.view(3, 2).shape == (3, 2) and x.reshape(-1).shape == (6,)
    with pytest.raises(RuntimeError, match="view"):
        tn.Tensor(torch.randn(3, 2, device=device).t()).view(6)  # torch's rule: no view of this layout
    with pytest.raises(ValueError, match="start_dim"):
        F.flatten(x, start_dim=3)
    from tritonnet import layers

    y = layers.ReLU()(x)
    y.backward(torch.ones(2, 3, device=device))
    assert torch.equal(x.grad, (x.data > 0).float())
    assert layers.Flatten()(tn.Tensor(torch.randn(2, 3, 4, device=device))).shape == (2, 12)
