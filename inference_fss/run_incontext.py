#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Evaluate one set of in-context weights on every fold of COCO-20i, PASCAL-5i, FSS-1000 and
LVIS-92i, 1- and 5-shot, and print the whole table beside the paper's in-context numbers.

    python inference_fss/run_incontext.py \
        --config-file configs/incontext/diffews_sd21_incontext.yaml \
        --output output/incontext MODEL.WEIGHTS weight/incontext

Each (benchmark, shot) is one ``inference_fss/run_fss.py`` run (``--fold all``), written to
``<output>/<benchmark>_<K>shot/results.json``; the table (mean mIoU and FB-IoU over folds) goes
to the log and to ``<output>/incontext_results.json``. Same options as run_fss.py:
``--num-episodes N`` for a quick check, ``--num-gpus``, trailing ``KEY VALUE`` overrides.
"""

import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import (add_list_argument, check_counts, entry_parser, launch_cli,
                         load_entry_config, parse_list)
from diffews.cli.preflight import check_output_dir, preflight
from diffews.config import fold_weights
from diffews.data.episodes import BENCHMARK_FOLDS
from diffews.tasks.fss import BENCHMARKS, NAMES, run_incontext

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

DEFAULT_OUTPUT = "output/incontext"
FLAGS = {"batch_size": "TEST.FSS.BATCH_SIZE", "num_episodes": "TEST.FSS.NUM_EPISODES"}


def get_parser():
    p = entry_parser(
        "DiffewS in-context weights on every benchmark", epilog=__doc__.split("\n\n", 1)[1],
        dataset_root=True, output="optional", device=True, distributed=True,
        output_help=f"results folder (default {DEFAULT_OUTPUT}); one sub-folder per run",
        batch_size="episodes per model call (default: the config's TEST.FSS.BATCH_SIZE)")
    add_list_argument(p, "--benchmarks", default=",".join(BENCHMARKS),
                      help=f"from {sorted(NAMES)} (default: the four benchmarks)")
    add_list_argument(p, "--shots", default="1,5", help="supports per episode (default 1,5)")
    p.add_argument("--num-episodes", type=int, default=None, help="0 = protocol count")
    return p


def parse_args(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    args.benchmarks = parse_list(args.benchmarks, str, "--benchmarks")
    bad = [b for b in args.benchmarks if b not in NAMES]
    if bad or not args.benchmarks:
        p.error(f"--benchmarks: {bad or 'none'} not in {sorted(NAMES)}")
    try:
        args.shots = parse_list(args.shots, int, "--shots")
    except ValueError as e:
        p.error(str(e))
    if not args.shots or min(args.shots) < 1:
        p.error("--shots: at least one shot, each >= 1")
    check_counts(p, args, {"num_gpus": 1, "batch_size": 1, "num_episodes": 0})
    args.output = args.output or DEFAULT_OUTPUT
    return args


def setup(args, log: bool = True):
    """The config, its files, the weights of every fold and the output folder, before any model
    is built."""
    if args.dataset_root:
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    cfg = load_entry_config(args, FLAGS)
    cfg.freeze()
    folds = max(BENCHMARK_FOLDS.get(b, 1) for b in args.benchmarks)
    preflight(cfg, output_dir=args.output,
              weights=sorted({fold_weights(cfg, f) for f in range(folds)}))
    check_output_dir(args.output)
    if log:
        setup_logger(args.output, distributed_rank=comm.get_rank(), name="diffews")
    return cfg


def main(args):
    return run_incontext(setup(args), args.benchmarks, args.shots, args.output)


def output_folder(args) -> str:
    """``setup`` without the log: the folder locked by the parent process for the whole run,
    its runs' sub-folders included (``launch_cli``)."""
    setup(args, log=False)
    return args.output


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: setup(args, log=False),
                      output=lambda: output_folder(args))


if __name__ == "__main__":
    sys.exit(cli())
