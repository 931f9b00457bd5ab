# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE: frozen DINOv2 + Matching Transformer, the second model of this codebase (docs/SINE.md)."""
from .decoder import MatchingTransformer
from .encoder import DINOv2Encoder, build_dinov2, interpolate_pos_embed
from .meta_arch import SINE
from .support_set import SINESupportSet
from .vos_memory import SINEMemory
from .weights import load_encoder_weights, load_sine_weights

__all__ = ["SINE", "SINESupportSet", "SINEMemory", "DINOv2Encoder",
           "MatchingTransformer", "build_dinov2", "interpolate_pos_embed", "load_encoder_weights",
           "load_sine_weights"]
