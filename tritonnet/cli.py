"""The ``tritonnet`` command. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``main(args) -> int``; this file only dispatches."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "train": ("tritonnet.train", "train a small CNN (default: digits, built in) and save a checkpoint"),
    "eval": ("tritonnet.evaluate", "report the test accuracy of a checkpoint written by `tritonnet train`"),
    "bench": ("tritonnet.bench", "time ops and training steps against torch eager (cuDNN) and torch.compile"),
    "profile": ("tritonnet.profile", "profile every kernel launch of a few training steps (table, trace, CSV)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tritonnet", description="CNNs made of hand-written Triton kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
