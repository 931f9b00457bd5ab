# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot semantic segmentation benchmarks (``inference_fss/``): ``run(cfg, job)`` evaluates the
folds an ``FSSJob`` names (``job.py``), journalled per chunk of episodes (``chunks.py``);
``run_incontext`` runs every benchmark and shot with one set of weights (``incontext.py``)."""

from .chunks import DEFAULT_CHUNK
from .incontext import BENCHMARKS, NAMES, run_incontext
from .job import FSSJob, check, run

__all__ = ["BENCHMARKS", "DEFAULT_CHUNK", "FSSJob", "NAMES", "check", "run", "run_incontext"]
