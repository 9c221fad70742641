"""Optimizers: N steps track torch.optim, one launch per step, runtime hyper-parameters, state_dict."""
import copy
import inspect

import pytest
import torch

import tritonnet as tn
from tritonnet import optim, runtime
from tritonnet.kernels import optim as K

from aot import SpecRecorder
from launches import launched

SHAPES = [(7, 5), (13,), (3, 4, 5), (20000,)]  # 20000 spans two interpreter chunks
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, betas=(0.3, 0.9), weight_decay=0.1)),  # beta1 < 0.5: lerp's other branch
]


def _pair(name, kwargs, device, shapes=SHAPES, dtype=torch.float32, reference_dtype=None):
    """Our parameters in ``dtype`` and an optimizer on them; torch's copies of the same values
    (in ``reference_dtype``, default ``dtype``) and torch.optim's optimizer on those."""
    start = [torch.randn(s, device=device).to(dtype) for s in shapes]
    ours = [tn.Tensor(p.clone(), requires_grad=True) for p in start]
    theirs = [p.clone().to(reference_dtype or dtype).requires_grad_() for p in start]
    return ours, getattr(optim, name)(ours, **kwargs), theirs, getattr(torch.optim, name)(theirs, **kwargs)


def _step(ours, opt, theirs, topt, device, dtype=torch.float32):
    grads = [torch.randn(p.shape, device=device).to(dtype) for p in ours]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = g.clone(), g.to(q.dtype)
    opt.step()
    topt.step()


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_optimizer_tracks_torch_optim_in_one_launch_per_step(seed, device, name, kwargs):
    ours, opt, theirs, topt = _pair(name, kwargs, device)
    for step in range(6):
        if step == 3:  # a new learning rate between steps takes effect at once
            opt.lr = kwargs["lr"] * 0.5
            topt.param_groups[0]["lr"] = kwargs["lr"] * 0.5
        launches = launched(lambda: _step(ours, opt, theirs, topt, device))[1]
        updates = [op for op in launches if op != "optimizer_table"]  # table fills when addresses change
        assert len(updates) == 1, launches  # all four tensors in one launch
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p.data, q.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_track_torch(seed, device, dtype):
    """Half-precision parameters and states, fp32 arithmetic, against torch.optim run in float32
    on the same values and gradients. (torch's own fp16 AdamW is no reference: its eps = 1e-8 is 0
    in fp16, so a gradient below ~2e-4, whose square underflows, gives inf: seed 802351847.)"""
    for name, kwargs in (CONFIGS[2], CONFIGS[6]):
        ours, opt, theirs, topt = _pair(name, kwargs, device, shapes=[(33,), (4, 9)], dtype=dtype,
                                        reference_dtype=torch.float32)
        for _ in range(3):
            _step(ours, opt, theirs, topt, device, dtype)
        for p, q in zip(ours, theirs):
            assert p.data.dtype == dtype
            torch.testing.assert_close(p.data.float(), q.detach().float(), rtol=2e-2, atol=2e-2)


def test_gpu_sized_chunks_and_vector_widths(seed, device, monkeypatch):
    """The GPU's chunk size on small tensors (several programs per tensor, partial last chunks),
    with 16-byte accesses (every numel a multiple of the vector width) and without (odd numels)."""
    monkeypatch.setattr(K, "BLOCK", 2048)
    for shapes, dtype, vec in [([(5000,), (3, 7)], torch.float32, 1), ([(5000,), (4, 8)], torch.float32, 4),
                               ([(1000,), (8, 8)], torch.bfloat16, 8)]:
        for name, kwargs in (CONFIGS[1], CONFIGS[4]):
            ours, opt, theirs, topt = _pair(name, kwargs, device, shapes=shapes, dtype=dtype)
            widths = []

            def observer(kernel, grid, args, constexprs, info, run):
                widths.append(constexprs.get("VEC"))
                return run()

            for _ in range(2):
                with runtime.observing(observer):
                    _step(ours, opt, theirs, topt, device, dtype)
            assert set(widths) - {None} == {vec}, widths
            tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
            for p, q in zip(ours, theirs):
                torch.testing.assert_close(p.data.float(), q.detach().float(), **tol)


def test_address_table_is_cached_and_empty_tensors_own_no_chunk(seed, device, monkeypatch):
    """The address table is written only when its contents change (by a kernel under the
    interpreter, by one copy from pinned memory on a GPU outside a capture); tensors without
    elements own no chunk and do not shift the others."""
    monkeypatch.setattr(K, "_TABLES", {})
    ours, opt, theirs, topt = _pair("AdamW", dict(lr=1e-2), device, shapes=[(0,), (9,), (0, 3), (20000,), (2,)])
    grads = [torch.randn(p.shape, device=device) for p in ours]
    for step in range(3):
        for p, q, g in zip(ours, theirs, grads):  # the same gradient tensors: the same addresses
            p.grad, q.grad = g, g.clone()
        launches = launched(lambda: (opt.step(), topt.step()))[1]
        # 5 rows x 6 values: two 16-value fills on the first step, none once the table is cached
        fills = 2 if step == 0 and runtime.INTERPRETED else 0
        assert launches == ["optimizer_table"] * fills + ["adamw_step"], launches
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.data, q.detach(), rtol=1e-6, atol=1e-6)


def test_a_table_filled_inside_a_capture_is_not_reused_by_eager_steps(device, monkeypatch):
    """Inside a CUDA graph capture (faked) the table is filled by kernels, which run at replays
    only: it is kept alive for the graph but never handed to an eager step from the cache."""
    monkeypatch.setattr(K, "_TABLES", {})
    monkeypatch.setattr(K, "_CAPTURED_TABLES", [])
    values = [7, 8, 9, 10, 11, 12]
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    launches = launched(lambda: K._device_table(values))[1]
    captured = K._CAPTURED_TABLES[-1]
    assert launches == ["optimizer_table"] and K._TABLES == {}
    monkeypatch.setattr(runtime, "INTERPRETED", True)  # (the fill ran at once here: the interpreter's)
    assert captured[:6].tolist() == values
    assert K._device_table(values) is not captured


def test_hyper_parameters_are_runtime_values_so_nothing_recompiles(seed, device):
    for kernel, names in ((K.sgd_kernel, ("lr", "weight_decay", "momentum", "buf_scale", "grad_scale")),
                          (K.adam_kernel, ("lr", "weight_decay", "decay_factor", "avg_weight", "beta2",
                                           "sq_weight", "eps", "step_size", "bias_correction2_sqrt"))):
        params = inspect.signature(kernel.fn).parameters
        for n in names:
            assert params[n].annotation is inspect.Parameter.empty, f"{n} must not be a constexpr"
    recorder = SpecRecorder()
    ours, opt, theirs, topt = _pair("Adam", dict(lr=1e-3), device, shapes=[(10,)])
    with runtime.observing(recorder):
        for step, lr in enumerate((1e-3, 1, 0.25, 2)):  # an int lr too: it is passed as a float
            opt.lr = lr
            _step(ours, opt, theirs, topt, device)
    kernels = [spec["kernel"] for spec in recorder.specs.values()]
    # one specialisation of the update for every lr and step count (and one of the table fill)
    assert sorted(kernels) == ["adam_kernel", "fill_table_kernel"] or kernels == ["adam_kernel"], kernels


def test_state_dict_round_trip_resumes_bitwise(seed, device):
    ours, opt, theirs, topt = _pair("Adam", dict(lr=1e-2, weight_decay=1e-3), device, shapes=[(6, 3), (4,)])
    resumed = [tn.Tensor(p.data.clone(), requires_grad=True) for p in ours]
    grads = [[torch.randn(p.shape, device=device) for p in ours] for _ in range(5)]
    for g in grads[:2]:
        for p, gi in zip(ours, g):
            p.grad = gi
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert isinstance(saved["state"][0]["step"], torch.Tensor)  # torch's layout
    saved["state"] = {str(k): v for k, v in saved["state"].items()}  # as after a JSON round trip
    for p, q in zip(resumed, ours):
        p.data.copy_(q.data)
    opt2 = optim.Adam(resumed, lr=0.5)
    opt2.load_state_dict(saved)
    assert opt2.lr == 1e-2 and float(opt2.state[0]["step"]) == 2
    for g in grads[2:]:
        for p, q, gi in zip(ours, resumed, g):
            p.grad, q.grad = gi, gi.clone()
        opt.step()
        opt2.step()
    for p, q in zip(ours, resumed):
        assert torch.equal(p.data, q.data)


def test_loads_torch_optimizer_state_and_skips_params_without_grad(seed, device):
    ours, opt, theirs, topt = _pair("SGD", dict(lr=0.1, momentum=0.9), device, shapes=[(5,), (3, 2)])
    for _ in range(2):
        _step(ours, opt, theirs, topt, device)
    fresh = [tn.Tensor(q.detach().clone(), requires_grad=True) for q in theirs]
    opt2 = optim.SGD(fresh, lr=1.0)
    opt2.load_state_dict(topt.state_dict())
    assert opt2.param_groups[0]["momentum"] == 0.9
    g = torch.randn(5, device=device)
    fresh[0].grad, theirs[0].grad, theirs[1].grad = g.clone(), g.clone(), None
    before = fresh[1].data.clone()
    opt2.step()
    topt.step()
    torch.testing.assert_close(fresh[0].data, theirs[0].detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(fresh[1].data, before)
    opt2.zero_grad()
    assert all(p.grad is None for p in fresh)


def test_optimizer_errors(device):
    p = tn.Tensor(torch.randn(3, device=device), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="does not require grad"):
        optim.Adam([tn.Tensor(torch.randn(3, device=device))])
    with pytest.raises(TypeError, match="tn.Tensor"):
        optim.Adam([torch.randn(3, device=device)])
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr must be"):
        optim.AdamW([p], lr=-1.0)
    opt = optim.SGD([p], lr=0.1)
    p.grad = torch.randn(4, device=device)
    with pytest.raises(ValueError, match=r"params\[0\].grad must have"):
        opt.step()
    with pytest.raises(ValueError, match="holds 2 parameters"):
        opt.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]})
