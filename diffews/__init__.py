# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""DiffewS: few-shot segmentation with a one-step Stable Diffusion UNet (NeurIPS 2024)."""

import warnings

# fvcore (imported by detectron2) calls torch.jit.script at import, which recent torch deprecates;
# filtered here, before detectron2 is first imported, instead of in every entry point
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from . import data  # noqa: E402,F401  (registers datasets)
from . import modeling  # noqa: F401  (registers the DiffewS meta-architecture)
from .checkpoint import DiffewSCheckpointer
from .config import add_diffews_config
from .sine_config import add_sine_config
from .modeling import SINE, DiffewS, SINESupportSet, SupportSet
from .modeling.readout import prediction_score_array as prediction_score
from .predictor import DiffewSPredictor, EncodedImage

__all__ = ["DiffewS", "DiffewSCheckpointer", "DiffewSPredictor", "EncodedImage", "SupportSet",
           "SINE", "SINESupportSet", "add_diffews_config", "add_sine_config", "prediction_score"]
__version__ = "0.1.0"
