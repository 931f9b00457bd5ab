# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE (frozen DINOv2 + Matching Transformer): here the training loss and matcher."""

from .criterion import SineCriterion, prepare_targets
from .matcher import SineHungarianMatcher
from .train_config import add_sine_train_config, build_sine_criterion

__all__ = ["SineCriterion", "SineHungarianMatcher", "add_sine_train_config",
           "build_sine_criterion", "prepare_targets"]
