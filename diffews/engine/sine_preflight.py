# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What ``tools/train_net.py`` checks of a SINE config before building the model: sizes, the
encoder and model weights files, and which training datasets the mixture draws from."""

import os
from typing import List

from ..checkpoint import require_inference_weights
from ..modeling.sine.encoder import PATCH_SIZE
from ..utils.errors import UsageError
from ..utils.hub import is_hub_id

__all__ = ["check_sine_config", "sine_train_datasets"]


def _exists(path: str, key: str) -> None:
    if path and not is_hub_id(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{key}: {path} does not exist")


def check_sine_config(cfg, need_weights: bool = False) -> None:
    """Sizes (multiples of the patch size; ``INPUT.IMAGE_SIZE`` = ``MODEL.SINE.IMAGE_SIZE`` for
    the FSS evaluation), ``MODEL.SINE.ENCODER.WEIGHTS`` and ``MODEL.WEIGHTS`` present when set,
    and (``need_weights``: evaluation) ``MODEL.WEIGHTS`` set unless ``ALLOW_UNTRAINED``."""
    s = cfg.MODEL.SINE
    for key, value in (("INPUT.SINE_TRAIN.IMAGE_SIZE", cfg.INPUT.SINE_TRAIN.IMAGE_SIZE),
                       ("MODEL.SINE.PAD_SIZE", s.PAD_SIZE)):
        if value % PATCH_SIZE:
            raise UsageError(f"{key} {value} is not a multiple of the patch size {PATCH_SIZE}")
    if cfg.DATASETS.TEST and cfg.INPUT.IMAGE_SIZE != s.IMAGE_SIZE:
        raise UsageError(f"INPUT.IMAGE_SIZE {cfg.INPUT.IMAGE_SIZE} differs from "
                         f"MODEL.SINE.IMAGE_SIZE {s.IMAGE_SIZE}: SINE's FSS episodes are at its "
                         "working size (set both)")
    if s.IMAGE_SIZE > s.PAD_SIZE:
        raise UsageError(f"MODEL.SINE.IMAGE_SIZE {s.IMAGE_SIZE} is larger than "
                         f"MODEL.SINE.PAD_SIZE {s.PAD_SIZE}")
    _exists(s.ENCODER.WEIGHTS, "MODEL.SINE.ENCODER.WEIGHTS")
    _exists(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    if need_weights:
        require_inference_weights(cfg)


def sine_train_datasets(cfg) -> List[str]:
    """The datasets of ``DATASETS.SINE_TRAIN`` that can be drawn: sources of weight > 0 of
    tasks of weight > 0."""
    d = cfg.DATASETS.SINE_TRAIN
    if len(d.TASK_WEIGHTS) != 2:
        raise UsageError(f"DATASETS.SINE_TRAIN.TASK_WEIGHTS must be (panoptic, instance), got "
                         f"{tuple(d.TASK_WEIGHTS)}")
    names = []
    for task_weight, sources, weights, key in (
            (d.TASK_WEIGHTS[0], d.PANOPTIC, d.PANOPTIC_WEIGHTS, "PANOPTIC"),
            (d.TASK_WEIGHTS[1], d.INSTANCE, d.INSTANCE_WEIGHTS, "INSTANCE")):
        if len(sources) != len(weights):
            raise UsageError(f"DATASETS.SINE_TRAIN.{key}: {len(sources)} datasets but "
                             f"{len(weights)} weights ({key}_WEIGHTS)")
        if task_weight > 0:
            names += [n for n, w in zip(sources, weights) if w > 0]
    return names
