# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``build_predictor(cfg)``: the one way from a config to a ``Predictor``."""

from typing import Dict, Type

from ..utils.errors import UsageError
from .base import Predictor
from .diffews import DiffewSPredictor
from .sine import SINEPredictor

__all__ = ["PREDICTORS", "predictor_class", "build_predictor"]

# MODEL.META_ARCHITECTURE -> its predictor
PREDICTORS: Dict[str, Type[Predictor]] = {p.architecture: p for p in (DiffewSPredictor,
                                                                      SINEPredictor)}


def predictor_class(cfg) -> Type[Predictor]:
    """The predictor class of ``cfg.MODEL.META_ARCHITECTURE`` (``UsageError`` naming the known
    ones for any other)."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in PREDICTORS:
        raise UsageError(f"MODEL.META_ARCHITECTURE {name!r} has no predictor; expected one of "
                         f"{sorted(PREDICTORS)}")
    return PREDICTORS[name]


def build_predictor(cfg) -> Predictor:
    """Build ``cfg``'s model, load ``MODEL.WEIGHTS`` and wrap it in its predictor."""
    return predictor_class(cfg).from_config(cfg)
