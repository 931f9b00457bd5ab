#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Evaluate a DiffewS config + weights on an episodic few-shot segmentation benchmark, or on your
own dataset.

    python inference_fss/run_fss.py --config-file CFG --benchmark coco --fold all --shot 1 \
        [--dataset-root DIR] [--output output/fss] MODEL.WEIGHTS path/to/weights
    python inference_fss/run_fss.py --config-file CFG --layout {coco,semseg,folder} \
        --dataset-root DIR [--coco-json FILE] [--class-names FILE] --shot K --output OUT \
        MODEL.WEIGHTS path/to/weights

With ``--layout`` every class of the dataset with K + 1 images is a test class (datasets/README.md,
"Your own data"); results.json then names each class's IoU by its class name.

``MODEL.WEIGHTS`` may contain ``{fold}`` (e.g. ``weight/coco_fold{fold}``): each fold then loads
its own weights, as the strict few-shot setting needs. An empty ``MODEL.WEIGHTS`` is an error
(the model would be untrained) unless ``MODEL.DIFFEWS.ALLOW_UNTRAINED True``. Prints mIoU / FB-IoU
per fold and their mean over folds, and writes ``results.json`` in ``--output``. Episodes are
fixed lists (seed ``TEST.FSS.SEED``), identical for 1 or N GPUs. Everything that can be checked
(arguments, config, PRETRAINED folder, image size, weights paths, datasets, episodes, output
folder) is checked before the model is built; an error is one line (exit status 2: command line or
config, 1: files), ``--debug`` shows the traceback.

Resumable: every ``--chunk-episodes`` episodes of a fold are journalled in ``OUTPUT/journal/``
(diffews/tasks/fss.py); the same command started again after a kill evaluates only the chunks
left and writes the results.json of an uninterrupted run. Another command (config, weights,
episodes) on the same ``--output`` is refused unless ``--overwrite``. See inference_fss/README.md.
"""

import logging
import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import UsageError, check_counts, entry_parser, launch_cli, load_entry_config
from diffews.cli.preflight import check_output_dir, preflight
from diffews.checkpoint import load_inference_weights
from diffews.data.episodes import BENCHMARK_FOLDS, test_dataset_name
from diffews.tasks.fss import DEFAULT_CHUNK, episodes_identity, evaluate_fold, fss_episodes
from diffews.tasks.resume import (JOURNAL, OVERWRITE_HELP, check_resume, config_fingerprint,
                                  files_identity, open_journal, pretrained_identity)
from diffews.utils.atomic import atomic_write_json

from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

logger = logging.getLogger("diffews.run_fss")

DEFAULT_OUTPUT = "output/fss"
# flag -> config key, merged after the trailing overrides (diffews.cli.load_entry_config)
FLAGS = {"shot": "TEST.FSS.SHOT", "episodes": "TEST.FSS.EPISODES_FILE",
         "num_episodes": "TEST.FSS.NUM_EPISODES", "batch_size": "TEST.FSS.BATCH_SIZE",
         "output": "OUTPUT_DIR"}


def get_parser():
    p = entry_parser(
        "DiffewS episodic few-shot segmentation evaluation", epilog=__doc__.split("\n\n", 1)[1],
        dataset_root=True, output="optional", device=True, distributed=True,
        output_help=f"results folder (default {DEFAULT_OUTPUT})",
        batch_size="episodes per model call (default: the config's TEST.FSS.BATCH_SIZE)",
        dataset_root_help="--benchmark: datasets root (default $DETECTRON2_DATASETS, else "
        "./datasets); --layout: the image folder (coco), the dataset folder (semseg: images/ "
        "labels/) or the class-folder tree (folder)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--benchmark", choices=sorted(BENCHMARK_FOLDS))
    what.add_argument("--layout", choices=("coco", "semseg", "folder"),
                      help="your own dataset in this layout (with --dataset-root)")
    p.add_argument("--coco-json", default=None, metavar="FILE", help="--layout coco: instances json")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="--layout semseg: class-name list, one per line (default: "
                   "<dataset-root>/class_names.txt)")
    p.add_argument("--fold", default="all", help="fold index or 'all'")
    p.add_argument("--shot", type=int, default=None, help="supports per episode (default: the "
                   "config's TEST.FSS.SHOT)")
    p.add_argument("--episodes", default=None, help="episode JSON (tools/make_episodes.py) to "
                   "reuse; single fold only (TEST.FSS.EPISODES_FILE)")
    p.add_argument("--num-episodes", type=int, default=None,
                   help="0 = protocol count (TEST.FSS.NUM_EPISODES)")
    p.add_argument("--save-vis", type=int, default=0, metavar="N",
                   help="save pictures of the first N episodes of each fold")
    p.add_argument("--chunk-episodes", type=int, default=DEFAULT_CHUNK, metavar="N",
                   help="episodes per journal shard, rounded up to whole batches (default "
                   f"{DEFAULT_CHUNK}): a killed run loses at most this many per process")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return p


def parse_args(argv=None):
    """Parse and check the command line (fold, shot and counts are checked here, first)."""
    p = get_parser()
    args = p.parse_args(argv)
    if args.layout:
        if not args.dataset_root:
            p.error("--layout needs --dataset-root")
        if args.layout == "coco" and not args.coco_json:
            p.error("--layout coco needs --coco-json")
        if args.class_names and args.layout != "semseg":
            p.error("--class-names is for --layout semseg only")
        if args.fold != "all" and args.fold != "0":
            p.error("a custom dataset has one fold (0)")
        args.fold = "0"
    elif args.coco_json or args.class_names:
        p.error("--coco-json and --class-names go with --layout")
    n = BENCHMARK_FOLDS[args.benchmark] if args.benchmark else 1
    if args.fold == "all":
        args.folds = list(range(n))
    else:
        try:
            args.folds = [int(args.fold)]
        except ValueError:
            p.error(f"--fold must be a fold index or 'all', got {args.fold!r}")
        if args.folds[0] not in range(n):
            p.error(f"--fold {args.fold}: {args.benchmark or 'a custom dataset'} has folds "
                    f"0..{n - 1}")
    check_counts(p, args, {"shot": 1, "num_gpus": 1, "batch_size": 1, "num_episodes": 0,
                           "save_vis": 0, "chunk_episodes": 1})
    if args.episodes and len(args.folds) > 1:
        p.error("--episodes needs a single --fold")
    args.output = args.output or DEFAULT_OUTPUT
    return args


def setup(args, log: bool = True):
    if args.benchmark and args.dataset_root:
        # the registered benchmarks read $DETECTRON2_DATASETS when their records are loaded
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    cfg = load_entry_config(args, FLAGS)
    cfg.freeze()
    args.shot = cfg.TEST.FSS.SHOT
    if args.shot < 1:
        raise UsageError(f"TEST.FSS.SHOT must be >= 1, got {args.shot}")
    check_output_dir(args.output)
    if log:
        setup_logger(args.output, distributed_rank=comm.get_rank(), name="diffews")
        setup_logger(args.output, distributed_rank=comm.get_rank(), name="detectron2",
                     abbrev_name="d2")
    return cfg


def fold_weights(cfg, fold: int) -> str:
    """``MODEL.WEIGHTS`` of a fold (``{fold}`` replaced)."""
    return cfg.MODEL.WEIGHTS.replace("{fold}", str(fold))


def prepare(cfg, args) -> dict:
    """Checks and data of every fold, before the model is built: fold -> (dataset, weights,
    episodes). Raises on a missing PRETRAINED file, weights path, dataset tree or episode file,
    and on an output folder holding another command's journal (unless --overwrite)."""
    preflight(cfg, weights=sorted({fold_weights(cfg, f) for f in args.folds}))
    folds = {}
    for fold in args.folds:
        if args.layout:  # registers the dataset (and reads its records: a bad layout fails here)
            from diffews.data.datasets.custom import custom_test_dataset

            name = custom_test_dataset(args.layout, args.dataset_root, coco_json=args.coco_json,
                                       class_names=args.class_names, shot=args.shot)
        else:
            name = test_dataset_name(args.benchmark, fold, args.shot)
        folds[fold] = (name, fold_weights(cfg, fold), fss_episodes(cfg, name))
    args.fingerprint = fingerprint(cfg, args, folds)
    check_resume(os.path.join(args.output, JOURNAL), args.fingerprint, args.overwrite,
                 f"--output {args.output}")
    return folds


def fingerprint(cfg, args, folds: dict) -> dict:
    """What changes results.json (diffews/tasks/resume.py): the config, the weights of each
    fold, PRETRAINED, the benchmark or layout and each fold's episodes."""
    return {"config": config_fingerprint(cfg), "pretrained": pretrained_identity(cfg),
            "benchmark": args.benchmark or f"layout {args.layout}",
            "folds": {str(f): {"dataset": name, "weights": files_identity(w),
                               "episodes": episodes_identity(episodes)}
                      for f, (name, w, episodes) in folds.items()}}


def summarize(fold_results: dict, args) -> dict:
    """Per-fold table and mean over folds; writes results.json (atomically)."""
    benchmark = args.benchmark or f"custom ({args.layout}: {args.dataset_root})"
    rows, summary = [], {"benchmark": benchmark, "shot": args.shot, "folds": {}}
    for fold, (name, res) in fold_results.items():
        if args.layout:
            from diffews.data.datasets.custom import per_class_iou_by_name

            per_class = per_class_iou_by_name(name, res)
        else:
            per_class = res.get("per_class_iou") or {
                k[len("IoU-"):]: v for k, v in res.items() if k.startswith("IoU-")}
        summary["folds"][fold] = {"dataset": name, "mIoU": res["mIoU"], "FB-IoU": res["FB-IoU"],
                                  "num_episodes": res.get("num_episodes"),
                                  "skipped_episodes": res.get("skipped_episodes", []),
                                  "per_class_iou": per_class}
        rows.append([fold, name, f"{res['mIoU']:.2f}", f"{res['FB-IoU']:.2f}"])
    n = len(fold_results)
    folds = summary["folds"].values()
    summary["mean"] = {k: sum(f[k] for f in folds) / n for k in ("mIoU", "FB-IoU")}
    rows.append(["mean", f"{n} fold(s)", f"{summary['mean']['mIoU']:.2f}",
                 f"{summary['mean']['FB-IoU']:.2f}"])
    logger.info("%s %d-shot:\n%s", benchmark, args.shot,
                tabulate(rows, headers=["fold", "dataset", "mIoU", "FB-IoU"], tablefmt="pipe"))
    atomic_write_json(summary, os.path.join(args.output, "results.json"), indent=2)
    return summary


def main(args):
    cfg = setup(args)
    folds = prepare(cfg, args)
    journal = open_journal(os.path.join(args.output, JOURNAL), args.fingerprint, args.overwrite,
                           f"--output {args.output}",
                           stale=[os.path.join(args.output, "results.json")]
                           + [os.path.join(args.output, name) for name, _, _ in folds.values()])
    model = build_model(cfg)
    loaded = None
    fold_results = {}
    for fold, (name, weights, episodes) in folds.items():
        # strict few-shot weights are per fold: MODEL.WEIGHTS may contain "{fold}"
        if weights != loaded:
            fold_cfg = cfg.clone()
            fold_cfg.defrost()
            fold_cfg.MODEL.WEIGHTS = weights
            load_inference_weights(model, fold_cfg)
            loaded = weights
        res = evaluate_fold(cfg, model, name, episodes, fold, journal, args.output,
                            chunk=args.chunk_episodes, save_vis=args.save_vis)
        if comm.is_main_process():
            fold_results[fold] = (name, res)
            logger.info("%s: mIoU %.2f  FB-IoU %.2f", name, res["mIoU"], res["FB-IoU"])
    if comm.is_main_process():
        return summarize(fold_results, args)
    return None


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: prepare(setup(args, log=False), args))


if __name__ == "__main__":
    sys.exit(cli())
