#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Train or evaluate DiffewS.

  python tools/train_net.py --config-file configs/fss/coco20i/diffews_sd21_coco20i_fold0_2shot_bs4_20k.yaml
  python tools/train_net.py --config-file CFG --resume                       # continue a killed run
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
  python tools/train_net.py --config-file CFG --num-gpus 8                   # data-parallel
"""

import os
import sys

from detectron2.engine import default_argument_parser, default_setup, launch

from diffews import DiffewSCheckpointer
from diffews.config import load_config
from diffews.engine import DiffewSTrainer


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DiffewSTrainer.build_model(cfg)
        DiffewSCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return DiffewSTrainer.test(cfg, model)
    trainer = DiffewSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
