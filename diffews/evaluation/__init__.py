# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from .fss_evaluation import FSSEvaluator, compute_metrics, episode_counts

__all__ = ["FSSEvaluator", "compute_metrics", "episode_counts"]
