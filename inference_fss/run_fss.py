#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Evaluate a DiffewS config + weights on an episodic few-shot segmentation benchmark.

    python inference_fss/run_fss.py --config-file CFG --benchmark coco --fold all --shot 1 \
        --output output/fss_coco_1shot MODEL.WEIGHTS path/to/weights

``MODEL.WEIGHTS`` may contain ``{fold}`` (e.g. ``weight/coco_fold{fold}``): each fold then loads
its own weights, as the strict few-shot setting needs. Prints mIoU / FB-IoU per fold and their
mean over folds, and writes ``results.json`` in ``--output``. Episodes are fixed lists (seed
``TEST.FSS.SEED``), identical for 1 or N GPUs. See inference_fss/README.md for every benchmark's
command and the published numbers.
"""

import argparse
import json
import logging
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.evaluation import inference_context
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate
from tqdm import tqdm

from diffews import DiffewSCheckpointer
from diffews.config import load_config
from diffews.data import build_fss_test_loader
from diffews.data.episodes import BENCHMARK_FOLDS, test_dataset_name
from diffews.utils.visualize import save_episode

logger = logging.getLogger("diffews.run_fss")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="DiffewS episodic few-shot segmentation evaluation")
    p.add_argument("--config-file", required=True)
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARK_FOLDS))
    p.add_argument("--fold", default="all", help="fold index or 'all'")
    p.add_argument("--shot", type=int, default=None, help="supports per episode (default: the "
                   "config's TEST.FSS.SHOT)")
    p.add_argument("--output", default="output/fss")
    p.add_argument("--episodes", default="", help="episode JSON (tools/make_episodes.py) to reuse; "
                   "single fold only")
    p.add_argument("--num-episodes", type=int, default=0, help="0 = protocol count")
    p.add_argument("--save-vis", type=int, default=0, metavar="N",
                   help="save pictures of the first N episodes of each fold")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    n = BENCHMARK_FOLDS[args.benchmark]
    args.folds = list(range(n)) if args.fold == "all" else [int(args.fold)]
    if args.episodes and len(args.folds) > 1:
        p.error("--episodes needs a single --fold")
    return args


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    if args.shot is not None:
        cfg.TEST.FSS.SHOT = args.shot
    if args.episodes:
        cfg.TEST.FSS.EPISODES_FILE = args.episodes
    if args.num_episodes:
        cfg.TEST.FSS.NUM_EPISODES = args.num_episodes
    cfg.OUTPUT_DIR = args.output
    cfg.freeze()
    args.shot = cfg.TEST.FSS.SHOT
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output, distributed_rank=comm.get_rank(), name="diffews")
    setup_logger(args.output, distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    return cfg


def evaluate_fold(cfg, model, dataset_name: str, args) -> dict:
    """Run the model on one fold's episodes; returns the evaluator's "fss" dict (main process)."""
    from diffews.evaluation import FSSEvaluator

    loader = build_fss_test_loader(cfg, dataset_name)  # loads the records: metadata complete
    evaluator = FSSEvaluator(dataset_name, distributed=True,
                             output_dir=os.path.join(args.output, dataset_name),
                             original_size=cfg.TEST.FSS.ORIGINAL_SIZE)
    evaluator.reset()
    vis_dir = os.path.join(args.output, "vis", dataset_name)
    bar = tqdm(loader, desc=dataset_name, disable=not comm.is_main_process(), dynamic_ncols=True)
    with inference_context(model), torch.no_grad():
        for inputs in bar:
            outputs = model(inputs)
            evaluator.process(inputs, outputs)
            bar.set_postfix(mIoU=f"{evaluator.running_miou():.2f}")
            for x, y in zip(inputs, outputs):
                if isinstance(x["episode_id"], int) and x["episode_id"] < args.save_vis:
                    save_episode(x, y, vis_dir)
    results = evaluator.evaluate()
    return results["fss"] if results else {}


def summarize(fold_results: dict, args) -> dict:
    """Per-fold table and mean over folds; writes results.json."""
    rows, summary = [], {"benchmark": args.benchmark, "shot": args.shot, "folds": {}}
    for fold, (name, res) in fold_results.items():
        per_class = res.get("per_class_iou") or {
            k[len("IoU-"):]: v for k, v in res.items() if k.startswith("IoU-")}
        summary["folds"][fold] = {"dataset": name, "mIoU": res["mIoU"], "FB-IoU": res["FB-IoU"],
                                  "num_episodes": res.get("num_episodes"),
                                  "per_class_iou": per_class}
        rows.append([fold, name, f"{res['mIoU']:.2f}", f"{res['FB-IoU']:.2f}"])
    n = len(fold_results)
    folds = summary["folds"].values()
    summary["mean"] = {k: sum(f[k] for f in folds) / n for k in ("mIoU", "FB-IoU")}
    rows.append(["mean", f"{n} fold(s)", f"{summary['mean']['mIoU']:.2f}",
                 f"{summary['mean']['FB-IoU']:.2f}"])
    logger.info("%s %d-shot:\n%s", args.benchmark, args.shot,
                tabulate(rows, headers=["fold", "dataset", "mIoU", "FB-IoU"], tablefmt="pipe"))
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(args):
    cfg = setup(args)
    model = build_model(cfg)
    loaded = None
    fold_results = {}
    for fold in args.folds:
        # strict few-shot weights are per fold: MODEL.WEIGHTS may contain "{fold}"
        weights = cfg.MODEL.WEIGHTS.replace("{fold}", str(fold))
        if weights != loaded:
            DiffewSCheckpointer(model).load(weights)
            loaded = weights
        name = test_dataset_name(args.benchmark, fold, args.shot)
        res = evaluate_fold(cfg, model, name, args)
        if comm.is_main_process():
            fold_results[fold] = (name, res)
            logger.info("%s: mIoU %.2f  FB-IoU %.2f", name, res["mIoU"], res["FB-IoU"])
    if comm.is_main_process():
        return summarize(fold_results, args)
    return None


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, dist_url=args.dist_url, args=(args,))
    sys.exit(0)
