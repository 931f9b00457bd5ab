# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The one interface between models and everything that uses them (tasks, web demo, tools).

``Predictor`` (``base.py``) is the interface; ``DiffewSPredictor`` implements it for DiffewS;
``build_predictor(cfg)`` builds the right one from a config (``MODEL.META_ARCHITECTURE``).
"""

from ..utils.errors import SupportSetError
from ..utils.inputs import IMAGE_EXTENSIONS, EncodedImage, list_images
from .base import Predictor
from .build import PREDICTORS, build_predictor, predictor_class
from .diffews import DiffewSPredictor

__all__ = ["DiffewSPredictor", "EncodedImage", "IMAGE_EXTENSIONS", "PREDICTORS", "Predictor",
           "SupportSetError", "build_predictor", "list_images", "predictor_class"]
