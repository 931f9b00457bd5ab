# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot segmentation benchmarks, registered in detectron2's catalogs on import.

Registering reads nothing from disk: the root (``$DETECTRON2_DATASETS``, default ``datasets``) and
the split lists are read when a dataset is loaded. See datasets/README.md for the folder trees.
"""

from . import coco20i, fss1000, lvis92i, pascal5i  # noqa: F401  (register on import)
from . import custom, incontext  # noqa: F401  (custom: by call or DATASETS.CUSTOM; in-context sets)
from . import coco_fsod  # noqa: F401  (few-shot instance segmentation, TFA protocol)
from . import vos  # noqa: F401  (DAVIS 2016/2017, YouTube-VOS 2018)
from . import synthetic  # noqa: F401  (the generated benchmark of the tests and the quick start)
from . import sine_instances, sine_objects365, sine_panoptic  # noqa: F401  (SINE training)
from .lvis92i import lvis92i_test_name

__all__ = ["lvis92i_test_name"]
