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

import logging
import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import (add_list_argument, check_counts, config_overrides, entry_parser,
                         launch_cli, load_entry_config, parse_list)
from diffews.cli.preflight import check_output_dir, preflight
from diffews.data.episodes import BENCHMARK_FOLDS
from diffews.utils.atomic import atomic_write_json

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_fss  # noqa: E402

logger = logging.getLogger("diffews.run_incontext")

DEFAULT_OUTPUT = "output/incontext"
BENCHMARKS = ("coco", "pascal", "fss", "lvis")
NAMES = {"coco": "COCO-20i", "pascal": "PASCAL-5i", "fss": "FSS-1000", "lvis": "LVIS-92i",
         "synthetic": "synthetic"}
# DiffewS in-context weights, mean mIoU over folds, (1-shot, 5-shot) (docs/METHOD.md section 9);
# the paper gives no PASCAL-5i number for them
PAPER = {"coco": (71.3, 72.2), "fss": (87.8, 88.0), "lvis": (31.4, 35.4)}


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


def run_fss_args(args, benchmark: str, shot: int):
    """run_fss.py arguments of one (benchmark, shot): every fold, its own output folder."""
    argv = ["--config-file", args.config_file, "--benchmark", benchmark, "--fold", "all",
            "--shot", str(shot), "--output", os.path.join(args.output, f"{benchmark}_{shot}shot")]
    for flag, value in (("--num-episodes", args.num_episodes), ("--batch-size", args.batch_size),
                        ("--device", args.device), ("--dataset-root", args.dataset_root)):
        if value is not None:
            argv += [flag, str(value)]
    return run_fss.parse_args(argv + config_overrides(args))


def precheck(args):
    """The config, PRETRAINED, image size, the weights of every fold and the output folder,
    before any model is built (once, in the launching process)."""
    cfg = load_entry_config(args, {"batch_size": "TEST.FSS.BATCH_SIZE"})
    folds = max(BENCHMARK_FOLDS.get(b, 1) for b in args.benchmarks)
    preflight(cfg, output_dir=args.output,
              weights=sorted({run_fss.fold_weights(cfg, f) for f in range(folds)}))
    return cfg


def table(summaries: dict, shots) -> tuple:
    """Rows ``[benchmark, folds, mIoU per shot, paper mIoU per shot, FB-IoU per shot]`` and their
    headers, from ``{(benchmark, shot): run_fss summary}``."""
    benchmarks = list(dict.fromkeys(b for b, _ in summaries))
    headers = (["benchmark", "folds"] + [f"{k}-shot mIoU" for k in shots]
               + [f"paper {k}-shot" for k in shots] + [f"{k}-shot FB-IoU" for k in shots])
    rows = []
    for b in benchmarks:
        runs = [summaries[(b, k)] for k in shots]
        paper = [dict(zip((1, 5), PAPER[b])).get(k) if b in PAPER else None for k in shots]
        rows.append([NAMES[b], len(runs[0]["folds"])]
                    + [f"{r['mean']['mIoU']:.1f}" for r in runs]
                    + [f"{p:.1f}" if p is not None else "-" for p in paper]
                    + [f"{r['mean']['FB-IoU']:.1f}" for r in runs])
    return headers, rows


def _drop_log_handlers():
    """run_fss.setup adds log handlers for its own output folder: drop the previous run's, so
    that no line is printed twice."""
    for name in ("diffews", "detectron2"):
        logging.getLogger(name).handlers.clear()


def main(args):
    precheck(args)
    summaries = {}
    for benchmark in args.benchmarks:
        for shot in args.shots:
            _drop_log_handlers()
            summary = run_fss.main(run_fss_args(args, benchmark, shot))
            if comm.is_main_process():
                summaries[(benchmark, shot)] = summary
    if not comm.is_main_process():
        return None
    _drop_log_handlers()
    setup_logger(args.output, name="diffews")
    headers, rows = table(summaries, args.shots)
    logger.info("in-context weights, mean over folds:\n%s",
                tabulate(rows, headers=headers, tablefmt="pipe"))
    out = {"shots": args.shots, "headers": headers, "rows": rows,
           "runs": {f"{b}_{k}shot": s for (b, k), s in summaries.items()}}
    check_output_dir(args.output)
    atomic_write_json(out, os.path.join(args.output, "incontext_results.json"), indent=2)
    return out


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: precheck(args))


if __name__ == "__main__":
    sys.exit(cli())
