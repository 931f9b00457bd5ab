# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Config keys of SINE training (loss and matcher) and the builder that reads them.

Defaults are the released model's training run (aim-uofa/SINE ``tools/train.py`` l.97-104,
``TRAINING.md``). ``add_sine_train_config`` only adds keys; ``build_sine_criterion`` is what a
meta-arch's ``from_config`` calls.
"""

from detectron2.config import CfgNode as CN

from .criterion import SineCriterion
from .matcher import SineHungarianMatcher

__all__ = ["add_sine_train_config", "build_sine_criterion"]


def add_sine_train_config(cfg: CN) -> None:
    """Add ``MODEL.SINE.LOSS.*``, ``INPUT.SINE_TRAIN.*`` and ``DATASETS.SINE_TRAIN.*`` to ``cfg``
    in place (creates ``MODEL.SINE`` if absent)."""
    if "SINE" not in cfg.MODEL:
        cfg.MODEL.SINE = CN()
    cfg.MODEL.SINE.LOSS = CN()
    loss = cfg.MODEL.SINE.LOSS
    # Weight of the class terms: the matcher's -p[class] cost and both cross-entropies
    # (loss_ce_ins, loss_ce_id). Original --class_weight 2.0.
    loss.CLASS_WEIGHT = 2.0
    # Weight of the point-sampled mean BCE, in the matching cost and in loss_mask (--mask_weight).
    loss.MASK_WEIGHT = 5.0
    # Weight of the point-sampled dice loss, in the matching cost and in loss_dice (--dice_weight).
    loss.DICE_WEIGHT = 5.0
    # Class weight of "no object" in both cross-entropies (--no_object_weight); the other
    # classes weigh 1.
    loss.NO_OBJECT_WEIGHT = 0.1
    # Points per mask for the mask costs (uniform) and the mask losses (uncertainty-sampled),
    # 12544 = 112 x 112 (--train_num_points).
    loss.TRAIN_NUM_POINTS = 12544
    # Uniform candidates per point before the uncertainty selection (--oversample_ratio, >= 1).
    loss.OVERSAMPLE_RATIO = 3.0
    # Share of the points picked as the most uncertain candidates (smallest |logit|), the rest
    # drawn uniformly (--importance_sample_ratio, in [0, 1]).
    loss.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Supervise every earlier decoder layer's prediction too, with its own matching and the same
    # weights (--deep_supervision, on in the original: it cannot be switched off there).
    loss.DEEP_SUPERVISION = True

    # In-context training samples (diffews/data/incontext; original sine/data/dataset.py).
    cfg.INPUT.SINE_TRAIN = CN()
    # Working size: images are scaled into and cropped to IMAGE_SIZE x IMAGE_SIZE, then zero-padded
    # to it (--image_size 896).
    cfg.INPUT.SINE_TRAIN.IMAGE_SIZE = 896
    # Large-scale jitter: the image fits into IMAGE_SIZE x s, s ~ U(MIN_SCALE, MAX_SCALE)
    # (--min_scale 0.1, --max_scale 2.0), then a random IMAGE_SIZE crop.
    cfg.INPUT.SINE_TRAIN.MIN_SCALE = 0.1
    cfg.INPUT.SINE_TRAIN.MAX_SCALE = 2.0
    # "horizontal" | "vertical" | "none" flip with probability 0.5 (--random_flip).
    cfg.INPUT.SINE_TRAIN.RANDOM_FLIP = "horizontal"
    # Probability that the target is the reference image itself, augmented independently
    # (otherwise another image with the drawn class) (--crop_ratio 0.5).
    cfg.INPUT.SINE_TRAIN.CROP_RATIO = 0.5
    cfg.DATASETS.SINE_TRAIN = CN()
    # Weights of the two tasks, (panoptic, instance) (--sample_rate "2,5").
    cfg.DATASETS.SINE_TRAIN.TASK_WEIGHTS = (2.0, 5.0)
    # Panoptic sources and their weights (--pano_seg_data "coco||ade20k", --pano_sample_rate "1,1").
    cfg.DATASETS.SINE_TRAIN.PANOPTIC = ("sine_coco_panoptic_train", "sine_ade20k_panoptic_train")
    cfg.DATASETS.SINE_TRAIN.PANOPTIC_WEIGHTS = (1.0, 1.0)
    # Instance sources and weights (--ins_seg_data "coco||o365", --ins_sample_rate "1,3"); others:
    # sine_ade20k_instance_train, sine_paco_lvis_train, sine_o365_sam_train_75k.
    cfg.DATASETS.SINE_TRAIN.INSTANCE = ("sine_coco_instance_train", "sine_o365_sam_train")
    cfg.DATASETS.SINE_TRAIN.INSTANCE_WEIGHTS = (1.0, 3.0)


def build_sine_criterion(cfg: CN, num_decoder_layers: int) -> SineCriterion:
    """The criterion of ``cfg.MODEL.SINE.LOSS``.

    Args:
        cfg: a config with ``add_sine_train_config`` applied.
        num_decoder_layers: the Matching Transformer's depth; with deep supervision every one of
            its ``num_decoder_layers`` aux predictions (the one before layer 0 and after layers
            0..depth-2) is weighted, as the original's ``weight_dict`` does.
    """
    loss = cfg.MODEL.SINE.LOSS
    matcher = SineHungarianMatcher(cost_class=loss.CLASS_WEIGHT, cost_mask=loss.MASK_WEIGHT,
                                   cost_dice=loss.DICE_WEIGHT, num_points=loss.TRAIN_NUM_POINTS)
    return SineCriterion(
        matcher, class_weight=loss.CLASS_WEIGHT, mask_weight=loss.MASK_WEIGHT,
        dice_weight=loss.DICE_WEIGHT, no_object_weight=loss.NO_OBJECT_WEIGHT,
        num_points=loss.TRAIN_NUM_POINTS, oversample_ratio=loss.OVERSAMPLE_RATIO,
        importance_sample_ratio=loss.IMPORTANCE_SAMPLE_RATIO,
        num_aux_layers=num_decoder_layers if loss.DEEP_SUPERVISION else 0)
