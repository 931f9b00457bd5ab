# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE: frozen DINOv2 + Matching Transformer, the second model of this codebase (docs/SINE.md);
its training loss and matcher (``criterion.py``, ``matcher.py``)."""
from .build_criterion import build_sine_criterion
from .criterion import SineCriterion, prepare_targets
from .decoder import MatchingTransformer
from .encoder import DINOv2Encoder, build_dinov2, interpolate_pos_embed
from .matcher import SineHungarianMatcher
from .meta_arch import SINE
from .support_set import SINESupportSet
from .vos_memory import SINEMemory
from .weights import load_encoder_weights, load_sine_weights

__all__ = ["SINE", "SINESupportSet", "SINEMemory", "DINOv2Encoder", "MatchingTransformer",
           "SineCriterion", "SineHungarianMatcher", "build_dinov2", "build_sine_criterion",
           "interpolate_pos_embed", "load_encoder_weights", "load_sine_weights",
           "prepare_targets"]
