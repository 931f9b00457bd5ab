# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start's presence steps: calibrate the trained model's presence decision on the
synthetic *training* classes and write it into its checkpoint (so that
``DiffewSPredictor.from_pretrained(tiny_sd, model_final.pth)`` decides with it by default), and
the held-out episodes with as many absent-target ones that measure it."""

import logging
from typing import Callable, Dict, Optional, Tuple

from ..checkpoint import write_presence_calibration
from ..data.episodes import build_fss_test_loader
from ..evaluation import FSSEvaluator
from ..predictor import DiffewSPredictor
from ..tasks.presence import (calibrate, calibration_entry, dataset_episodes,
                              measure_signals)

logger = logging.getLogger(__name__)

__all__ = ["PRESENCE_EPISODES", "CALIBRATION_SEED", "calibrate_weights", "presence_loader"]

# training-class episodes (one present and one absent query each) of the calibration: half
# choose the signal and threshold, half report them (tasks/presence.py)
PRESENCE_EPISODES = 100
CALIBRATION_SEED = 0


def calibrate_weights(model, cfg, weights: str, episodes: int = PRESENCE_EPISODES) -> Dict:
    """Calibrate ``model`` (its weights loaded from ``weights``) on ``DATASETS.TRAIN[0]``,
    write the result into ``weights`` and adopt it; a calibration the weights already carry
    for the same dataset, episodes and seed is kept as it is.

    Returns:
        the calibration entry (``tasks.presence.calibration_entry``).
    """
    train = cfg.DATASETS.TRAIN[0]
    have = model.presence_calibration or {}
    if (have.get("dataset"), have.get("episodes"), have.get("seed")) == (
            train, episodes, CALIBRATION_SEED):
        logger.info("%s already carries its presence calibration: %s", weights, have)
        return have
    predictor = DiffewSPredictor(model, cfg.INPUT.IMAGE_SIZE)
    samples = measure_signals(predictor, train,
                              dataset_episodes(train, episodes, 1, CALIBRATION_SEED))
    report = calibrate(samples, seed=CALIBRATION_SEED)
    report.update(dataset=train, episodes=episodes, seed=CALIBRATION_SEED)
    for name, row in report["signals"].items():
        logger.info("presence calibration, %s: threshold %.4g, AUROC %.3f (choice half) / %.3f "
                    "(report half)", name, row["threshold"], row["choice"]["AUROC"],
                    row["report"]["AUROC"])
    entry = calibration_entry(report)
    write_presence_calibration(weights, entry)
    model.adopt_presence_calibration(entry)
    logger.info("presence: signal %s, threshold %.4g written into %s", entry["signal"],
                entry["threshold"], weights)
    return entry


def presence_loader(cfg, dataset: str, model) -> Optional[Tuple[Callable, Callable]]:
    """(loader, evaluator) factories of the held-out protocol episodes followed by as many
    absent-target ones (``TEST.FSS.NEGATIVE_RATIO`` 1), the evaluator reporting what the
    model's calibrated threshold empties; None for a model without a calibration."""
    threshold = model.default_presence_threshold()
    if threshold < 0:
        return None
    neg = cfg.clone()
    neg.defrost()
    neg.TEST.FSS.NEGATIVE_RATIO = 1.0
    neg.freeze()
    return (lambda: build_fss_test_loader(neg, dataset),
            lambda: FSSEvaluator(dataset, distributed=False, presence_threshold=threshold))
