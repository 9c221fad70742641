"""Training benchmark: what `tritonnet train` costs, side by side with torch on the same net.

1. Memory: bytes held for backward after the forward pass of one training step, as the tape
   reports them, versus what torch autograd saves for the same net, weights and batch (measured
   with ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by storage). Target <= 0.6x.
2. Steps: one training step (forward, cross-entropy, backward, Adam update) of `tritonnet train`'s
   default net (digits_cnn at its default batch size) and of LeNet-5 (batch 256, 28x28), in images/s, against
   torch eager and torch.compile (a failure to compile is recorded, not fatal). The floor is the
   step's minimum bytes over measured copy bandwidth or its FLOPs over the measured fp32 matmul
   peak, whichever is larger, summed from every launch's analytic LaunchInfo.
3. Epoch: one real epoch of `tritonnet train`'s defaults on the digits set (the training loop
   itself, batch order and all) against the same loop in torch eager.

Usage: python3 benchmarks/bench_train.py --out DIR [--quick]
Under Triton's interpreter it runs a tiny smoke version and says that its timings mean nothing.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tritonnet  # noqa: E402,F401  (chooses GPU or interpreter before triton is imported)
from tritonnet import bench, data, models, runtime, train  # noqa: E402


def sync():
    if not runtime.INTERPRETED:
        torch.cuda.synchronize()


def make_batches(model_name, batch, count, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = models.INPUT_SHAPES[model_name]
    return [(torch.randn(batch, *shape, generator=g).to(runtime.device()),
             torch.randint(0, 10, (batch,), generator=g).to(runtime.device())) for _ in range(count)]


def step_functions(model_name, lr, with_compile=True):
    """tritonnet's and torch's training step on the same initial weights, and a compiled torch one."""
    torch.manual_seed(0)
    model = models.create(model_name)
    config = train.TrainConfig(model=model_name, lr=lr).resolved()
    optimizer = train.make_optimizer(config, model.parameters())

    def twin_and_optimizer():
        twin = models.create_torch(model_name).to(runtime.device())
        twin.load_state_dict(model.state_dict())
        return twin, torch.optim.Adam(twin.parameters(), lr=lr)

    def torch_step_of(net, opt):
        def step(x, y):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step

    twin, torch_opt = twin_and_optimizer()
    twin2, torch_opt2 = twin_and_optimizer()
    steps = {
        "tritonnet": lambda x, y: train.train_step(model, optimizer, x, y)[0],
        "torch": torch_step_of(twin, torch_opt),
    }
    if with_compile:
        try:
            steps["torch.compile"] = torch_step_of(torch.compile(twin2), torch_opt2)
        except Exception as exc:  # noqa: BLE001  (recorded in the results)
            steps["torch.compile"] = exc
    return steps


def launch_totals(fn, args):
    """Launch count, analytic FLOPs and minimum bytes of one call of ``fn``, from LaunchInfo."""
    totals = {"launches": 0, "flops": 0, "bytes": 0}

    def observe(kernel, grid, a, constexprs, info, run):
        totals["launches"] += 1
        if info is not None:
            totals["flops"] += int(info.flops or 0)
            totals["bytes"] += int(info.bytes or 0)
        return run()

    with runtime.observing(observe):
        fn(*args)
    sync()
    return totals


def bench_steps(model_name, batch, quick, peaks, with_compile=True):
    lr = train.TrainConfig(model=model_name).resolved().lr
    batches = make_batches(model_name, batch, 2 if quick or runtime.INTERPRETED else 4)
    row = {"model": model_name, "batch": batch, "optimizer": f"adam lr {lr}", "results": {}}
    steps = step_functions(model_name, lr, with_compile)
    for impl, fn in steps.items():
        if isinstance(fn, Exception):
            row["results"][impl] = {"error": f"{type(fn).__name__}: {str(fn)[:300]}"}
            continue
        try:
            fn(*batches[0])  # compile / first launch outside the timing
            sync()
            t = bench.time_op(fn, batches, warmup_ms=25 if quick else 100, rep_ms=100 if quick else 400)
            row["results"][impl] = dict(t, images_per_s=batch / (t["p50"] * 1e-3))
        except Exception as exc:  # noqa: BLE001
            row["results"][impl] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    totals = launch_totals(steps["tritonnet"], batches[0])
    floor_ms = max(totals["bytes"] / (peaks["bandwidth_gbs"] * 1e9),
                   totals["flops"] / (peaks["fp32_tflops"] * 1e12)) * 1e3
    row.update(totals, floor_ms=floor_ms)
    ours = row["results"].get("tritonnet", {})
    if "p50" in ours:
        row["pct_of_floor"] = 100 * floor_ms / ours["p50"]
        for other in ("torch", "torch.compile"):
            if "p50" in row["results"].get(other, {}):
                row[f"time_ratio_vs_{other}"] = ours["p50"] / row["results"][other]["p50"]
    return row


def bench_epoch(quick):
    """One epoch of `tritonnet train`'s default configuration, tritonnet's loop (CUDA-graphed, as
    `tritonnet train` runs on a GPU, and eager) vs torch's."""
    config = train.TrainConfig().resolved()
    ds = data.load_digits()
    if runtime.INTERPRETED:  # smoke: two small batches
        config.batch_size = 8
        ds.train_images, ds.train_labels = ds.train_images[:16], ds.train_labels[:16]
        ds.test_images, ds.test_labels = ds.test_images[:8], ds.test_labels[:8]
    config.epochs = 2
    torch.manual_seed(config.seed)
    model = models.create(config.model)
    optimizer = train.make_optimizer(config, model.parameters())
    twin = models.create_torch(config.model).to(runtime.device())
    twin.load_state_dict(model.state_dict())
    records = train.fit(model, optimizer, ds, config, progress=False)  # epoch 1 compiles the kernels
    eager_records = records
    if config.cuda_graph:  # the same loop launching every kernel from Python
        torch.manual_seed(config.seed)
        eager_model = models.create(config.model)
        eager_config = train.TrainConfig(**{**vars(config), "cuda_graph": False, "history": []})
        eager_records = train.fit(eager_model, train.make_optimizer(config, eager_model.parameters()), ds,
                                  eager_config, progress=False)

    torch_opt = torch.optim.Adam(twin.parameters(), lr=config.lr)
    x_all, y_all = ds.train_images.to(runtime.device()), ds.train_labels.to(runtime.device())
    seconds = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device())
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device())
    for epoch in range(config.epochs):
        sync()
        start = time.perf_counter()
        for x, y in data.batches(x_all, y_all, config.batch_size, seed=config.seed, epoch=epoch):
            logits = twin(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            torch_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch_opt.step()
            # The tritonnet loop sums losses and correct predictions on the device, reading them at
            # most twice a second; this keeps the same per-step work without any read.
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
        sync()
        seconds.append(time.perf_counter() - start)
    n = len(y_all)
    return {"model": config.model, "batch": config.batch_size, "images": n,
            "tritonnet_images_per_s": records[-1]["images_per_second"],
            "tritonnet_graphed_steps": records[-1]["graphed_steps"],
            "tritonnet_eager_images_per_s": eager_records[-1]["images_per_second"],
            "torch_images_per_s": n / seconds[-1],
            "tritonnet_test_accuracy_after_2_epochs": records[-1]["test_accuracy"]}


def main(argv=None) -> int:
    parser = bench.script_parser(__doc__, "train", "fewer repetitions")
    parser.add_argument("--budget-s", type=float, default=90.0,
                        help="skip the remaining parts once this many seconds have passed (default 90)")
    parser.add_argument("--parts", default="memory,steps,epoch",
                        help="which of memory, steps, epoch to run (comma-separated; default all three)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"memory", "steps", "epoch"}:
        parser.error(f"--parts takes memory, steps and epoch, got {args.parts!r}")
    started = time.perf_counter()

    def over_budget(part):
        if time.perf_counter() - started < args.budget_s:
            return False
        results.setdefault("skipped", []).append(part)
        print(f"bench_train: over the {args.budget_s:.0f} s budget, skipping {part}")
        return True

    interpreted = bench.announce_mode("train")
    # Both sides in IEEE fp32: tritonnet's default precision, and torch without cuDNN's default TF32.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    results = {"environment": bench.environment(), "precision": "fp32 (IEEE) on both sides", "memory": [],
               "steps": []}

    memory_cases = [("lenet5", 16), ("digits_cnn", 8)] if interpreted else \
        [("lenet5", 64), ("lenet5", 256), ("digits_cnn", train.DEFAULT_BATCH_SIZE), ("cifar_cnn", 128)]
    for name, batch in memory_cases if "memory" in parts else ():
        report = train.saved_for_backward(name, batch)
        results["memory"].append(report)
        print(f"saved for backward, {name} batch {batch}: tritonnet {report['tritonnet_saved_bytes'] / 1e6:.3f} MB, "
              f"torch autograd {report['torch_saved_bytes'] / 1e6:.3f} MB, ratio {report['ratio']:.3f} "
              f"({'meets' if report['ratio'] <= 0.6 else 'MISSES'} the <= 0.6x target)")

    peaks = {"bandwidth_gbs": bench.copy_bandwidth_gbs(), "fp32_tflops": bench.matmul_peak_tflops(torch.float32)}
    results["peaks"] = peaks
    step_cases = [("digits_cnn", 8)] if interpreted else [("digits_cnn", train.DEFAULT_BATCH_SIZE), ("lenet5", 256)]
    step_cases = step_cases if "steps" in parts else []
    for i, (name, batch) in enumerate(step_cases):
        if over_budget(f"train step {name}"):
            continue
        # torch.compile of a whole training step takes tens of seconds: only for `tritonnet train`'s net
        row = bench_steps(name, batch, args.quick, peaks, with_compile=(i == 0))
        results["steps"].append(row)
        parts = [f"{impl} " + (f"{r['p50']:.3f} ms ({r['images_per_s']:.0f} img/s)" if "p50" in r else r["error"][:80])
                 for impl, r in row["results"].items()]
        print(f"train step {name} batch {batch}: " + "; ".join(parts))
        print(f"  {row['launches']} launches, floor {row['floor_ms']:.4f} ms"
              + (f" ({row['pct_of_floor']:.1f}% of floor)" if "pct_of_floor" in row else "")
              + (f", {row['time_ratio_vs_torch']:.2f}x torch eager's time" if "time_ratio_vs_torch" in row else ""))

    if "epoch" in parts and not over_budget("epoch"):
        epoch = bench_epoch(args.quick)
        results["epoch"] = epoch
        print(f"tritonnet train defaults ({epoch['model']}, batch {epoch['batch']}), second epoch: tritonnet "
              f"{epoch['tritonnet_images_per_s']:.0f} img/s ({epoch['tritonnet_graphed_steps']} steps graphed; eager "
              f"{epoch['tritonnet_eager_images_per_s']:.0f} img/s), torch eager {epoch['torch_images_per_s']:.0f} img/s")
    results["seconds"] = time.perf_counter() - started
    path = os.path.join(args.out, "bench_train.json")
    bench.write_json(path, results)
    print(f"wrote {path}" + (" (interpreter: timings mean nothing)" if interpreted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
