"""Fused softmax cross-entropy against torch: reductions, label smoothing, dtypes, large logits, bad labels."""
import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import runtime
from tritonnet.kernels import loss as K

from launches import launched

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduction_none_gives_each_rows_loss_and_gradient(seed, device, dtype):
    """reduction="none": the (B,) losses in logits' dtype, and backward scales each row's gradient
    by its own upstream value (one row per example, as a per-example loss needs)."""
    tol = TOL[dtype]
    for batch, classes, smoothing in [(1, 7, 0.0), (100, 10, 0.1), (37, 70, 0.2)]:
        logits = (torch.randn(batch, classes, device=device) * 3).to(dtype)
        target = torch.randint(0, classes, (batch,), device=device)
        upstream = torch.randn(batch, device=device).to(dtype)
        ref_in = logits.double().requires_grad_()
        ref = torch.nn.functional.cross_entropy(ref_in, target, reduction="none", label_smoothing=smoothing)
        ref.backward(upstream.double())
        z = tn.Tensor(logits, requires_grad=True)
        loss = F.cross_entropy(z, target, reduction="none", label_smoothing=smoothing)
        assert loss.shape == (batch,) and loss.dtype == dtype
        loss.backward(upstream)
        assert z.grad.shape == logits.shape and z.grad.dtype == dtype
        torch.testing.assert_close(loss.data.double(), ref.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10)
        scale = max(1.0, float(ref_in.grad.abs().max()))
        torch.testing.assert_close(z.grad.double(), ref_in.grad, rtol=tol["rtol"], atol=tol["atol"] * scale)
    # several row programs (per-row results, then the launch that counts bad labels)
    logits = torch.randn(37, 70, device=device).to(dtype)
    target = torch.randint(0, 70, (37,), device=device)
    rows, grad = K.cross_entropy(logits, target, "none", 0.1, blocks=(16, 16))
    ref_in = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_in, target, reduction="none", label_smoothing=0.1)
    ref.sum().backward()
    torch.testing.assert_close(rows.double(), ref.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10)
    torch.testing.assert_close(grad.double(), ref_in.grad, rtol=tol["rtol"], atol=tol["atol"])


# the batch of one whose only row is ignored: 1 / 0 rows and 0 * inf, as torch's NaN mean
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_ignore_index_rows_add_nothing_and_leave_the_mean(seed, device):
    """torch's ignore_index (default -100): such rows have loss and gradient 0 and the mean
    divides by the rows that remain (NaN loss and zero gradients when none does, as torch); each
    kernel path counts them: one program, several programs with gradients, the reduction alone."""
    def reference(logits, target, reduction, smoothing, ignore_index):
        ref_in = logits.double().requires_grad_()
        ref = torch.nn.functional.cross_entropy(ref_in, target, reduction=reduction, label_smoothing=smoothing,
                                                ignore_index=ignore_index)
        ref.sum().backward()
        return ref.detach(), ref_in.grad

    for batch, classes, ignore_index in [(100, 10, -100), (37, 70, 3), (1, 7, -100)]:
        logits = torch.randn(batch, classes, device=device) * 3
        target = torch.randint(0, classes, (batch,), device=device)
        target[torch.rand(batch, device=device) < 0.3] = ignore_index
        target[0] = ignore_index  # at least one; batch 1: every row
        for reduction in ("mean", "sum", "none"):
            for smoothing in (0.0, 0.1):
                expected, expected_grad = reference(logits, target, reduction, smoothing, ignore_index)
                z = tn.Tensor(logits, requires_grad=True)
                loss = F.cross_entropy(z, target, reduction=reduction, label_smoothing=smoothing,
                                       ignore_index=ignore_index)
                F.sum_all(loss).backward() if reduction == "none" else loss.backward()
                torch.testing.assert_close(loss.data.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)
                torch.testing.assert_close(z.grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
        for blocks in ((16, 16), (16, 16, True)):
            value, grad = K.cross_entropy(logits, target, "mean", 0.1, blocks=blocks, ignore_index=ignore_index)
            expected, expected_grad = reference(logits, target, "mean", 0.1, ignore_index)
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)
            torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
            value, _ = K.cross_entropy(logits, target, "mean", 0.1, need_grad=False, blocks=blocks,
                                       ignore_index=ignore_index)
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    # an ignore_index no int32 label can hold ignores nothing (and is no reason to call a label bad)
    logits, target = torch.randn(20, 5, device=device), torch.randint(0, 5, (20,), device=device, dtype=torch.int32)
    plain, _ = K.cross_entropy(logits, target, blocks=(16, 16))
    assert torch.equal(K.cross_entropy(logits, target, blocks=(16, 16), ignore_index=2**40 + 3)[0], plain)
    with pytest.raises(ValueError, match="ignore_index is for class-index targets"):
        F.cross_entropy(logits, torch.rand(20, 5, device=device), ignore_index=0)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.cross_entropy(logits, target, ignore_index=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_weights_match_torch(seed, device, dtype):
    """weight= (C,): each class's terms weighted as torch's, with label smoothing, ignored rows
    and probabilities; the mean over labels divides by the kept labels' weights, over
    probabilities by the batch. Every kernel path: one program, several, the reduction alone."""
    tol = TOL[dtype]
    for batch, classes, blocks in [(100, 10, None), (37, 70, (16, 16)), (37, 70, (16, 16, True))]:
        logits = (torch.randn(batch, classes, device=device) * 3).to(dtype)
        weight = (torch.rand(classes, device=device) * 2 + 0.1).to(dtype)
        labels = torch.randint(0, classes, (batch,), device=device)
        labels[::5] = -100
        probabilities = torch.softmax(torch.randn(batch, classes, device=device), dim=1)
        for target in (labels, probabilities):
            for reduction in ("mean", "sum", "none"):
                for smoothing in (0.0, 0.2):
                    ref_in = logits.double().requires_grad_()
                    ref = torch.nn.functional.cross_entropy(ref_in, target if target is labels else target.double(),
                                                            weight=weight.double(), reduction=reduction,
                                                            label_smoothing=smoothing)
                    ref.sum().backward()
                    if blocks is None:
                        z = tn.Tensor(logits, requires_grad=True)
                        loss = F.cross_entropy(z, target, reduction=reduction, label_smoothing=smoothing,
                                               weight=tn.Tensor(weight))
                        F.sum_all(loss).backward() if reduction == "none" else loss.backward()
                        value, grad = loss.data, z.grad
                    else:
                        value, grad = K.cross_entropy(logits, target, reduction, smoothing, blocks=blocks,
                                                      weight=weight)
                    what = f"{batch}x{classes} {blocks} {'labels' if target is labels else 'probabilities'} " \
                           f"{reduction} {smoothing}"
                    torch.testing.assert_close(value.double(), ref.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10,
                                               msg=what)
                    scale = max(1.0, float(ref_in.grad.abs().max()))
                    torch.testing.assert_close(grad.double(), ref_in.grad, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                               msg=what)
        if blocks is not None:  # the mean's loss from the reduction alone
            value, _ = K.cross_entropy(logits, labels, "mean", 0.2, need_grad=False, blocks=blocks[:2], weight=weight)
            ref = torch.nn.functional.cross_entropy(logits.double(), labels, weight=weight.double(), label_smoothing=0.2)
            torch.testing.assert_close(value.double(), ref, rtol=tol["rtol"], atol=tol["atol"] * 10)
    with pytest.raises(ValueError, match=r"weight must have one value per class \(10\)"):
        F.cross_entropy(torch.randn(4, 10, device=device), torch.zeros(4, dtype=torch.long, device=device),
                        weight=torch.ones(9, device=device))
    with pytest.raises(TypeError, match="weight must have dtype"):
        F.cross_entropy(torch.randn(4, 10, device=device), torch.zeros(4, dtype=torch.long, device=device),
                        weight=torch.ones(10, dtype=torch.long, device=device))


def _compare_probabilities(logits, target, reduction, smoothing, blocks=None, tol=None):
    """Loss and gradient for class-probability targets against torch's float64, with a random
    upstream gradient (one per row for "none")."""
    tol = tol or TOL[logits.dtype]
    ref_in = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_in, target.double(), reduction=reduction, label_smoothing=smoothing)
    upstream = torch.rand(ref.shape, device=logits.device) + 0.5
    if blocks is None:
        z = tn.Tensor(logits, requires_grad=True)
        loss = F.cross_entropy(z, target, reduction=reduction, label_smoothing=smoothing)
        loss.backward(upstream.to(logits.dtype))
        value, grad = loss.data, z.grad
        ref.backward(upstream.to(logits.dtype).double())
    else:  # the kernel alone: its gradient is for an upstream gradient of 1
        value, grad = K.cross_entropy(logits, target, reduction, smoothing, blocks=blocks)
        ref.backward(torch.ones_like(ref))
    assert value.shape == ref.shape and value.dtype == grad.dtype == logits.dtype
    torch.testing.assert_close(value.double(), ref.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10)
    scale = max(1.0, float(ref_in.grad.abs().max()))
    torch.testing.assert_close(grad.double(), ref_in.grad, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_class_probability_targets_match_torch(seed, device, dtype):
    """Targets of class probabilities (torch's soft labels): normalised or not (the loss weighs
    lse by the row's total), every reduction, label smoothing, batch 1 and 100."""
    for batch, classes in [(1, 7), (100, 10)]:
        for reduction in ("mean", "sum", "none"):
            for smoothing in (0.0, 0.15):
                logits = (torch.randn(batch, classes, device=device) * 3).to(dtype)
                target = torch.softmax(torch.randn(batch, classes, device=device) * 2, dim=1)
                if smoothing:  # unnormalised, in another float dtype than the logits'
                    target = (torch.rand(batch, classes, device=device) * 0.5).to(torch.float16)
                _compare_probabilities(logits, target, reduction, smoothing)


def test_class_probabilities_across_class_chunks_and_row_programs(seed, device):
    """Several class chunks: each chunk's distances from the row maximum are rebased as the
    maximum moves (the largest logits placed in the last chunk); large logits stay exact; a
    non-contiguous target."""
    logits = torch.randn(37, 70, device=device) * 4 + torch.linspace(0, 30, 70, device=device)
    target = torch.rand(70, 37, device=device).t()  # column stride 37: copied for the kernel
    for blocks in ((16, 16), (16, 16, True)):  # several programs; one program looping over row blocks
        for reduction in ("mean", "none"):
            _compare_probabilities(logits, target, reduction, 0.1, blocks=blocks)
    _compare_probabilities(logits * 1000, target, "sum", 0.0, blocks=(16, 16), tol=dict(rtol=1e-5, atol=1e-5))
    _compare_probabilities(logits[:, :10], target[:, :10], "mean", 0.0, blocks=(64, 16, True))  # the GPU's tile


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_logits_are_one_example(seed, device, reduction):
    """As torch: logits (C,) with a 0-d target; a 0-d loss and a (C,) gradient."""
    logits = torch.randn(9, device=device) * 2
    target = torch.randint(0, 9, (), device=device)
    ref_in = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_in, target, reduction=reduction, label_smoothing=0.1)
    (ref * 1.5).backward()
    z = tn.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(z, tn.Tensor(target), reduction=reduction, label_smoothing=0.1)
    assert loss.shape == ()
    F.mul_scalar(loss, 1.5).backward()
    torch.testing.assert_close(loss.data.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-6)
    probabilities = torch.softmax(torch.randn(9, device=device), dim=0)
    _compare_probabilities(logits[None], probabilities[None], reduction, 0.1)  # the batched twin
    z = tn.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(z, probabilities, reduction=reduction)
    loss.backward()
    ref_in = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_in, probabilities.double(), reduction=reduction)
    ref.backward()
    assert loss.shape == () and z.grad.shape == (9,)
    torch.testing.assert_close(loss.data.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-6)


def test_implicit_unit_gradient_skips_the_scaling_launch(seed, device):
    """loss.backward() seeds a gradient of exactly 1: cross_entropy hands its saved gradient on
    without the scaling launch, bitwise what an explicit 1 (scaled) gives; a 1 that reaches the
    loss through another op unchanged keeps the shortcut, any other upstream gradient is scaled."""
    logits = torch.randn(6, 5, device=device)
    target = torch.randint(0, 5, (6,), device=device)

    def run(backward):
        z = tn.Tensor(logits, requires_grad=True)
        _, ops = launched(lambda: backward(F.cross_entropy(z, target)))
        return z.grad, ops.count("scale_by_scalar")

    implicit, launches = run(lambda loss: loss.backward())
    explicit, explicit_launches = run(lambda loss: loss.backward(torch.ones((), device=device)))
    assert (launches, explicit_launches) == (0, 1)
    assert torch.equal(implicit, explicit)
    through_add, add_launches = run(lambda loss: F.add(loss, 0.0).backward())  # add_scalar passes grad on
    assert add_launches == 0 and torch.equal(through_add, explicit)
    doubled, doubled_launches = run(lambda loss: F.mul_scalar(loss, 2.0).backward())
    assert doubled_launches == 1 and torch.allclose(doubled, 2 * explicit)


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
    """Raised by the call under the interpreter; on a GPU by the read of the loss at the latest
    (the count is checked without waiting for the device: see runtime.check_later)."""
    logits = torch.randn(6, 10, device=device)
    for bad in (10, -1, 1 << 40):
        target = torch.tensor([0, 1, 2, bad, 4, 5], device=device)
        with pytest.raises(ValueError, match=r"target has 1 label\(s\) outside \[0, 10\)"):
            F.cross_entropy(tn.Tensor(logits, requires_grad=True), target).item()
    target = torch.randint(0, 10, (40,), device=device)
    target[33] = 10
    for blocks in ((16, 16), (16, 16, True)):  # several programs + reduction; one looping program
        with pytest.raises(ValueError, match=r"target has 1 label\(s\)"):
            K.cross_entropy(torch.randn(40, 10, device=device), target, blocks=blocks)
            runtime.raise_deferred(wait=True)
    runtime.raise_deferred(wait=True)  # nothing left pending
    F.cross_entropy(logits, torch.randint(0, 10, (6,), device=device)).item()  # good labels: no error
    with pytest.raises(TypeError, match="target must have dtype"):
        F.cross_entropy(logits, torch.zeros(6, dtype=torch.int8, device=device))
    with pytest.raises(ValueError, match=r"target of class probabilities must have logits' shape \(6, 10\)"):
        F.cross_entropy(logits, torch.zeros(6, device=device))
    with pytest.raises(TypeError, match="target must have dtype"):
        F.cross_entropy(logits, torch.zeros(6, 10, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="one label per row"):
        F.cross_entropy(logits, torch.zeros(5, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(logits, torch.zeros(6, dtype=torch.long, device=device), reduction="max")
    with pytest.raises(ValueError, match=r"logits must be 2-D \(B, C\) or 1-D"):
        F.cross_entropy(logits[None], torch.zeros(6, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="target must be a 0-d class index or .* for 1-D"):
        F.cross_entropy(logits[0], torch.zeros(6, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"target has 1 label\(s\) outside \[0, 10\)"):
        F.cross_entropy(logits[0], torch.tensor(10, device=device)).item()
    for blocks in (None, (16, 16)):  # reduction="none": the bad labels are counted all the same
        with pytest.raises(ValueError, match=r"target has 1 label\(s\)"):
            K.cross_entropy(torch.randn(40, 10, device=device), target, "none", blocks=blocks)
            runtime.raise_deferred(wait=True)


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


def test_deferred_checks_raise_once_their_count_has_arrived(monkeypatch):
    """runtime.raise_deferred with the GPU's entries faked (a host count, an event that has or has
    not completed): counts still in flight stay pending, arrived ones raise in call order (the
    first bad one), good ones are dropped, and wait=True waits for all of them."""
    class FakeEvent:
        def __init__(self, done):
            self.done = done

        def query(self):
            return self.done

        def synchronize(self):
            self.done = True

    def error(tag):
        return lambda n, deferred: ValueError(f"{tag}: {n} bad, deferred={deferred}")

    def entry(n, done, tag):
        return (torch.tensor(n, dtype=torch.int32), FakeEvent(done), error(tag))

    in_flight = entry(3, False, "third")
    monkeypatch.setattr(runtime, "_PINNED_FREE", [])
    monkeypatch.setattr(runtime, "_DEFERRED", [entry(0, True, "first"), entry(2, True, "second"), in_flight,
                                               entry(5, True, "fourth")])
    with pytest.raises(ValueError, match="second: 2 bad, deferred=True"):
        runtime.raise_deferred()
    assert runtime._DEFERRED == [in_flight]  # the arrived ones are consumed, raised or not
    assert len(runtime._PINNED_FREE) == 3  # and their host slots are free for the next checks
    runtime.raise_deferred()  # still in flight: nothing yet
    assert runtime._DEFERRED == [in_flight]
    with pytest.raises(ValueError, match="third: 3 bad"):
        runtime.raise_deferred(wait=True)
    assert runtime._DEFERRED == []

    class CapturedEvent(FakeEvent):  # CUDA forbids querying events while a graph is captured
        def query(self):
            raise AssertionError("an event was queried during a CUDA graph capture")

        synchronize = query

    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    pending = (torch.tensor(4, dtype=torch.int32), CapturedEvent(False), error("later"))
    monkeypatch.setattr(runtime, "_DEFERRED", [pending])
    runtime.raise_deferred()
    runtime.raise_deferred(wait=True)
    assert runtime._DEFERRED == [pending]  # checked after the capture
    monkeypatch.setattr(runtime, "_DEFERRED", [])


@pytest.mark.skipif(runtime.INTERPRETED, reason="needs a GPU running ahead of the host")
def test_bad_labels_do_not_stop_the_host_on_a_gpu(device):
    """On a GPU the label check waits for nothing: with the GPU kept busy for a while, the call
    returns before the device has reached it, and the error comes with the read of the loss."""
    from tritonnet.profile import keep_gpu_busy

    logits = tn.Tensor(torch.randn(6, 10, device=device), requires_grad=True)
    F.cross_entropy(logits, torch.zeros(6, dtype=torch.long, device=device)).item()  # compiled already
    target = torch.tensor([0, 1, 2, 10, 4, 5], device=device)
    torch.cuda.synchronize()
    keep_gpu_busy(200.0)
    busy = torch.cuda.Event()
    busy.record()
    loss = F.cross_entropy(logits, target)
    assert not busy.query(), "cross_entropy waited for the device"
    with pytest.raises(ValueError, match=r"target has 1 label\(s\) outside \[0, 10\) \(in an earlier"):
        loss.item()
    # good labels: no error, and the pinned slot of each count is reused, not allocated anew
    good = torch.zeros(6, dtype=torch.long, device=device)
    slots = []
    for _ in range(5):
        F.cross_entropy(logits, good).item()
        slots.append(len(runtime._PINNED_FREE))
    assert slots == [slots[0]] * 5 and slots[0] >= 1, slots

