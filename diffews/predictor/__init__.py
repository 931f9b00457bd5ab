# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The one interface between models and everything that uses them (tasks, web demo, tools).

``Predictor`` (``base.py``) is the interface; ``DiffewSPredictor`` (``diffews.py``,
``diffews_video.py``) and ``SINEPredictor`` (``sine.py``, ``sine_video.py``) implement it;
``build_predictor(cfg)`` builds the right one from a config (``MODEL.META_ARCHITECTURE``).
"""

from ..utils.errors import SupportSetError
from ..utils.inputs import IMAGE_EXTENSIONS, EncodedImage, list_images
from .base import Predictor
from .build import PREDICTORS, build_predictor, predictor_class
from .diffews import DiffewSPredictor
from .sine import SINEEncoded, SINEPredictor

__all__ = ["DiffewSPredictor", "EncodedImage", "IMAGE_EXTENSIONS", "PREDICTORS", "Predictor",
           "SINEEncoded", "SINEPredictor", "SupportSetError", "build_predictor", "list_images",
           "predictor_class"]
