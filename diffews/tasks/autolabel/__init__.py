# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Label a folder of images from a few examples per class (``tools/autolabel.py``):
``run(cfg, job)`` (``job.py``) with the supports read from a class-folder tree, a COCO json or
saved support sets (``supports.py``) and the outputs written from the journal (``io.py``)."""

from .io import ANNOTATIONS, MASKS, SKIP_PREFIX, SKIPPED, list_label_images, mask_path
from .job import LabelJob, check_job, job_fingerprint, label_image, run
from .supports import SupportSource, read_supports, support_mask, support_sets

__all__ = ["ANNOTATIONS", "LabelJob", "MASKS", "SKIPPED", "SKIP_PREFIX", "SupportSource",
           "check_job", "job_fingerprint", "label_image", "list_label_images", "mask_path",
           "read_supports", "run", "support_mask", "support_sets"]
