# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The tasks, each on the ``Predictor`` interface and entered through its package's ``__init__``:
few-shot semantic segmentation benchmarks (``fss``), few-shot instance segmentation (``fsod``),
video object segmentation (``vos``) and labelling a folder of images (``autolabel``); beside them
the presence calibration (``presence``), resumable runs (``resume``), the demo's outputs
(``demo``) and the main-process-first helper (``distributed``)."""
