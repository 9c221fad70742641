"""One page from a GPU check's output folder: what a session needs first when its device time is
running out. The issues' targets (bench_conv.json, bench.json), the profiled VGG steps' slowest
kernels and whether any launch found the GPU idle, the conv sweep's decisions (the best pixel
split per packed wgrad, TF32's tensor-core tiles against the FMA variant), the pool-fused conv
against the two kernels it replaces, `tritonnet train`'s loop graphed and eager, the linear rows,
and the host's time per launch with and without Triton's launch path.

Usage: python3 benchmarks/gpu_summary.py OUT_DIR   (writes OUT_DIR/report.md and prints it)
Reads only what is there: a missing or cut-short file is a line saying so, never an error.
No GPU needed: run it on the copied results as well.
"""
from __future__ import annotations

import csv
import json
import os
import sys


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        return {"_missing": f"{os.path.basename(path)}: {type(exc).__name__}"}


def _ratio(v):
    return "–" if v is None else f"{v:.2f}x"


def _ms(v):
    return "–" if v is None else f"{v:.4f} ms"


def _conv_target(t) -> str:
    return (f"{t['target']}: min {_ratio(t.get('min_ratio'))} ({'met' if t.get('met') else 'missed'}; all: "
            + ", ".join(_ratio(r) for r in t.get("ratios", [])) + ")")


def _step_target(t) -> str:
    return (f"{t['model']} {t['dtype']} step {_ratio(t.get('x_vs_torch'))} torch eager (need "
            f"{t['required_x_vs_torch']:.1f}x: {'met' if t.get('met') else 'missed'}), "
            f"{_ratio(t.get('x_vs_compile'))} torch.compile")


def targets(out) -> list[str]:
    lines = ["## Targets", ""]
    results = {}
    for issue, name, describe in (("issue 3", "bench_conv.json", _conv_target), ("issue 5", "bench.json", _step_target)):
        data = results[name] = _load(os.path.join(out, name))
        if "_missing" in data:
            lines.append(f"- {issue}: {data['_missing']}")
        lines += [f"- {issue}: {describe(t)}" for t in data.get("targets", [])]
    for row in results["bench.json"].get("rows", []):
        if row.get("kind") != "step":
            continue
        ours = row.get("impls", {}).get("tritonnet") or {}
        graph = row.get("impls", {}).get("tritonnet+graph") or {}
        if "kernel_sum_ms" in ours:
            lines.append(f"  - {row['model']} {row['dtype']}: graphed {graph.get('wall_ms', float('nan')):.3f} ms, "
                         f"eager {ours.get('wall_ms', float('nan')):.3f} ms, in kernels {ours['kernel_sum_ms']:.3f} ms "
                         f"({ours.get('kernel_idle_launches', '?')} of {ours.get('launches', '?')} launches "
                         "found the GPU idle)")
        layouts = [f"{label} {(row['impls'].get(impl) or {}).get('wall_ms', float('nan')):.3f} ms"
                   for impl, label in (("tritonnet+graph NCHW", "tritonnet NCHW graphed"),
                                       ("torch channels_last", "torch eager channels-last"))
                   if impl in row.get("impls", {})]
        if layouts:  # the channels-last default decided without a timing: this is the timing
            lines.append(f"    - layouts ({'channels-last' if row.get('tritonnet_channels_last') else 'NCHW'} "
                         f"is tritonnet's default here): " + ", ".join(layouts))
    return lines + [""]


def profiles(out, top: int = 8) -> list[str]:
    lines = ["## Profiled steps (slowest kernels)", ""]
    names = sorted(f for f in os.listdir(out) if f.startswith("profile_") and f.endswith(".csv")) \
        if os.path.isdir(out) else []
    if not names:
        lines.append("- no profile CSV")
    for name in names:
        with open(os.path.join(out, name)) as f:
            rows = list(csv.DictReader(f))
        count = sum(int(r["count"]) for r in rows)
        total = sum(float(r["total_ms"]) for r in rows)
        idle = (f"{sum(int(r['gpu_idle'] or 0) for r in rows)} found the GPU idle" if rows and "gpu_idle" in rows[0]
                else "idle launches not recorded (a profile from before the head start: times include launch gaps)")
        lines.append(f"- {name[:-4]}: {count} launches, {total:.3f} ms in kernels, {idle}")
        for r in rows[:top]:
            pct = r.get("roofline_pct")
            lines.append(f"  - {r['op']} ({r['kernel']}, {r['shapes']}, grid {r['grid']}): {float(r['total_ms']):.3f} ms "
                         f"x{r['count']}" + (f", {float(pct):.0f}% of roofline" if pct not in (None, "", "None") else ""))
    return lines + [""]


OURS = ("tritonnet", "prototype", "direct", "packed GEMM")  # conv_sweep's rows of our kernels (the rest: cuDNN,
# cuBLAS, staging)


def sweep(out) -> list[str]:
    lines = ["## Conv sweep decisions", ""]
    data = _load(os.path.join(out, "conv_sweep.json"))
    if "_missing" in data:
        return lines + [f"- {data['_missing']}", ""]
    rows = [r for r in data.get("rows", []) if "ms" in r]
    if not any(r.get("done") for r in data.get("rows", [])):
        lines.append("- the sweep did not finish (budget or limit): later phases are missing")
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        theirs = ", ".join(f"{r['what']} {r['ms']:.4f}" for r in mine if not r["what"].startswith(OURS))
        lines.append(f"- {layer}: {theirs or 'no reference row'} (ms)")
        splits = [r for r in mine if "split_k=" in r["what"]]
        if splits:
            best = min(splits, key=lambda r: r["ms"])
            default = next((r for r in splits if "split_k=None" in r["what"]), None)
            lines.append(f"  - wgrad splits: default {default['ms'] if default else '–'} ms, best {best['ms']} ms "
                         f"({best['what']})")
        ours = [r for r in mine if r["what"].startswith(OURS) and "split_k=" not in r["what"]]
        for r in sorted(ours, key=lambda r: r["ms"])[:3]:
            lines.append(f"  - {r['what']}: {r['ms']:.4f} ms")
    return lines + [""]


def linear(out) -> list[str]:
    data = _load(os.path.join(out, "bench.json"))
    lines = ["## Linear and cross-entropy ops (bench)", ""]
    for row in data.get("rows", []):
        if row.get("kind") == "op" and row["name"].split()[0] in ("linear", "cross_entropy"):
            impls = row.get("impls", {})
            ours, theirs = (impls.get("tritonnet") or {}).get("p50"), (impls.get("torch") or {}).get("p50")
            lines.append(f"- {row['name']} {row['dtype']}: tritonnet {_ms(ours)}, torch {_ms(theirs)}, "
                         f"{_ratio(row.get('x_vs_torch'))}")
    return lines + [""]


def fusion(out) -> list[str]:
    """The pool-fused conv forward against the two kernels it replaces (the bench's conv output,
    512x64x16x16, is its max-pool row's input): the switch is layers.Sequential.fuse_conv_pool."""
    data = _load(os.path.join(out, "bench.json"))
    lines = ["## Conv + ReLU + 2x2 max pool in one kernel (bench ops)", ""]
    rows = {(r["name"], r["dtype"]): (r.get("impls", {}).get("tritonnet") or {}).get("p50")
            for r in data.get("rows", []) if r.get("kind") == "op"}
    for dtype in ("fp32", "tf32", "bf16"):
        fused = rows.get(("conv2d fwd +bias+relu+maxpool2", dtype))
        conv, pool = rows.get(("conv2d fwd +bias+relu", dtype)), rows.get(("max_pool2d fwd", dtype))
        if fused is None:
            continue
        apart = conv + pool if conv is not None and pool is not None else None
        lines.append(f"- {dtype}: fused {_ms(fused)}, conv {_ms(conv)} + pool {_ms(pool)} = {_ms(apart)}"
                     + (f" ({apart / fused:.2f}x)" if apart else ""))
    return lines + ([] if len(lines) > 2 else ["- no fused row in bench.json"]) + [""]


def training_loop(out) -> list[str]:
    """`tritonnet train`'s own loop (train_epoch stage): CUDA-graphed, eager, torch eager."""
    data = _load(os.path.join(out, "train_epoch", "bench_train.json"))
    lines = ["## `tritonnet train` loop, second epoch (train_epoch)", ""]
    epoch = data.get("epoch")
    if not epoch:
        return lines + [f"- {data.get('_missing') or 'no epoch in bench_train.json'}", ""]
    ours, eager, theirs = (epoch.get(k) for k in ("tritonnet_images_per_s", "tritonnet_eager_images_per_s",
                                                   "torch_images_per_s"))
    lines.append(f"- {epoch['model']} batch {epoch['batch']}: graphed {ours:.0f} img/s "
                 f"({epoch.get('tritonnet_graphed_steps')} steps replayed), eager {eager:.0f} img/s, "
                 f"torch eager {theirs:.0f} img/s ({ours / theirs:.2f}x)")
    return lines + [""]


def host(out) -> list[str]:
    lines = ["## Host time per launch (LeNet step ops)", ""]
    stub = _load(os.path.join(out, "host_stub", "host_overhead.json"))
    real = _load(os.path.join(out, "host_real", "host_overhead.json"))
    if "_missing" in stub or "_missing" in real:
        return lines + [f"- {stub.get('_missing') or real.get('_missing')}", ""]
    real_rows = {r["op"]: r for r in real.get("rows", [])}
    for r in stub.get("rows", []):
        other = real_rows.get(r["op"])
        if other:
            lines.append(f"- {r['op']}: ours {r['us_per_call']:.1f} us, with Triton's launch {other['us_per_call']:.1f} us "
                         f"({r.get('launches')} launches)")
    return lines + [""]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[-2])
        return 2
    out = args[0]
    lines = [f"# GPU check report: {out}", ""]
    for section in (targets, profiles, sweep, fusion, training_loop, linear, host):
        try:
            lines += section(out)
        except Exception as exc:  # a report with a hole beats no report
            lines += [f"- {section.__name__}: {type(exc).__name__}: {exc}", ""]
    text = "\n".join(lines)
    try:
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(text)
    except OSError:
        pass
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
