"""Host-side launch overhead: memoised launch plans, the autotuner bypass once a shape is tuned,
and the host-overhead benchmark's smoke run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tritonnet import runtime
from tritonnet.kernels import conv as conv_kernels
from tritonnet.kernels import linear as linear_kernels

from aot import SpecRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _close(ours, ref, what):
    torch.testing.assert_close(ours.double().cpu(), ref.double().cpu(), rtol=1e-4, atol=1e-4, msg=what)


def test_conv_autotuned_launches_skip_the_autotuner_once_tuned(monkeypatch, seed, device):
    """The real triton Autotuner, its timing stubbed (the interpreter has no CUDA events): the
    first call of each conv kernel goes through it, later calls launch the kernel directly with
    the config it chose, and every result matches torch."""
    tuners = (conv_kernels.conv2d_fwd_autotuned, conv_kernels.conv2d_dgrad_autotuned,
              conv_kernels.conv2d_wgrad_autotuned)
    for tuner in tuners:
        monkeypatch.setattr(tuner, "do_bench", lambda fn, quantiles=None: (fn(), [1.0, 1.0, 1.0])[1])
        monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(conv_kernels, "AUTOTUNE", True)
    launched = []

    def observer(kernel, grid, args, constexprs, info, run):
        launched.append((kernel, grid, dict(constexprs), info.op))
        return run()

    # GPU tiles under the interpreter: not recorded for the sm_90 compile check, which builds
    # these configs already (test_conv's autotune-config compile test).
    others = [o for o in runtime._OBSERVERS if not isinstance(o, SpecRecorder)]
    monkeypatch.setattr(runtime, "_OBSERVERS", others + [observer])
    x = torch.randn(3, 4, 7, 9, device=device)
    w = torch.randn(5, 4, 3, 3, device=device)
    b = torch.randn(5, device=device)
    for call in range(3):
        launched.clear()
        y, mask = conv_kernels.conv2d_forward(x, w, b, padding=1, activation="relu", save_relu_mask=True)
        g = torch.randn_like(y)
        dx = conv_kernels.conv2d_input_grad(g, w, x.shape, padding=1, relu_mask=mask)
        dw, db = conv_kernels.conv2d_weight_grad(g, x, w.shape, padding=1, relu_mask=mask, bias_grad=True)
        xr, wr, br = (t.double().cpu().requires_grad_() for t in (x, w, b))
        yr = torch.nn.functional.conv2d(xr, wr, br, padding=1).relu()
        yr.backward(g.double().cpu())
        for ours, ref, what in ((y, yr, "y"), (dx, xr.grad, "dx"), (dw, wr.grad, "dw"), (db, br.grad, "db")):
            _close(ours, ref.detach(), f"call {call}: {what}")
        assert [op for *_, op in launched] == ["conv2d_fwd_relu", "conv2d_dgrad_relu", "conv2d_wgrad_relu"]
        if call == 0:
            assert [kernel for kernel, *_ in launched] == list(tuners)
            continue
        for (kernel, grid, consts, _), tuner in zip(launched, tuners):
            assert kernel is tuner.fn, "a tuned shape launches the kernel itself"
            chosen = tuner.best_config.all_kwargs()
            assert {k: consts[k] for k in chosen} == chosen
            assert isinstance(grid, tuple) and all(isinstance(v, int) and v >= 1 for v in grid)


def test_launch_plans_are_reused_and_bad_arguments_raise_on_every_call(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    before = conv_kernels._forward_plan.cache_info().hits
    for _ in range(3):
        conv_kernels.conv2d_forward(x, w, stride=[1, 2])  # a list is an accepted (and cached) pair
    assert conv_kernels._forward_plan.cache_info().hits >= before + 2
    for _ in range(2):  # errors are raised by the plan builder and never cached
        with pytest.raises(ValueError, match="channel mismatch"):
            conv_kernels.conv2d_forward(x, torch.randn(4, 2, 3, 3, device=device))
        with pytest.raises(TypeError, match="stride must be an int or a pair"):
            conv_kernels.conv2d_forward(x, w, stride={1: 2})  # unhashable: validated uncached
        with pytest.raises(ValueError, match="grad_out must have the output's shape"):
            conv_kernels.conv2d_input_grad(torch.randn(2, 4, 5, 5, device=device), w, x.shape)
        with pytest.raises(TypeError, match="x must have grad_out's dtype"):
            conv_kernels.conv2d_weight_grad(torch.randn(2, 4, 6, 6, device=device), x.half(), w.shape)
        with pytest.raises(ValueError, match="must be on device"):
            runtime.check_tensor(torch.empty(2, device="meta"), "x")
    a = torch.randn(5, 7, device=device)
    lw = torch.randn(3, 7, device=device)
    before = linear_kernels._matmul_plan.cache_info().hits
    first = linear_kernels.linear_forward(a, lw)
    second = linear_kernels.linear_forward(a, lw)
    assert linear_kernels._matmul_plan.cache_info().hits >= before + 1
    assert torch.equal(first, second)
    _close(first, a.double() @ lw.double().t(), "linear")


def test_host_overhead_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_host_overhead.py"), "--quick",
                          "--batch", "4", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.load(open(tmp_path / "host_overhead.json"))
    rows = {r["op"]: r for r in result["rows"]}
    step = rows["LeNet whole step (zero_grad, fwd, bwd, SGD)"]
    assert result["mode"] == ("stub" if runtime.INTERPRETED else "real")
    assert step["us_per_call"] > 0 and rows["conv2d fwd+relu (conv2, tape)"]["launches"] in (1, None)


def test_optimizer_launcher_still_names_the_bad_tensor(seed, device):
    from tritonnet.kernels import optim as optim_kernels

    params = [torch.randn(3, 5, device=device), torch.randn(7, device=device)]
    grads = [torch.randn_like(p) for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    expected = [p - 0.1 * g for p, g in zip(params, grads)]
    optim_kernels.sgd_step(params, grads, buffers, lr=0.1, momentum=0.9)
    for p, e in zip(params, expected):
        _close(p, e, "sgd first step")
    bad_cases = [
        (ValueError, r"grads\[0\] must be contiguous", [torch.randn(5, 3, device=device).t(), grads[1]], buffers),
        (ValueError, r"grads\[1\] must be contiguous", [grads[0], torch.randn(8, device=device)], buffers),
        (ValueError, r"grads\[1\] must be contiguous .* and dtype torch.float32, got \(7,\) torch.float16",
         [grads[0], grads[1].half()], buffers),
        (ValueError, r"momentum_buffers\[0\] must be on device", grads, [torch.empty(3, 5, device="meta"),
                                                                           buffers[1]]),
        (TypeError, r"grads\[1\] must be a torch.Tensor", [grads[0], 1.0], buffers),
    ]
    for error, message, g, b in bad_cases:
        with pytest.raises(error, match=message):
            optim_kernels.sgd_step(params, g, b, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"params\[0\] must have dtype"):
        optim_kernels.sgd_step([torch.ones(3, dtype=torch.int32, device=device)], [torch.ones(3, device=device)],
                               None, lr=0.1)
