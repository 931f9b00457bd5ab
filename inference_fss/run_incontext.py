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

import argparse
import json
import logging
import os
import sys

from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_fss  # noqa: E402

logger = logging.getLogger("diffews.run_incontext")

BENCHMARKS = ("coco", "pascal", "fss", "lvis")
NAMES = {"coco": "COCO-20i", "pascal": "PASCAL-5i", "fss": "FSS-1000", "lvis": "LVIS-92i",
         "synthetic": "synthetic"}
# DiffewS in-context weights, mean mIoU over folds, (1-shot, 5-shot) (METHOD.md 9); the paper
# gives no PASCAL-5i number for them
PAPER = {"coco": (71.3, 72.2), "fss": (87.8, 88.0), "lvis": (31.4, 35.4)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="DiffewS in-context weights on every benchmark")
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", default="output/incontext")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                   help=f"comma-separated, from {sorted(NAMES)} (default: the four benchmarks)")
    p.add_argument("--shots", default="1,5", help="comma-separated supports per episode")
    p.add_argument("--num-episodes", type=int, default=0, help="0 = protocol count")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    args.benchmarks = [b for b in args.benchmarks.split(",") if b]
    bad = [b for b in args.benchmarks if b not in NAMES]
    if bad or not args.benchmarks:
        p.error(f"--benchmarks: {bad or 'none'} not in {sorted(NAMES)}")
    try:
        args.shots = [int(k) for k in args.shots.split(",") if k]
    except ValueError:
        p.error(f"--shots: expected comma-separated integers, got {args.shots!r}")
    if not args.shots or min(args.shots) < 1:
        p.error("--shots: at least one shot, each >= 1")
    return args


def run_fss_args(args, benchmark: str, shot: int):
    """run_fss.py arguments of one (benchmark, shot): every fold, its own output folder."""
    argv = ["--config-file", args.config_file, "--benchmark", benchmark, "--fold", "all",
            "--shot", str(shot), "--output", os.path.join(args.output, f"{benchmark}_{shot}shot"),
            "--num-episodes", str(args.num_episodes), *args.opts]
    return run_fss.parse_args(argv)


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
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "incontext_results.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, path)
    return out


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, dist_url=args.dist_url, args=(args,))
