# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The criterion of a config's ``MODEL.SINE.LOSS`` keys (``sine_config.add_sine_config``): what the
SINE meta-architecture's ``from_config`` calls."""

from detectron2.config import CfgNode as CN

from .criterion import SineCriterion
from .matcher import SineHungarianMatcher

__all__ = ["build_sine_criterion"]


def build_sine_criterion(cfg: CN, num_decoder_layers: int) -> SineCriterion:
    """The criterion of ``cfg.MODEL.SINE.LOSS``.

    Args:
        cfg: a config with ``sine_config.add_sine_config`` applied.
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
