# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation, TFA protocol (``inference_fsod/``): ``run(cfg, job)``
(``job.py``) with each split's support sets encoded once (``supports.py``) and the test images
journalled per shard (``journal.py``)."""

from .job import FSODJob, check, check_fsod_config, evaluate_fsod, fsod_inference, run
from .supports import class_support_sets, support_records, support_set_path

__all__ = ["FSODJob", "check", "check_fsod_config", "class_support_sets", "evaluate_fsod",
           "fsod_inference", "run", "support_records", "support_set_path"]
