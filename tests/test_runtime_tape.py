import pytest
import torch

import tritonnet as tn
from tritonnet import runtime
from tritonnet.kernels.elementwise import add


def test_mode_and_device_agree():
    assert runtime.mode() in ("cuda", "interpreter")
    assert runtime.device().type == ("cpu" if runtime.mode() == "interpreter" else "cuda")
    assert "tritonnet on" in runtime.describe()


def test_wrong_device_is_a_value_error_naming_the_argument():
    other = "meta"
    x = torch.empty(4, device=other)
    with pytest.raises(ValueError, match="a must be on device"):
        add(x, x)


def test_check_tensor_errors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        runtime.check_tensor([1.0], "x")
    with pytest.raises(TypeError, match="x must have dtype"):
        runtime.check_tensor(torch.zeros(3, dtype=torch.int32, device=runtime.device()), "x")
    with pytest.raises(ValueError, match="x must be 4-D"):
        runtime.check_tensor(torch.randn(3, device=runtime.device()), "x", ndim=4)


def test_matmul_precision_setting():
    assert tn.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="precision"):
        tn.set_float32_matmul_precision("medium")
    tn.set_float32_matmul_precision("high")
    try:
        assert runtime.dot_precision(torch.float32) == "tf32"
    finally:
        tn.set_float32_matmul_precision("highest")
    assert runtime.dot_precision(torch.float32) == "ieee"


def test_add_kernel_fully_written_and_exact(seed, device):
    for n in (1, 1000, 40000):  # 40000 spans several GPU-sized blocks and a partial one
        a, b = torch.randn(n, device=device), torch.randn(n, device=device)
        out = add(a, b)
        assert torch.equal(out, a + b)


def test_tape_accumulates_when_a_tensor_feeds_two_ops(seed, device):
    x = tn.Tensor(torch.randn(5, device=device), requires_grad=True)

    def identity_op(t):
        return tn.tape.record("identity", t.data, (t,), lambda g: (g,))

    y1, y2 = identity_op(x), identity_op(x)
    z = tn.tape.record("add", add(y1.data, y2.data), (y1, y2), lambda g: (g, g))
    g = torch.randn(5, device=device)
    z.backward(g)
    assert torch.equal(x.grad, g + g)
    with pytest.raises(RuntimeError, match="second time"):
        z.backward(g)
    with pytest.raises(RuntimeError, match="one-element"):
        identity_op(x).backward()


def test_no_grad_records_nothing(device):
    x = tn.Tensor(torch.randn(3, device=device), requires_grad=True)
    with tn.no_grad():
        y = tn.tape.record("identity", x.data, (x,), lambda g: (g,))
    assert not y.requires_grad and y._node is None
    assert x.detach()._node is None and not x.detach().requires_grad


@pytest.mark.skipif(not runtime.INTERPRETED, reason="the checker wraps the interpreter's memory ops")
def test_bounds_checker_catches_an_unmasked_overrun(device):
    """The interpreter does not catch out-of-bounds accesses; the suite's checker must."""
    a = torch.randn(10, device=device)
    b = torch.randn(10, device=device)
    out = torch.empty(10, device=device)
    from tritonnet.kernels.elementwise import add_kernel

    # n=10 but a block of 16 with n passed as 16: the mask no longer protects the last 6 elements.
    with pytest.raises(Exception, match="outside every tensor argument"):
        runtime.launch(add_kernel, (1,), (a, b, out, 16), {"BLOCK": 16})
    runtime.launch(add_kernel, (1,), (a, b, out, 10), {"BLOCK": 16})
    assert torch.equal(out, a + b)


def test_graph_does_not_keep_intermediates_alive(device):
    """Edges point at nodes, not tensors: an activation no op saved is freed with its last user."""
    import gc
    import weakref

    x = tn.Tensor(torch.randn(8, device=device), requires_grad=True)
    y = tn.tape.record("identity", add(x.data, x.data), (x,), lambda g: (add(g, g),))
    z = tn.tape.record("identity", y.data.clone(), (y,), lambda g: (g,))  # saves nothing
    y_ref, y_data_ref = weakref.ref(y), weakref.ref(y.data)
    del y
    gc.collect()
    assert y_ref() is None and y_data_ref() is None
    g = torch.randn(8, device=device)
    z.backward(g)
    assert torch.equal(x.grad, add(g, g))


def test_saved_bytes_are_released_after_backward_and_when_the_graph_is_dropped(device):
    import gc

    x = tn.Tensor(torch.randn(16, device=device), requires_grad=True)
    before = tn.tape.saved_bytes()
    kept = torch.randn(16, device=device)
    y = tn.tape.record("keep", x.data.clone(), (x,), lambda g: (g,), saved=(kept,))
    assert tn.tape.saved_bytes() - before == 16 * 4
    y.backward(torch.randn(16, device=device))
    assert tn.tape.saved_bytes() == before
    y = tn.tape.record("keep", x.data.clone(), (x,), lambda g: (g,), saved=(kept,))
    assert tn.tape.saved_bytes() - before == 16 * 4
    del y
    gc.collect()
    assert tn.tape.saved_bytes() == before


def test_a_storage_saved_by_two_ops_counts_once(device):
    x = tn.Tensor(torch.randn(32, device=device), requires_grad=True)
    before = tn.tape.saved_bytes()
    shared = torch.randn(32, device=device)
    y = tn.tape.record("a", x.data.clone(), (x,), lambda g: (g,), saved=(shared,))
    z = tn.tape.record("b", y.data.clone(), (y,), lambda g: (g,), saved=(shared[:16], y.data))
    assert tn.tape.saved_bytes() - before == 32 * 4 + 32 * 4
    z.backward(torch.randn(32, device=device))
    assert tn.tape.saved_bytes() == before
