# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tasks built on ``DiffewSPredictor``: video object segmentation (``vos``), few-shot instance
segmentation (``fsod``), mask to scored instances (``instances``) and the demo's outputs
(``demo``)."""
