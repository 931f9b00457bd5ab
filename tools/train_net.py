#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Train or evaluate DiffewS.

  python tools/train_net.py --config-file configs/fss/coco20i/diffews_sd21_coco20i_fold0_2shot_bs4_20k.yaml
  python tools/train_net.py --config-file CFG --resume                       # continue a killed run
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
  python tools/train_net.py --config-file CFG --num-gpus 8                   # data-parallel

Config overrides are trailing KEY VALUE pairs. Before the model is built, the config, the
MODEL.DIFFEWS.PRETRAINED folder, the image size, the datasets, OUTPUT_DIR and (with --eval-only)
MODEL.WEIGHTS are checked; an error is one line, exit status 2 for a wrong command line or config,
1 for missing or broken files (--debug shows the traceback).
"""

import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from diffews import DiffewSCheckpointer  # noqa: E402
from diffews.checkpoint import load_inference_weights  # noqa: E402
from diffews.engine import DiffewSTrainer  # noqa: E402
from diffews.cli import (  # noqa: E402
    add_common_arguments, load_config_checked, one_line_errors, run_cli)
from diffews.cli.preflight import check_datasets, preflight  # noqa: E402


def get_parser():
    """detectron2's ``default_argument_parser`` with one-line errors and ``--debug``."""
    return add_common_arguments(one_line_errors(default_argument_parser()), positional_opts=False)


def setup(args):
    cfg = load_config_checked(args.config_file, args.opts)
    cfg.freeze()
    # default_setup's environment report imports torch.utils.cpp_extension, which warns on stderr
    # on any machine without a CUDA toolkit; the report itself still lists the CUDA state
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="diffews")
    return cfg


def check(args) -> None:
    """Everything that can fail before the model is built, run once in the launching process."""
    cfg = load_config_checked(args.config_file, args.opts)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    weights = [cfg.MODEL.WEIGHTS] if args.eval_only and not resuming else []
    preflight(cfg, output_dir=cfg.OUTPUT_DIR, weights=weights, output_key="OUTPUT_DIR")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    if not args.eval_only:
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN", required=True)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DiffewSTrainer.build_model(cfg)
        checkpointer = DiffewSCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        else:  # an error if MODEL.WEIGHTS is empty, unless MODEL.DIFFEWS.ALLOW_UNTRAINED
            load_inference_weights(model, cfg)
        return DiffewSTrainer.test(cfg, model)
    trainer = DiffewSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv=None) -> int:
    args = get_parser().parse_args(argv)

    def run():
        check(args)
        return launch(main, args.num_gpus, num_machines=args.num_machines,
                      machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))

    return run_cli(run, args.debug)


if __name__ == "__main__":
    sys.exit(invoke_main())  # pragma: no cover
