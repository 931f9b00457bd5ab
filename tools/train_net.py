#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Train or evaluate DiffewS or SINE (the config's MODEL.META_ARCHITECTURE).

  python tools/train_net.py --config-file
  configs/fss/coco20i/diffews_sd21_coco20i_fold0_2shot_bs4_20k.yaml
  python tools/train_net.py --config-file CFG --resume                       # continue a killed run
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
  python tools/train_net.py --config-file CFG --num-gpus 8                   # data-parallel
  python tools/train_net.py --config-file configs/sine/sine_dinov2l_incontext_train.yaml  # SINE

Config overrides are trailing KEY VALUE pairs (or after --opts); --output sets OUTPUT_DIR (default:
the config's OUTPUT_DIR), --device MODEL.DEVICE, --dataset-root $DETECTRON2_DATASETS. --resume,
--eval-only and the launch flags (--num-gpus, --num-machines, --machine-rank, --dist-url) are
detectron2's default_argument_parser's. Before the model is built, the config, the
MODEL.DIFFEWS.PRETRAINED folder (SINE: MODEL.SINE.ENCODER.WEIGHTS), the image size, the datasets
(SINE: DATASETS.SINE_TRAIN), OUTPUT_DIR and (with --eval-only) MODEL.WEIGHTS are checked; an error
is one line, exit status 2 for a wrong command line or config, 1 for missing or broken files
(--debug shows the traceback).
"""

import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews import engine
from diffews.cli import check_counts, entry_parser, load_entry_config, run_cli
from diffews.cli.preflight import check_datasets, check_output_dir, preflight

from detectron2.engine import default_argument_parser, launch

# flag -> config key, merged after the trailing overrides (diffews.cli.load_entry_config)
FLAGS = {"output": "OUTPUT_DIR"}


def get_parser():
    """The shared flags (diffews.cli.entry_parser) plus detectron2's ``default_argument_parser``
    ones, with its defaults (``--dist-url`` included)."""
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     dataset_root=True, output="optional", device=True, distributed=True,
                     output_help="OUTPUT_DIR: checkpoints, logs, metrics (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint "
                   "(see detectron2's default_argument_parser)")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS only")
    p.set_defaults(dist_url=default_argument_parser().get_default("dist_url"))
    return p


def _dataset_root(args) -> None:
    # the registered datasets read $DETECTRON2_DATASETS when their records are loaded; spawned
    # processes inherit it
    if getattr(args, "dataset_root", None):
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root


def setup(args):
    _dataset_root(args)
    cfg = load_entry_config(args, FLAGS)
    cfg.freeze()
    engine.setup(cfg, args)
    return cfg


def check(args) -> None:
    """Everything that can fail before the model is built, run once in the launching process."""
    _dataset_root(args)
    cfg = load_entry_config(args, FLAGS)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if cfg.MODEL.META_ARCHITECTURE == "SINE":
        return check_sine(cfg, args.eval_only and not resuming, args.eval_only)
    weights = [cfg.MODEL.WEIGHTS] if args.eval_only and not resuming else []
    preflight(cfg, output_dir=cfg.OUTPUT_DIR, weights=weights, output_key="OUTPUT_DIR")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    if not args.eval_only:
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN", required=True)


def check_sine(cfg, need_weights: bool, eval_only: bool) -> None:
    """SINE's checks: OUTPUT_DIR, the encoder and model weights files, the datasets."""
    from diffews.engine.sine_preflight import check_sine_config, sine_train_datasets

    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    check_sine_config(cfg, need_weights)
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    if not eval_only:
        check_datasets(sine_train_datasets(cfg), "DATASETS.SINE_TRAIN", required=True)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return engine.evaluate(cfg, resume=args.resume)
    return engine.train(cfg, resume=args.resume)


def cli(argv=None) -> int:
    """The command line: parse, check once, launch; one ``error:`` line and exit status 1/2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args, {"num_gpus": 1, "num_machines": 1, "machine_rank": 0})

    def run():
        check(args)  # once, here, before any process is spawned or model built
        return launch(main, args.num_gpus, num_machines=args.num_machines,
                      machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))

    return run_cli(run, args.debug)


invoke_main = cli  # the older name


if __name__ == "__main__":
    sys.exit(cli())
