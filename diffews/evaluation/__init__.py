# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from .fss_evaluation import FSSEvaluator, compute_metrics, episode_counts
from .fss_loop import evaluate_episodes, run_episodes
from .instance_evaluation import FSODEvaluator, aggregate_seeds, write_coco_results
from .davis_metrics import VOSEvaluationError
from .vos_evaluation import evaluate_davis, VOSEvaluator

__all__ = [
    "FSSEvaluator",
    "compute_metrics",
    "episode_counts",
    "evaluate_episodes",
    "run_episodes",
    "FSODEvaluator",
    "aggregate_seeds",
    "write_coco_results",
    "VOSEvaluator",
    "VOSEvaluationError",
    "evaluate_davis",
]
