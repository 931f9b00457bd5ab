#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Quick start: train a tiny DiffewS on the built-in synthetic benchmark on the CPU, then score it
against two trivial baselines on held-out classes and save a picture of predictions.

  python tools/quickstart.py [--output output/quickstart] [--fresh] [--device cpu] [KEY VALUE ...]
  python tools/quickstart.py --model sine [--sine-opts KEY VALUE ...] [KEY VALUE ...]  # + SINE

--model sine also trains a tiny SINE (configs/quick_schedules/sine_tiny_synthetic_cpu.yaml, its
overrides after --sine-opts, given before the DiffewS overrides) and scores it beside DiffewS
and the baselines on the same episodes.

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
    p.add_argument(
        "--fresh", action="store_true", help="retrain instead of resuming a finished run"
    )
    p.add_argument("--model", choices=("diffews", "sine"), default="diffews",
                   help="sine: train a tiny SINE too and score it beside DiffewS (default diffews)")
    p.add_argument("--sine-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="config overrides of the SINE quick start's config")
    return p


def run(args) -> int:
    setup_logger(name="diffews")
    quickstart(args.output or DEFAULT_OUTPUT, fresh=args.fresh, opts=config_overrides(args),
               device=args.device, model=args.model, sine_opts=args.sine_opts)
    return 0


def cli(argv=None) -> int:
    """The command line: parse, run; one ``error:`` line and exit status 1/2 on failure."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if "--sine-opts" in config_overrides(args):
        parser.error("--sine-opts must come before the trailing KEY VALUE overrides")
    return run_cli(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
