"""``tritonnet eval CHECKPOINT``: the test accuracy of a checkpoint written by ``tritonnet train``,
on the data set recorded in its JSON sidecar (or ``--dataset``), evaluated under ``no_grad``."""
from __future__ import annotations

import sys

from . import runtime
from .train import EVAL_BATCH_SIZE, evaluate, load_checkpoint, load_data


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a .safetensors file written by `tritonnet train` (with its .json sidecar)")
    parser.add_argument("--dataset", default=None, help="evaluate on this data set instead of the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help=f"default {EVAL_BATCH_SIZE}")


def main(args) -> int:
    print(runtime.describe(), file=sys.stderr)
    model, config, sidecar, _ = load_checkpoint(args.checkpoint)
    if args.dataset is not None:
        config.dataset = args.dataset
    dataset = load_data(config)
    device = runtime.device()
    accuracy, loss = evaluate(model, dataset.test_images.to(device), dataset.test_labels.to(device),
                              batch_size=args.batch_size, channels_last=bool(config.channels_last))
    n = len(dataset.test_labels)
    epochs = sidecar.get("epoch", "?")
    print(f"{args.checkpoint}: {config.model} after {epochs} epoch{'' if epochs == 1 else 's'} on {config.dataset}")
    print(f"test accuracy: {accuracy * 100:.2f}% ({round(accuracy * n)}/{n}), test loss {loss:.4f}")
    return 0
