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
(diffews/tasks/fss/); the same command started again after a kill evaluates only the chunks
left and writes the results.json of an uninterrupted run. Another command (config, weights,
episodes) on the same ``--output`` is refused unless ``--overwrite``; a second run while one runs
there is refused, whatever its flags. See inference_fss/README.md.
"""

import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import UsageError, check_counts, entry_parser, launch_cli, load_entry_config
from diffews.cli.preflight import check_output_dir, preflight
from diffews.data.episodes import BENCHMARK_FOLDS
from diffews.tasks import fss
from diffews.tasks.resume import OVERWRITE_HELP

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

DEFAULT_OUTPUT = "output/fss"
DEFAULT_CHUNK = fss.DEFAULT_CHUNK
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
    p.add_argument(
        "--coco-json", default=None, metavar="FILE", help="--layout coco: instances json"
    )
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
    """The config (flags merged), its checks, the output folder and (``log``) the log files."""
    if args.benchmark and args.dataset_root:
        # the registered benchmarks read $DETECTRON2_DATASETS when their records are loaded
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    cfg = load_entry_config(args, FLAGS)
    cfg.freeze()
    if cfg.TEST.FSS.SHOT < 1:
        raise UsageError(f"TEST.FSS.SHOT must be >= 1, got {cfg.TEST.FSS.SHOT}")
    check_output_dir(args.output)
    if log:
        setup_logger(args.output, distributed_rank=comm.get_rank(), name="diffews")
        setup_logger(args.output, distributed_rank=comm.get_rank(), name="detectron2",
                     abbrev_name="d2")
    return cfg


def job(args) -> fss.FSSJob:
    return fss.FSSJob(benchmark=args.benchmark, layout=args.layout,
                      dataset_root=args.dataset_root, coco_json=args.coco_json,
                      class_names=args.class_names, folds=args.folds, output=args.output,
                      chunk_episodes=args.chunk_episodes, save_vis=args.save_vis,
                      overwrite=args.overwrite)


def check(cfg, args):
    """Everything before the model: config files, weights of every fold, data, journal."""
    preflight(cfg, weights=job(args).weights(cfg))
    return fss.check(cfg, job(args))


def main(args):
    cfg = setup(args)
    return fss.run(cfg, job(args), check(cfg, args))


def output_folder(args) -> str:
    """The config loaded and ``--output`` checked (cheap): the folder locked by the parent
    process for the whole run (``launch_cli``)."""
    setup(args, log=False)
    return args.output


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: check(setup(args, log=False), args),
                      output=lambda: output_folder(args))


if __name__ == "__main__":
    sys.exit(cli())
