# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A training or evaluation run of a config, as ``tools/train_net.py`` and the quick start start
it: ``setup`` (detectron2's ``default_setup``: loggers, the config saved in ``OUTPUT_DIR``, the
seed), then ``train`` (resumable) or ``evaluate`` (``MODEL.WEIGHTS``, or the last checkpoint)."""

import logging
from types import SimpleNamespace

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import DiffewSCheckpointer, load_inference_weights
from .trainer import DiffewSTrainer

__all__ = ["setup", "train", "evaluate"]


def setup(cfg, args=None) -> None:
    """``default_setup`` of ``cfg`` (the command line ``args`` logged; None: no command line),
    then the ``diffews`` logger into ``OUTPUT_DIR``."""
    # default_setup's environment report imports torch.utils.cpp_extension, which warns on stderr
    # on any machine without a CUDA toolkit; the report itself still lists the CUDA state
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    default_setup(cfg, args if args is not None else SimpleNamespace(config_file=""))
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="diffews")


def train(cfg, resume: bool = False):
    """Train ``cfg`` (continuing from ``OUTPUT_DIR/last_checkpoint`` with ``resume``); returns the
    last evaluation's results (detectron2's ``DefaultTrainer.train``)."""
    trainer = DiffewSTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()


def evaluate(cfg, resume: bool = False):
    """Evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, the last checkpoint of ``OUTPUT_DIR``)
    on ``DATASETS.TEST``; an empty ``MODEL.WEIGHTS`` is an error unless the model allows an
    untrained run."""
    model = DiffewSTrainer.build_model(cfg)
    checkpointer = DiffewSCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if resume and checkpointer.has_checkpoint():
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
    else:
        load_inference_weights(model, cfg)
    return DiffewSTrainer.test(cfg, model)
