# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The one few-shot segmentation evaluation loop: episodes in, evaluator fed.

Every FSS evaluation runs it: ``tools/train_net.py`` (``--eval-only`` and periodic evaluation,
``engine/trainer.py``), ``inference_fss/run_fss.py`` (``tasks/fss``, journalled chunks), the quick
start (the model beside the trivial baselines) and the speed modes' accuracy
(``benchmark/modes.py``). It is detectron2's ``inference_on_dataset`` without its timing report,
with a progress bar that shows the running mIoU and a hook after each batch.
"""

from typing import Callable, Dict, Iterable, List, Optional

import torch
from detectron2.utils import comm
from tqdm import tqdm

__all__ = ["run_episodes", "evaluate_episodes"]


def run_episodes(predict: Callable[[List[Dict]], List[Dict]], loader: Iterable[List[Dict]],
                 evaluator, desc: str = "episodes",
                 on_batch: Optional[Callable[[List[Dict], List[Dict]], None]] = None,
                 progress: bool = True) -> None:
    """Feed ``evaluator.process`` with ``predict(batch)`` for every batch of ``loader``.

    Args:
        predict: batch of episode dicts (``data.episodes.EpisodeMapper``) -> one output dict per
            episode with "pred_mask" (S, S) bool (a meta-architecture in eval mode, a predictor's
            ``predict_episodes``, a baseline).
        loader: iterable of batches (``data.episodes.build_fss_test_loader``).
        evaluator: an ``FSSEvaluator`` (already reset; not evaluated here).
        desc: the progress bar's label.
        on_batch: called with (batch, outputs) after the evaluator saw them.
        progress: show the bar (main process only).
    """
    bar = tqdm(loader, desc=desc, dynamic_ncols=True,
               disable=not (progress and comm.is_main_process()))
    with torch.no_grad():
        for inputs in bar:
            outputs = predict(inputs)
            evaluator.process(inputs, outputs)
            if hasattr(evaluator, "running_miou"):
                bar.set_postfix(mIoU=f"{evaluator.running_miou():.2f}")
            if on_batch is not None:
                on_batch(inputs, outputs)


def evaluate_episodes(predict: Callable[[List[Dict]], List[Dict]], loader: Iterable[List[Dict]],
                      evaluator, desc: str = "episodes", progress: bool = True) -> Optional[Dict]:
    """``evaluator.reset()``, ``run_episodes``, then ``evaluator.evaluate()`` (its dict, e.g.
    ``{"fss": {"mIoU", "FB-IoU", ...}}``; None in processes other than the main one when the
    evaluator gathers)."""
    evaluator.reset()
    run_episodes(predict, loader, evaluator, desc, progress=progress)
    return evaluator.evaluate()
