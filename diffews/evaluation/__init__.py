# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from .fss_evaluation import FSSEvaluator, compute_metrics, episode_counts
from .instance_evaluation import FSODEvaluator, aggregate_seeds, write_coco_results
from .vos_evaluation import VOSEvaluationError, VOSEvaluator, evaluate_davis

__all__ = ["FSSEvaluator", "compute_metrics", "episode_counts", "FSODEvaluator",
           "aggregate_seeds", "write_coco_results", "VOSEvaluator", "VOSEvaluationError",
           "evaluate_davis"]
