#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Quick start: train a tiny DiffewS on the built-in synthetic benchmark on the CPU, then score it
against two trivial baselines on held-out classes and save a picture of predictions.

  python tools/quickstart.py [--output output/quickstart] [--fresh] [--device cpu] [KEY VALUE ...]

Config overrides (trailing KEY VALUE pairs or --opts) apply to
configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml, e.g. SOLVER.MAX_ITER 20 for a smoke run.
Errors are one line (exit status 2: command line or config, 1: files); --debug shows the
traceback.
"""

import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import config_overrides, entry_parser, run_cli
from diffews.quickstart import quickstart

from detectron2.utils.logger import setup_logger

DEFAULT_OUTPUT = "output/quickstart"


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], config="",
                     output="optional", device=True,
                     output_help=f"where everything is written (default {DEFAULT_OUTPUT})")
    p.add_argument("--fresh", action="store_true", help="retrain instead of resuming a finished run")
    return p


def run(args) -> int:
    setup_logger(name="diffews")
    quickstart(args.output or DEFAULT_OUTPUT, fresh=args.fresh, opts=config_overrides(args),
               device=args.device)
    return 0


def cli(argv=None) -> int:
    """The command line: parse, run; one ``error:`` line and exit status 1/2 on failure."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
