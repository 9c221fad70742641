"""`tritonnet bench`: the quick smoke run end to end, the README section it regenerates, recorded
torch.compile failures, and that tritonnet and torch time the same training step."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tritonnet import bench, runtime
from tritonnet.workloads import build_step


def test_bench_quick_writes_json_markdown_and_png(tmp_path, capsys):
    from tritonnet.cli import main

    # a budget no run reaches: on a GPU the first run also compiles every kernel, and every row must be timed
    assert main(["bench", "--quick", "--budget-s", "900", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = (tmp_path / "bench.md").read_text()
    env = results["environment"]
    assert env["commit"] and env["torch"] == torch.__version__ and env["device"]
    # the method is recorded, and the tables say which one their numbers came from
    assert env["kernel_timing"] == bench.KERNEL_TIMING and "queued behind a head start" in md
    older = dict(results, environment={k: v for k, v in env.items() if k != "kernel_timing"})
    assert "predate the queued timing" in bench.markdown(older) and "do_bench" in bench.markdown(older)
    if runtime.INTERPRETED:
        assert "mean nothing" in out and not results["meaningful"] and "mean nothing" in md
    kinds = {r["kind"] for r in results["rows"]}
    assert kinds == {"op", "step"}
    ops = {r["name"].split()[0] for r in results["rows"] if r["kind"] == "op"}
    assert {"max_pool2d", "conv2d", "linear", "cross_entropy"} <= ops
    assert any(r["name"] == "conv2d fwd +bias+relu+maxpool2" for r in results["rows"])
    for row in results["rows"]:
        for impl in ("tritonnet", "torch"):
            timing = row["impls"][impl]
            assert "p50" in timing and "wall_ms" in timing, (row["name"], impl, timing)
            assert 0 < timing["p20"] <= timing["p50"] <= timing["p80"]
        assert row["x_vs_torch"] > 0
        assert "skipped" in row["impls"]["torch.compile"]  # --quick leaves the compiler out, and says so
        if row["kind"] == "op":
            assert row["launches"] >= 1 and row["flops"] > 0 and row["bytes"] > 0
    step = next(r for r in results["rows"] if r["kind"] == "step")
    assert step["impls"]["tritonnet"]["launches"] > 5
    assert abs(step["impls"]["tritonnet"]["first_loss"] - step["impls"]["torch"]["first_loss"]) < 1e-4
    if runtime.INTERPRETED:
        assert "interpreter" in step["impls"]["tritonnet+graph"]["skipped"]


def _fake_results(meaningful=True):
    return {
        "environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6", "commit": "abc1234",
                        "date": "2026-11-27", "mode": "cuda"},
        "meaningful": meaningful, "quick": False, "notes": [],
        "rows": [
            {"kind": "step", "name": "train step lenet", "model": "lenet", "batch": 256, "shape": "batch 256 x 1x28x28",
             "dtype": "fp32", "x_vs_torch": 2.0, "x_vs_compile": 1.5,
             "impls": {"tritonnet": {"p20": 1, "p50": 1.1, "p80": 1.2, "wall_ms": 1.3, "kernel_sum_ms": 0.5,
                                     "launches": 30},
                       "tritonnet+graph": {"p20": 0.5, "p50": 0.5, "p80": 0.6, "wall_ms": 0.6},
                       "torch": {"p20": 1, "p50": 1.1, "p80": 1.2, "wall_ms": 1.2},
                       "torch.compile": {"error": "RuntimeError: no compiler"}}},
            {"kind": "step", "name": "train step vgg", "model": "vgg", "batch": 512, "shape": "batch 512 x 3x32x32",
             "dtype": "bf16", "x_vs_torch": 0.9, "x_vs_compile": None, "tritonnet_best_ms": 4.0,
             "tritonnet_channels_last": True, "x_vs_torch_channels_last": 0.7,
             "x_vs_torch_nchw_network": 1.2,
             "impls": {bench.TORCH_CHANNELS_LAST: {"p20": 2, "p50": 2.5, "p80": 3, "wall_ms": 2.8},
                       bench.TRITONNET_NCHW: {"p20": 2, "p50": 2.5, "p80": 3, "wall_ms": 3.0},"tritonnet": {"p20": 3, "p50": 3.5, "p80": 4, "wall_ms": 4.0, "kernel_sum_ms": 3.0,
                                     "launches": 40, "top_kernels": [
                                         {"op": "conv2d_wgrad_relu", "kernel": "conv2d_wgrad_kernel", "dtype": "bfloat16",
                                          "count": 3, "total_ms": 1.25, "roofline_pct": 31.0}]},
                       "tritonnet+graph": {"skipped": "CUDA graph: capture failed: RuntimeError: sync"},
                       "torch": {"p20": 3, "p50": 3.5, "p80": 4, "wall_ms": 3.6},
                       "torch.compile": {"skipped": "outside the 170 s time budget (--budget-s)"}}},
            {"kind": "op", "name": "conv2d fwd", "shape": "s", "dtype": "bf16", "x_vs_torch": 0.8, "x_vs_compile": None,
             "floor_ms": 0.01, "pct_of_floor": 50.0, "launches": 1,
             "impls": {"tritonnet": {"p20": 0.02, "p50": 0.02, "p80": 0.03, "wall_ms": 0.05},
                       "torch": {"p20": 0.016, "p50": 0.016, "p80": 0.02, "wall_ms": 0.04},
                       "torch.compile": {"skipped": "time budget of 170 s spent"}}},
            *({"kind": "op", "name": name, "shape": "s", "dtype": "bf16", "x_vs_torch": 1.0, "x_vs_compile": None,
               "floor_ms": 0.01, "pct_of_floor": 50.0, "launches": 1,
               "impls": {"tritonnet": {"p20": ms, "p50": ms, "p80": ms, "wall_ms": ms},
                         "torch": {"p20": ms, "p50": ms, "p80": ms, "wall_ms": ms},
                         "torch.compile": {"skipped": "time budget of 170 s spent"}}}
              for name, ms in (("conv2d fwd +bias+relu", 0.06), ("max_pool2d fwd", 0.02),
                               ("conv2d fwd +bias+relu+maxpool2", 0.05))),
        ],
        "targets": [{"model": "lenet", "dtype": "fp32", "required_x_vs_torch": 1.5, "x_vs_torch": 2.0,
                     "x_vs_compile": 1.5, "met": True},
                    {"model": "vgg", "dtype": "bf16", "required_x_vs_torch": 1.0, "x_vs_torch": 0.9,
                     "x_vs_compile": None, "met": False}],
    }


def test_update_readme_rewrites_only_the_results_section(tmp_path):
    results_dir = tmp_path / "run"
    bench.write_outputs(_fake_results(), str(results_dir))
    readme = tmp_path / "README.md"
    readme.write_text(f"# project\n\nintro\n\n## Results\n\n{bench.README_START}\nold table\n{bench.README_END}\n\n"
                      "## After\n\nkept\n")
    bench.update_readme(str(results_dir), str(readme))
    first = readme.read_text()
    assert "old table" not in first and first.startswith("# project\n\nintro") and first.endswith("## After\n\nkept\n")
    assert first.count(bench.README_START) == 1 and first.count(bench.README_END) == 1
    assert "NVIDIA H100 80GB HBM3" in first and "abc1234" in first and "2.00x" in first
    assert "benchmarks/results/nvidia-h100-80gb-hbm3/bench.png" in first
    # a missed target says where the step's time goes: kernels vs. gaps, and the slowest kernels
    assert "vgg bf16: 40 launches, 3.000 ms in kernels of a 4.000 ms step (75%" in first
    assert "conv2d_wgrad_relu 1.250 ms (31% of roofline)" in first and "capture failed" in first
    # the channels-last network says so, with torch's channels-last step beside it (only there)
    assert "| batch 512 x 3x32x32 (tritonnet channels-last) | bf16 |" in first and "| 2.800 (0.70x) |" in first
    assert "| batch 256 x 1x28x28 | fp32 |" in first
    assert "run NCHW by tritonnet (its channels-last default turned off; CUDA graph): vgg bf16 3.000 ms (1.20x" in first
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / "benchmarks" / "results" / "nvidia-h100-80gb-hbm3" / name).exists()
    bench.update_readme(str(results_dir), str(readme))
    assert readme.read_text() == first  # regenerating is idempotent
    # the GPU check's one-page report puts the layout comparison beside the step it qualifies
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_summary.py"), str(results_dir)],
                            capture_output=True, text=True, timeout=60)
    assert ("layouts (channels-last is tritonnet's default here): tritonnet NCHW graphed 3.000 ms, "
            "torch eager channels-last 2.800 ms") in report.stdout, report.stdout + report.stderr
    # and the pool-fused conv beside the two kernels it replaces
    assert "bf16: fused 0.0500 ms, conv 0.0600 ms + pool 0.0200 ms = 0.0800 ms (1.60x)" in report.stdout, report.stdout

    bench.write_outputs(_fake_results(meaningful=False), str(results_dir))
    with pytest.raises(ValueError, match="interpreter"):
        bench.update_readme(str(results_dir), str(readme))


def test_torch_compile_failure_is_recorded_not_fatal(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(torch, "compile", broken_compile)
    name, shape, builder = next(c for c in bench._op_cases(quick=True) if c[0] == "linear fwd +bias+relu")
    row = {"kind": "op", "name": name, "shape": shape, "dtype": "fp32", "impls": {}}
    bench._run_op(row, builder, "torch.compile", quick=True, peaks=None)
    assert row["impls"]["torch.compile"] == {"error": "RuntimeError: inductor exploded"}


def test_missing_op_is_skipped_with_a_reason(monkeypatch):
    import tritonnet.functional as F

    monkeypatch.delattr(F, "cross_entropy")
    name, shape, builder = next(c for c in bench._op_cases(quick=True) if c[0].startswith("cross_entropy"))
    row = {"kind": "op", "name": name, "shape": shape, "dtype": "fp32", "impls": {}}
    bench._run_op(row, builder, "tritonnet", quick=True, peaks=None)
    assert "cross_entropy is not available" in row["impls"]["tritonnet"]["skipped"]


def test_tritonnet_and_torch_steps_do_the_same_work(seed):
    ours = build_step("digits", 3, "fp32", impl="tritonnet", cuda_graph=False, n_batches=2)
    theirs = build_step("digits", 3, "fp32", impl="torch", n_batches=2)
    for _ in range(2):  # same weights, same batches, same SGD-with-momentum updates
        a, b = ours(), theirs()
        assert abs(float(a.data) - float(b.detach())) < 1e-4
    assert ours.graph is None and ours.graph_error


def test_channels_last_steps_do_the_same_work(seed):
    """The VGG step runs channels-last in tritonnet by default (the batch copied inside the step);
    torch's channels-last step (the bench's extra column) and NCHW step agree with it."""
    from tritonnet.workloads import channels_last_by_default

    assert channels_last_by_default("vgg") and not channels_last_by_default("lenet")
    ours = build_step("vgg", 2, "fp32", impl="tritonnet", cuda_graph=False, n_batches=1)
    assert ours.channels_last
    ops = []

    def record(kernel, grid, args, constexprs, info, run):
        ops.append(info.op)
        return run()

    with runtime.observing(record):
        a = float(ours().data)
    assert ops[0] == "to_channels_last" and "to_contiguous" in ops
    row = {"kind": "step", "name": "train step vgg", "model": "vgg", "batch": 2, "dtype": "fp32", "impls": {}}
    for impl in ("torch", bench.TORCH_CHANNELS_LAST):
        bench._run_step(row, impl, quick=True, peaks=None)
        assert abs(row["impls"][impl]["first_loss"] - a) < 1e-4, (impl, row["impls"][impl])
    if runtime.INTERPRETED:  # tritonnet's NCHW network is timed as a CUDA graph: none here
        bench._run_step(row, bench.TRITONNET_NCHW, quick=True, peaks=None)
        assert "CUDA graph" in row["impls"][bench.TRITONNET_NCHW]["skipped"]
    assert next(build_step("vgg", 2, impl="torch", n_batches=1, channels_last=True).net.parameters()).is_contiguous(
        memory_format=torch.channels_last)


def test_cuda_graph_step_replays_the_eager_step(seed):
    """On a GPU the captured step must train exactly like the eager one (static input buffers, the
    graph pool's gradients, in-place optimizer updates); under the interpreter it stays eager."""
    eager = build_step("digits", 3, "fp32", impl="tritonnet", cuda_graph=False, n_batches=2)
    graphed = build_step("digits", 3, "fp32", impl="tritonnet", cuda_graph=True, n_batches=2)
    if runtime.INTERPRETED:
        assert graphed.graph is None and "interpreter" in graphed.graph_error
    else:
        assert graphed.graph is not None, graphed.graph_error
        x0, y0 = eager.batches[0]
        for _ in range(3):  # what the capture's warm-up did to the graphed step's weights
            eager.eager_step(x0, y0)
    for _ in range(2):
        a, b = float(eager().data), float(graphed().data)
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (a, b)
    for p, q in zip(eager.net.parameters(), graphed.net.parameters()):
        assert torch.allclose(p.data, q.data, rtol=1e-5, atol=1e-6)


def test_precompile_workers_run_the_items(seed):
    """The parallel precompile (on by default on a GPU) runs items in worker processes; in-process,
    ``_warm`` runs steps and ops and shrugs off what fails."""
    names = [c[0] for c in bench._op_cases(quick=True)]
    linear = ("op", names.index("linear fwd +bias+relu"), "fp32")
    assert bench._warm([linear, ("op", names.index("cross_entropy fwd+bwd"), "fp32"),
                        ("step", "no-such-model", 2, "fp32")], quick=True) == 2
    note = bench.precompile([linear], workers=1, timeout_s=120, quick=True)
    assert "1 items' kernels in 1 processes" in note and "(0 failed" in note, note


def test_gpu_diagnostic_scripts_run_under_the_interpreter(tmp_path):
    """conv_sweep.py and diag_gradients.py run on a GPU only in the GPU check; their smoke modes
    here keep them from rotting: the sweep's tiny layers must match torch, and the pool-winner
    comparison must run end to end."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    budget = "100" if runtime.INTERPRETED else "0"  # on a GPU (the GPU check's suite): no tile sweep
    sweep = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "conv_sweep.py"), "--out", str(tmp_path),
                            "--budget-s", budget], capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    rows = json.load(open(tmp_path / "conv_sweep.json"))["rows"]
    assert rows[-1].get("done") and all("error" not in r for r in rows)
    assert all(float(r["rel_err"]) < 2e-2 for r in rows if "rel_err" in r)  # bf16 against fp32 torch
    assert {r["what"] for r in rows if "what" in r} >= {"cuDNN NCHW", "stage x NCHW->NHWC",
                                                        "tritonnet NCHW in+out (autotuned)"}
    # the GPU check's one-page report reads whatever is there: the sweep's rows, the rest missing
    report = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_summary.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "- tiny stem: cuDNN" in report.stdout and "wgrad splits: default" in report.stdout
    if runtime.INTERPRETED:  # the direct wgrad's phase: its rows are ours, cuDNN's the reference
        assert "- tiny LeNet bfloat16: cuDNN wgrad" in report.stdout and "direct wgrad CO_BLOCK=" in report.stdout
    assert "bench_conv.json: FileNotFoundError" in report.stdout and (tmp_path / "report.md").exists()
    diag = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "diag_gradients.py"), "--pool-winners", "3"],
                          capture_output=True, text=True, timeout=300)
    assert diag.returncode == 0 and "seed 3 pool2: " in diag.stdout, diag.stdout + diag.stderr


def test_train_epoch_bench_and_its_report_line(tmp_path):
    """The GPU check's train_epoch stage (bench_train.py --parts epoch) under the interpreter: the
    loop's record and torch's, then the report's line about them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "train_epoch"
    bad = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_train.py"), "--parts", "epochs",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--parts" in bad.stderr
    if not runtime.INTERPRETED:  # on a GPU the full epochs are the GPU check's train_epoch stage
        return
    run = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_train.py"), "--quick", "--parts",
                          "epoch", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.load(open(out / "bench_train.json"))
    assert result["memory"] == [] and result["steps"] == []
    epoch = result["epoch"]
    assert epoch["tritonnet_images_per_s"] > 0 and epoch["torch_images_per_s"] > 0
    assert epoch["tritonnet_graphed_steps"] == 0  # no CUDA graph under the interpreter
    report = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_summary.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert f"- digits_cnn batch {epoch['batch']}: graphed " in report.stdout, report.stdout


def test_bench_conv_smoke_run_writes_rows_and_targets(tmp_path):
    """bench_conv.py's interpreter smoke run: every op of its small shapes timed on both sides and
    the three target checks present (their ratios mean nothing here)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "bench_conv.py")
    if not runtime.INTERPRETED:  # on a GPU the full benchmark is the GPU check's next stage
        run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "--quick" in run.stdout, run.stdout + run.stderr
        return
    run = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.load(open(tmp_path / "bench_conv.json"))
    assert result["complete"] and not result["timings_meaningful"]
    ops = {r["op"] for r in result["rows"]}
    assert ops == {"fwd", "fwd+bias+relu", "dgrad", "wgrad", "bwd+bias+relu"}, ops
    assert all(r["tritonnet_ms"] > 0 and r["cudnn_nchw_ms"] > 0 for r in result["rows"])
    assert len(result["targets"]) == 6


def test_gpu_timing_queues_each_call_behind_a_head_start(monkeypatch):
    """time_op's GPU path with the device faked (a clock the calls advance; events that read it):
    each timed call is flushed, then queued behind a head start, then bracketed by events; when
    most calls still found the GPU idle, it measures again with a four times longer head start
    and reports that attempt's times."""
    profile_module = __import__("importlib").import_module("tritonnet.profile")
    clock = {"t": 0.0}
    log = []

    def head_starts():
        return sorted({e[1] for e in log if isinstance(e, tuple)})

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock["t"]

        def synchronize(self):
            pass

        def query(self):  # the GPU runs dry until the head start has been raised once
            return len(head_starts()) < 2

        def elapsed_time(self, other):
            return other.t - self.t

    class FakeFlush:
        def zero_(self):
            log.append("flush")

    def call():
        log.append("call")
        clock["t"] += 0.25 if len(head_starts()) < 2 else 0.5  # tells the attempts apart

    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(("sleep", cycles)), raising=False)
    monkeypatch.setattr(profile_module, "_sleep_cycles_per_ms", lambda: 1e6)
    monkeypatch.setattr(bench, "_FLUSH", {"buf": FakeFlush()})
    result = bench.time_op(call, warmup_ms=1, rep_ms=10)
    assert result == {"p20": 0.5, "p50": 0.5, "p80": 0.5}  # the second attempt's times
    first, second = head_starts()
    assert abs(second - 4 * first) <= 4  # whole cycles
    # every timed call: flush, head start, call, in that order
    timed = [i for i, e in enumerate(log) if isinstance(e, tuple)]
    assert len(timed) >= 10 and all(log[i - 1] == "flush" and log[i + 1] == "call" for i in timed)


@pytest.mark.skipif(runtime.INTERPRETED, reason="real CUDA events: the GPU check's test stage runs it")
def test_gpu_timing_excludes_the_host_time_of_a_call():
    """On a GPU: a call that spends 2 ms on the host before launching a tiny kernel times at the
    kernel's microseconds, not the host's milliseconds (wall time is measured elsewhere)."""
    import time as _time

    a = torch.randn(1000, device=runtime.device())

    def call():
        _time.sleep(0.002)
        return a + 1

    result = bench.time_op(call, warmup_ms=5, rep_ms=50)
    assert result["p50"] < 0.5, result


def test_tma_conv_prototype_matches_torch(seed):
    """benchmarks/conv_tma.py (timed by conv_sweep against the library's kernel): tiles of one
    image's rows and of two images (the second past the batch: zero-filled, masked), padding,
    a 1x1 window, out channels not a multiple of the tile; and the shapes it must refuse."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from conv_tma import box, conv2d_forward_tma

    dev = runtime.device()
    # 16-wide dots and 16-byte TMA boxes: the same cases compile on a GPU (the GPU check's suite)
    for n, c_in, h, c_out, k, pad, config in [(3, 16, 4, 16, 3, 1, (32, 16, 16, 4, 1)),
                                              (2, 32, 8, 24, 3, 1, (32, 16, 16, 4, 1)),
                                              (2, 16, 4, 16, 1, 0, (16, 16, 16, 4, 1))]:
        x = torch.randn(n, c_in, h, h, device=dev).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(c_out, c_in, k, k, device=dev), torch.randn(c_out, device=dev)
        y = conv2d_forward_tma(x, w, b, padding=pad, activation="relu", config=config)
        ref = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=pad))
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    assert box(16, 16, 128) == (1, 8) and box(8, 8, 128) == (2, 8) and box(6, 6, 32) is None
    with pytest.raises(ValueError, match="whole number"):
        conv2d_forward_tma(torch.randn(1, 16, 6, 6, device=dev).contiguous(memory_format=torch.channels_last),
                           torch.randn(16, 16, 3, 3, device=dev), padding=1, config=(32, 16, 16, 4, 1))
