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
``--root`` or ``$DETECTRON2_DATASETS`` in TFA's layout (datasets/README.md). See
inference_fsod/README.md.
"""

import argparse
import sys
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from diffews.data.datasets.coco_fsod import SEEDS, SHOTS, TEST_SETS, load_fsod_test  # noqa: E402
from diffews.tasks.fsod import check_fsod_config, run_seeds, support_records  # noqa: E402
from diffews.predictor import DiffewSPredictor  # noqa: E402
from diffews.cli import (OneLineArgumentParser, add_common_arguments,  # noqa: E402
                               launch_cli, load_config_checked)
from diffews.cli.preflight import check_output_dir, preflight  # noqa: E402


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


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG")
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
    p.add_argument("--output", default="", metavar="DIR", help="default: the config's OUTPUT_DIR")
    p.add_argument("--root", default="", help="datasets root (default: $DETECTRON2_DATASETS)")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--dist-url", default="auto")
    add_common_arguments(p)
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
    if args.num_gpus < 1:
        p.error(f"--num-gpus must be >= 1, got {args.num_gpus}")
    return args


def setup(args, log: bool = True):
    """The config with the command line applied (frozen); the output folder checked."""
    cfg = load_config_checked(args.config_file, args.opts)
    for key, value in (("TEST_SET", args.test), ("SHOT", args.shot), ("SEED", args.seed)):
        if value is not None:
            cfg.TEST.FSOD[key] = value
    cfg.OUTPUT_DIR = args.output = args.output or cfg.OUTPUT_DIR
    cfg.freeze()
    check_fsod_config(cfg)
    check_output_dir(args.output)
    if log:
        for name, abbrev in (("diffews", "diffews"), ("detectron2", "d2")):
            setup_logger(args.output, distributed_rank=comm.get_rank(), name=name,
                         abbrev_name=abbrev)
    return cfg


def prepare(cfg, args) -> None:
    """Everything checkable before the model is built: PRETRAINED, image size, MODEL.WEIGHTS,
    every support split file and image of the seeds, the test set's json and image folder."""
    preflight(cfg, weights=[cfg.MODEL.WEIGHTS])
    root = args.root or None
    for seed in args.seed_list or [cfg.TEST.FSOD.SEED]:
        seed_cfg = cfg.clone()
        seed_cfg.defrost()
        seed_cfg.TEST.FSOD.SEED = seed
        support_records(seed_cfg, root)
    load_fsod_test(TEST_SETS[cfg.TEST.FSOD.TEST_SET], root)


def main(args):
    cfg = setup(args)
    prepare(cfg, args)
    predictor = DiffewSPredictor.from_config(cfg)
    return run_seeds(cfg, predictor, args.output, args.seed_list, root=args.root or None)


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    args = parse_args(argv)
    return launch_cli(args, main, lambda: prepare(setup(args, log=False), args))


if __name__ == "__main__":
    sys.exit(cli())
