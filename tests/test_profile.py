"""The profiler: what it records per launch, how it aggregates, its FLOP/byte models against hand
counts, its roofline arithmetic, the peaks cache, the trace/CSV files, and that it costs nothing off."""
import csv
import importlib
import json
import math

import pytest
import torch

import tritonnet as tn
import tritonnet.functional as F
from tritonnet import runtime
from tritonnet.kernels.elementwise import add
from tritonnet.profile import Profiler, device_peaks, roofline_ms

profile_module = importlib.import_module("tritonnet.profile")

PEAKS = {"copy_gbs": 1000.0, "matmul_tflops": {"fp32": 50.0, "tf32": 400.0, "fp16": 800.0, "bf16": 800.0}}


def _only(prof, op):
    rows = [r for r in prof.summary() if r["op"] == op]
    assert len(rows) == 1, [r["op"] for r in prof.summary()]
    return rows[0]


def test_records_names_and_aggregates_repeated_launches(seed, device):
    a, b = torch.randn(300, device=device), torch.randn(300, device=device)
    c = torch.randn(7, 5, device=device)
    with tn.profile() as prof:
        for _ in range(3):
            add(a, b)
        add(c, c)
    assert len(prof.launches) == 4
    assert all(launch.ms > 0 for launch in prof.launches)
    rows = prof.summary()
    assert [(r["kernel"], r["op"], r["count"]) for r in rows if r["shapes"] == ((300,),)] == [("add_kernel", "add", 3)]
    small = [r for r in rows if r["shapes"] == ((7, 5),)]
    assert len(small) == 1 and small[0]["count"] == 1 and small[0]["dtype"] == "float32"
    big = [r for r in rows if r["count"] == 3][0]
    assert math.isclose(big["total_ms"], sum(launch.ms for launch in prof.launches[:3]))
    assert math.isclose(big["mean_ms"], big["total_ms"] / 3)
    assert big["flops"] == 300 and big["bytes"] == 3 * 300 * 4  # hand count: one add, two reads, one write
    assert rows == sorted(rows, key=lambda r: r["total_ms"], reverse=True)
    assert isinstance(big["grid"], tuple) and len(big["grid"]) == 1 and big["grid"][0] >= 1
    # labelled: the interpreter's wall clock is not GPU time
    assert prof.time_source.startswith("wall clock" if runtime.INTERPRETED else "CUDA events")
    assert prof.region_ms >= sum(launch.ms for launch in prof.launches)


def test_launches_sharing_a_key_sum_their_work():
    """A strided dgrad runs one launch per phase, same kernel and shapes, different FLOPs: the row
    must add them up, not keep the first."""
    def phase_kernel():
        pass

    with Profiler(peaks=None) as prof:
        for flops in (100, 300, 200):
            info = runtime.LaunchInfo("phase", ((4, 4),), torch.float32, flops=flops, bytes=flops * 2)
            prof._observe(phase_kernel, (1,), (), {}, info, lambda: None)  # as runtime.launch calls it
    (row,) = prof.summary()
    assert (row["kernel"], row["count"], row["total_flops"], row["total_bytes"]) == ("phase_kernel", 3, 600, 1200)
    assert row["flops"] == 200 and row["bytes"] == 400  # per launch


def test_flop_and_byte_models_match_hand_counts(seed, device):
    """Forward and backward of a conv (+bias+ReLU), a max pool, a linear layer and the pool-fused
    conv forward, counted by hand:
    FLOPs = 2 per multiply-add (+1 per output for a bias add or a ReLU); bytes = each tensor the
    launch must touch, read or written once."""
    def param(*shape):
        return tn.Tensor(torch.randn(*shape, device=device), requires_grad=True)

    N, C, H, W, K, OC = 2, 3, 7, 9, 3, 5
    x, w, b = param(N, C, H, W), param(OC, C, K, K), param(OC)
    pool_in = param(2, 3, 9, 10)  # row 8 lies in no 2x2 window
    lin_x, lin_w = param(5, 7), param(3, 7)
    with tn.profile(peaks=None) as prof:
        y = F.conv2d(x, w, b, padding=1, activation="relu")
        y.backward(torch.randn(y.shape, device=device))
        p = F.max_pool2d(pool_in, 2)
        p.backward(torch.randn(p.shape, device=device))
        z = F.linear(lin_x, lin_w)
        z.backward(torch.randn(z.shape, device=device))
    f4 = 4  # float32
    outputs = N * OC * H * W  # padding 1 keeps 7x9
    macs = outputs * C * K * K
    relu_mask = OC * -(-N * H * W // 8)  # the ReLU's gradient: one bit per output, whole bytes per channel
    conv = _only(prof, "conv2d_fwd_relu")
    assert conv["flops"] == 2 * macs + outputs + outputs  # taps, bias add, ReLU
    # read x, w, b once; write y and the ReLU's bit mask once
    assert conv["bytes"] == (x.numel() + w.numel() + OC + outputs) * f4 + relu_mask
    dgrad = _only(prof, "conv2d_dgrad_relu")
    assert dgrad["flops"] == 2 * macs
    # read dy, the bit mask and w; write dx
    assert dgrad["bytes"] == (outputs + w.numel() + x.numel()) * f4 + relu_mask
    wgrad = _only(prof, "conv2d_wgrad_relu")
    assert wgrad["flops"] == 2 * macs + outputs  # + the bias gradient's sum over every output
    assert wgrad["bytes"] == (outputs + x.numel() + w.numel() + OC) * f4 + relu_mask

    # dgrad of convs that change the size, one launch per stride phase: together 2 FLOPs per
    # multiply-add of the forward, and dy, w and dx moved once
    for stride, padding, (oh, ow) in ((1, 0, (5, 7)), (2, 1, (4, 5)), (3, 0, (2, 3))):
        with tn.profile(peaks=None) as strided:
            y = F.conv2d(x, w, stride=stride, padding=padding)
            y.backward(torch.randn(y.shape, device=device))
        dgrad = _only(strided, "conv2d_dgrad")
        assert dgrad["count"] == stride * stride
        assert dgrad["total_flops"] == 2 * N * oh * ow * OC * C * K * K, (stride, padding)
        assert dgrad["total_bytes"] == (N * OC * oh * ow + w.numel() + x.numel()) * f4, (stride, padding)
    assert (2 * N * 5 * 7 * OC * C * K * K, 2 * N * 4 * 5 * OC * C * K * K) == (18900, 10800)  # as counted by hand

    windows = 2 * 3 * 4 * 5
    pool = _only(prof, "max_pool2d_forward")
    assert pool["flops"] == windows * 4  # one comparison per element of each 2x2 window
    # read each covered input element once (rows 0-7), write the value and a one-byte winner
    # offset (its position inside the 2x2 window) per window
    assert pool["bytes"] == 2 * 3 * 8 * 10 * f4 + windows * f4 + windows * 1
    pool_bwd = _only(prof, "max_pool2d_backward")
    assert pool_bwd["flops"] == windows  # one gradient routed per window
    assert pool_bwd["bytes"] == windows * (f4 + 1) + pool_in.numel() * f4  # read dy + argmax, write all of dx

    # conv + ReLU + 2x2 pool in one launch: the 6x8 conv outputs the 3x4 windows cover are computed
    # (row 6 and column 8 of the 7x9 output are in none), then one comparison each; read x, w, b,
    # write the pooled values and their one-byte argmax, nothing of the conv's own output
    with tn.profile(peaks=None) as fused:
        F.conv2d_max_pool2d(x, w, b, padding=1, activation="relu")
    conv_pool = _only(fused, "conv2d_fwd_relu_maxpool")
    covered, pooled = N * OC * 6 * 8, N * OC * 3 * 4
    assert conv_pool["flops"] == 2 * covered * C * K * K + covered * 3  # taps, bias, ReLU, comparison
    assert conv_pool["bytes"] == (x.numel() + w.numel() + OC + pooled) * f4 + pooled

    linear = [r for r in prof.summary() if r["op"] == "linear"]
    assert sorted(r["count"] for r in linear) == [1, 1, 1]  # forward, input grad, weight grad
    assert all(r["flops"] == 2 * 5 * 3 * 7 for r in linear)
    forward = next(r for r in linear if r["shapes"][0] == (5, 7))
    assert forward["bytes"] == (5 * 7 + 3 * 7 + 5 * 3) * f4


def test_roofline_against_given_peaks(seed, device):
    a = torch.randn(1000, device=device)
    with Profiler(peaks=PEAKS) as prof:
        add(a, a)
    row = prof.summary()[0]
    floor = 3 * 1000 * 4 / (1000.0 * 1e9) * 1e3  # memory bound: bytes / copy bandwidth, in ms
    assert math.isclose(row["roofline_ms"], floor)
    assert math.isclose(row["roofline_pct"], 100 * floor / row["mean_ms"])
    assert math.isclose(row["gbs"], 12000 / (row["mean_ms"] * 1e-3) / 1e9)
    # compute bound: FLOPs / the matmul peak of the dtype and precision in force
    assert math.isclose(roofline_ms(1e12, 1, torch.float32, "highest", PEAKS), 1e3 / 50)
    assert math.isclose(roofline_ms(1e12, 1, torch.float32, "high", PEAKS), 1e3 / 400)
    assert math.isclose(roofline_ms(1e12, 1, torch.bfloat16, "highest", PEAKS), 1e3 / 800)
    assert roofline_ms(1e12, 1, torch.float32, "highest", None) is None


def test_peaks_are_measured_once_per_device_and_cached(tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("tritonnet.profile")  # tn.profile is the function; this is the module
    if runtime.INTERPRETED:
        assert device_peaks() is None  # no roofline for a CPU interpreting Triton
    calls = []
    monkeypatch.setenv("TRITONNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(module, "device_name", lambda: "Fake GPU 80GB")
    monkeypatch.setattr(module, "measure_peaks", lambda: calls.append(1) or dict(PEAKS))
    assert module.device_peaks() == PEAKS and module.device_peaks() == PEAKS
    assert len(calls) == 1
    cached = json.loads((tmp_path / "peaks.json").read_text())
    assert cached["Fake GPU 80GB"]["copy_gbs"] == 1000.0
    module.device_peaks(refresh=True)
    assert len(calls) == 2


def test_trace_csv_and_table_files(seed, device, tmp_path):
    a = torch.randn(64, device=device)
    with tn.profile(out=str(tmp_path), name="unit") as prof:
        add(a, a)
        add(a, a)
    trace = json.loads((tmp_path / "unit_trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 0]  # the device track
    assert len(events) == 2
    for e in events:
        assert e["name"] == "add_kernel" and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float)) and e["dur"] > 0
    assert events[1]["ts"] >= events[0]["ts"] + events[0]["dur"] - 1e-6  # microseconds, in launch order
    assert all(e["ph"] in ("X", "M") for e in trace["traceEvents"])
    with open(tmp_path / "unit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["kernel"] == "add_kernel" and rows[0]["count"] == "2"
    assert rows[0]["time_source"] == prof.time_source
    table = (tmp_path / "unit.txt").read_text()
    assert "add_kernel" in table and prof.time_source.split()[0] in table
    assert len(prof.launches) == 2


def test_profiling_off_adds_no_observer_and_launch_is_direct(monkeypatch):
    before = list(runtime._OBSERVERS)
    prof = tn.profile()
    assert runtime._OBSERVERS == before  # creating one installs nothing
    with prof:
        assert len(runtime._OBSERVERS) == len(before) + 1
    assert runtime._OBSERVERS == before
    with pytest.raises(ValueError):
        with tn.profile():
            raise ValueError("boom")
    assert runtime._OBSERVERS == before  # removed on errors too

    calls = []

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((grid, args, kw)) or "ran"

    monkeypatch.setattr(runtime, "_OBSERVERS", [])  # the hot path as a user runs it
    assert runtime.launch(FakeKernel(), (1,), (2, 3), {"BLOCK": 4}) == "ran"
    assert calls == [((1,), (2, 3), {"BLOCK": 4})]


def test_profile_command_on_a_training_step(tmp_path, capsys):
    from tritonnet.cli import main

    assert main(["profile", "--model", "digits", "--batch-size", "2", "--steps", "2", "--warmup", "0",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("wall clock" if runtime.INTERPRETED else "CUDA events") in out and "launches per step" in out
    traces = list(tmp_path.glob("*trace*.json"))
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    # pid 0 is the device track; on a GPU a second track (pid 1) holds the host-side launch calls.
    device_events = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 0]
    names = {e["name"] for e in device_events}
    ops = {e["args"]["op"] for e in device_events}
    if not runtime.INTERPRETED:
        host_events = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 1]
        assert len(host_events) == len(device_events)
    assert any("conv" in op for op in ops) and any("pool" in op for op in ops)
    assert any("cross_entropy" in op for op in ops) and any("sgd" in op for op in ops)
    assert len(names) >= 5
    with open(next(tmp_path.glob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert all(int(r["count"]) % 2 == 0 for r in rows)  # two identical steps: every row seen twice


def test_gpu_path_reads_events_back_once_after_the_region(seed, device, monkeypatch):
    """The CUDA-event path, with events faked so it runs anywhere: per launch two events are
    recorded and nothing waits on the device; one synchronisation at the end reads them all."""
    log = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = len(log)  # a fake clock: one tick per call the profiler makes
            log.append("record")

        def synchronize(self):
            log.append("sync")

        def query(self):  # has the fake GPU reached this event? (the launches' start events only)
            log.append("query")
            return gpu_reached.pop(0)

        def elapsed_time(self, other):
            log.append("read")
            return float(other.t - self.t)

    gpu_reached = [False, True, False]  # the second launch's start event fired before it was queued
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(("sleep", cycles)), raising=False)
    monkeypatch.setattr(profile_module, "_sleep_cycles_per_ms", lambda: 1000.0)
    a = torch.randn(100, device=device)
    with Profiler(peaks=PEAKS, head_start_ms=2.5) as prof:
        # the head start is queued before the region's first event
        assert log[:2] == [("sleep", 2500), "record"]
        for _ in range(3):
            add(a, a)
        assert "sync" not in log and "read" not in log  # inside the region: only records and queries
    assert log.count("sync") == 1 and log.index("sync") > max(i for i, e in enumerate(log) if e == "record")
    assert log.count("query") == 3 and not gpu_reached
    assert prof.time_source == "CUDA events" and len(prof.launches) == 3
    assert all(launch.ms == 2.0 for launch in prof.launches)  # start, query, end: two ticks apart
    assert [launch.gpu_idle for launch in prof.launches] == [False, True, False]
    (row,) = prof.summary()
    assert row["count"] == 3 and row["total_ms"] == 6.0 and row["roofline_pct"] is not None
    assert row["gpu_idle"] == 1 and prof.idle_launches == 1
    assert "1 launches found the GPU idle" in prof.table().title
    events = [e for e in prof.trace()["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in events} == {0, 1}  # the device track and the host's launch calls
    assert [e["args"]["gpu_idle"] for e in events if e["pid"] == 0] == [False, True, False]
    assert prof.trace()["otherData"]["device"] == "Fake GPU"
    assert prof.trace()["otherData"]["idle_launches"] == 1


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "5", True])
def test_head_start_must_be_a_finite_nonnegative_number(bad):
    with pytest.raises(ValueError, match="head_start_ms"):
        Profiler(peaks=None, head_start_ms=bad)


@pytest.mark.skipif(runtime.INTERPRETED, reason="real CUDA events: the GPU check's test stage runs it")
def test_head_start_keeps_host_gaps_out_of_kernel_times(device):
    """On a GPU: launches with the host pausing 2 ms between them find the GPU idle, and their
    event pairs would time the launch calls; behind a head start longer than the region, none
    does and each launch times its kernel alone (an add of 1000 elements: microseconds)."""
    import time as _time

    a = torch.randn(1000, device=device)
    add(a, a)
    torch.cuda.synchronize()

    def region():
        for _ in range(5):
            _time.sleep(0.002)
            add(a, a)

    with Profiler(peaks=None) as bare:
        region()
    assert bare.idle_launches >= 3  # (an event can lag its record by a few microseconds)
    with Profiler(peaks=None, head_start_ms=100.0) as queued:
        region()
    assert queued.idle_launches == 0
    assert all(launch.ms < 1.0 for launch in queued.launches)
    assert queued.region_ms < 20.0  # the kernels and events, not the 10 ms the host spent pausing
