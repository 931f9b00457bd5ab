# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's in-context training samples: a reference image and a target image with instance ids
and classes (``source.py`` has the sample schema), drawn from a panoptic/instance mixture.

The SINE training sources are registered with the other datasets (``diffews/data/datasets/sine_*``);
few-shot datasets (your own layouts, the synthetic benchmark) feed it too (``fss_source.py``).
"""

from .augment import draw_transforms, to_model_image
from .dataset import (InContextTrainDataset, build_incontext_train_loader, make_source,
                      settings_from_config)
from .fss_source import FSSRecordSource
from .source import AugmentSettings, InContextSource

__all__ = ["AugmentSettings", "FSSRecordSource", "InContextSource", "InContextTrainDataset",
           "build_incontext_train_loader", "draw_transforms", "make_source",
           "settings_from_config", "to_model_image"]
