# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation (``inference_vos/``): ``run(cfg, job)`` segments a
registered dataset's videos (``job.py``) with ``VOSEngine`` (``engine.py``), frame by frame through
the predictor's video tracker."""

from .engine import VOSEngine
from .job import VIS_FRAMES, VOSJob, check, load_vos_records, overlay_labels, run

__all__ = ["VIS_FRAMES", "VOSEngine", "VOSJob", "check", "load_vos_records", "overlay_labels",
           "run"]
