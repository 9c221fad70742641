"""Fused softmax cross-entropy against torch: reductions, label smoothing, dtypes, large logits, bad labels."""
import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet.kernels import loss as K

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-2, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}


def _compare(logits, target, reduction, smoothing, upstream=1.0, blocks=None):
    tol = TOL[logits.dtype]
    ref_in = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_in, target, reduction=reduction, label_smoothing=smoothing)
    (ref * upstream).backward()
    if blocks is None:
        z = tn.Tensor(logits, requires_grad=True)
        loss = F.cross_entropy(z, target, reduction=reduction, label_smoothing=smoothing)
        (loss * upstream if upstream != 1.0 else loss).backward()
        value, grad = loss.data, z.grad
    else:
        value, grad = K.cross_entropy(logits, target, reduction, smoothing, blocks=blocks)
    assert value.shape == () and value.dtype == logits.dtype
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(value.double(), ref.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10)
    # absolute error in units of the gradient's own scale (the upstream factor times a probability):
    # an fp32 softmax is a few ulps off, 1e-6 absolute at 2.5 (seen 1 draw in ~6 at atol 1e-6)
    scale = max(1.0, float(ref_in.grad.abs().max()))
    torch.testing.assert_close(grad.double(), ref_in.grad, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cross_entropy_matches_torch(seed, device, dtype):
    for batch, classes in [(1, 7), (100, 10)]:
        for reduction in ("mean", "sum"):
            for smoothing in (0.0, 0.1):
                logits = (torch.randn(batch, classes, device=device) * 3).to(dtype)
                target = torch.randint(0, classes, (batch,), device=device)
                _compare(logits, target, reduction, smoothing, upstream=1.0 if batch == 1 else 2.5)


def test_cross_entropy_many_classes_and_gpu_sized_blocks(seed, device):
    """Several row programs and a loop over class chunks (the online log-sum-exp across chunks)."""
    logits = torch.randn(37, 70, device=device) * 4
    target = torch.randint(0, 70, (37,), device=device, dtype=torch.int32)
    _compare(logits, target.long(), "mean", 0.2, blocks=(16, 16))  # several programs, then the reduction
    _compare(logits, target.long(), "sum", 0.0, blocks=(16, 16))
    _compare(logits, target.long(), "mean", 0.1, blocks=(16, 16, True))  # one program looping over row blocks
    _compare(logits, target.long(), "sum", 0.0, blocks=K._blocks(37, 70)[:2] + (False,))
    logits = torch.randn(5, 1000, device=device)
    _compare(logits, torch.randint(0, 1000, (5,), device=device), "mean", 0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy_is_stable_for_large_logits(seed, device, dtype):
    logits = (torch.randn(20, 10, device=device) * 1e4).to(dtype)
    logits[0] = 1e4  # ties at the maximum
    target = torch.randint(0, 10, (20,), device=device)
    _compare(logits, target, "mean", 0.1)
    z = tn.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(z, target)
    loss.backward()
    assert torch.isfinite(loss.data) and torch.isfinite(z.grad).all()


def test_bad_labels_are_a_value_error(device):
    logits = torch.randn(6, 10, device=device)
    for bad in (10, -1, 1 << 40):
        target = torch.tensor([0, 1, 2, bad, 4, 5], device=device)
        with pytest.raises(ValueError, match=r"target has 1 label\(s\) outside \[0, 10\)"):
            F.cross_entropy(tn.Tensor(logits, requires_grad=True), target)
    target = torch.randint(0, 10, (40,), device=device)
    target[33] = 10
    for blocks in ((16, 16), (16, 16, True)):  # several programs + reduction; one looping program
        with pytest.raises(ValueError, match=r"target has 1 label\(s\)"):
            K.cross_entropy(torch.randn(40, 10, device=device), target, blocks=blocks)
    with pytest.raises(TypeError, match="target must have dtype"):
        F.cross_entropy(logits, torch.zeros(6, device=device))
    with pytest.raises(ValueError, match="one label per row"):
        F.cross_entropy(logits, torch.zeros(5, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(logits, torch.zeros(6, dtype=torch.long, device=device), reduction="max")
    with pytest.raises(ValueError, match="logits must be 2-D"):
        F.cross_entropy(logits[0], torch.zeros(6, dtype=torch.long, device=device))


def test_no_grad_records_nothing_and_results_are_reproducible(seed, device):
    logits = torch.randn(100, 10, device=device)
    target = torch.randint(0, 10, (100,), device=device)
    z = tn.Tensor(logits, requires_grad=True)
    with tn.no_grad():
        loss = F.cross_entropy(z, target)
    assert loss._node is None and not loss.requires_grad
    again = F.cross_entropy(z, target)
    assert torch.equal(again.data, loss.data)  # fixed summation order: bitwise equal
    torch.testing.assert_close(loss.data, torch.nn.functional.cross_entropy(logits, target), rtol=1e-6, atol=1e-6)
