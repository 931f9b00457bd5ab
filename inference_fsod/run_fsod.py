#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation with DiffewS, TFA protocol (COCO-novel or COCO-to-VOC).

    python inference_fsod/run_fsod.py \
        --config-file configs/fsod/coco/diffews_sd21_fsod_coco_1shot.yaml \
        --test coco --shot 1 --seed 0 --output output/fsod/coco_1shot MODEL.WEIGHTS W
    python inference_fsod/run_fsod.py --config-file CFG --seeds 0-9 --output DIR MODEL.WEIGHTS W

Writes ``DIR/coco_instances_results.json`` (COCO results, RLE masks) and ``DIR/results.json``
(bbox and segm AP, AP50, AP75, APs, APm, APl on the novel classes); ``--seeds`` runs each seed in
``DIR/seed{S}/`` and prints mean and std per metric (``DIR/results_seeds.json``). Datasets under
``--dataset-root`` or ``$DETECTRON2_DATASETS`` in TFA's layout (datasets/README.md).

Resumable: each seed's detections are journalled per shard of test images in its folder's
``journal/`` (diffews/tasks/fsod/journal.py); the same command started again after a kill predicts
only the shards left and gives the AP of an uninterrupted run. Another command (config, weights,
split) on the same folder is refused unless ``--overwrite``; a second run while one runs there is
refused, whatever its flags. See inference_fsod/README.md.
"""

import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import check_counts, entry_parser, launch_cli, load_entry_config
from diffews.cli.preflight import check_output_dir, preflight
from diffews.data.datasets.coco_fsod_reader import SEEDS, SHOTS
from diffews.data.datasets.coco_fsod import TEST_SETS
from diffews.tasks import fsod
from diffews.tasks.resume import OVERWRITE_HELP

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

__all__ = ["get_parser", "parse_args", "cli", "main"]

DEFAULT_OUTPUT = "output/fsod/<test>_<K>shot"
# flag -> config key, merged after the trailing overrides (diffews.cli.load_entry_config)
FLAGS = {"test": "TEST.FSOD.TEST_SET", "shot": "TEST.FSOD.SHOT", "seed": "TEST.FSOD.SEED",
         "batch_size": "TEST.FSOD.BATCH_SIZE", "output": "OUTPUT_DIR"}


def parse_seeds(text: str):
    """'0-9', '0,3,5' or '4' -> sorted list of seeds; None if malformed or out of 0..9."""
    try:
        seeds = set()
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            seeds.update(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        return None
    return sorted(seeds) if seeds and seeds <= set(SEEDS) else None


def get_parser():
    p = entry_parser(
        __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], dataset_root=True,
        output="optional", device=True, distributed=True,
        output_help=f"results folder (default {DEFAULT_OUTPUT}, from the resolved "
        "TEST.FSOD.TEST_SET and SHOT)",
        batch_size="queries per model call (default: the config's TEST.FSOD.BATCH_SIZE)")
    p.add_argument("--test", choices=sorted(TEST_SETS), default=None,
                   help="coco: coco_test_novel; voc: VOCSegm_val_novel (default: the config's "
                   "TEST.FSOD.TEST_SET)")
    p.add_argument("--shot", type=int, default=None, metavar="K",
                   help=f"supports per class, one of {SHOTS} (default: TEST.FSOD.SHOT)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, metavar="S",
                       help="TFA split group 0..9 (default: TEST.FSOD.SEED)")
    seeds.add_argument("--seeds", default=None, metavar="RANGE",
                       help="run several seeds, e.g. 0-9 or 0,1,2, each in OUTPUT/seed{S}/, and "
                       "print mean and std per metric")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return p


def parse_args(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    if args.shot is not None and args.shot not in SHOTS:
        p.error(f"--shot {args.shot}: TFA's splits have K in {SHOTS}")
    if args.seed is not None and args.seed not in SEEDS:
        p.error(f"--seed {args.seed}: TFA's seeds are 0..9")
    if args.seeds is not None:
        args.seed_list = parse_seeds(args.seeds)
        if args.seed_list is None:
            p.error(f"--seeds {args.seeds!r}: expected seeds in 0..9 like 0-9 or 0,2,5")
    else:
        args.seed_list = None
    check_counts(p, args, {"num_gpus": 1, "batch_size": 1})
    return args


def setup(args, log: bool = True):
    """The config with the command line applied (frozen); the output folder checked."""
    cfg = load_entry_config(args, FLAGS)
    if not args.output:  # the default names what is evaluated: output/fsod/<test>_<K>shot
        args.output = os.path.join("output", "fsod",
                                   f"{cfg.TEST.FSOD.TEST_SET}_{cfg.TEST.FSOD.SHOT}shot")
        cfg = load_entry_config(args, FLAGS)  # again, with OUTPUT_DIR from --output
    cfg.freeze()
    fsod.check_fsod_config(cfg)
    check_output_dir(args.output)
    if log:
        for name, abbrev in (("diffews", "diffews"), ("detectron2", "d2")):
            setup_logger(args.output, distributed_rank=comm.get_rank(), name=name,
                         abbrev_name=abbrev)
    return cfg


def job(args) -> fsod.FSODJob:
    return fsod.FSODJob(args.output, args.seed_list, root=args.dataset_root,
                        overwrite=args.overwrite)


def prepare(cfg, args) -> None:
    """Everything checkable before the model is built: the model's files, MODEL.WEIGHTS, then
    the splits, the test set and each seed folder's journal (``fsod.check``)."""
    preflight(cfg, weights=[cfg.MODEL.WEIGHTS])
    fsod.check(cfg, job(args))


def main(args):
    cfg = setup(args)
    prepare(cfg, args)
    return fsod.run(cfg, job(args))


def output_folder(args) -> str:
    """The config loaded and the output folder resolved and checked (cheap): the folder locked
    by the parent process for the whole run, every seed's sub-folder included (``launch_cli``)."""
    setup(args, log=False)
    return args.output


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: prepare(setup(args, log=False), args),
                      output=lambda: output_folder(args))


if __name__ == "__main__":
    sys.exit(cli())
