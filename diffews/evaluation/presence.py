# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Presence metrics: how well a per-episode signal separates queries that hold the support's
object (positives) from those that do not (absent-target episodes, ``data/episodes/negatives.py``).

* AUROC: the probability that a random positive's signal exceeds a random negative's, ties
  counting one half (the Mann-Whitney U statistic over n_pos x n_neg).
* precision / recall of the decision "present", positives being the queries that hold the object:
  precision = TP / (TP + FP), recall = TP / (TP + FN) (1.0 where the denominator is 0).
* thresholds: the one of best F1 of "present" among the observed signal values (decide present
  when signal >= threshold), or the lowest one whose precision reaches a target with at least
  ``min_true_positives`` true positives (one top-scoring positive reaches precision 1 on any
  data: such a target is not "reached").
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["auroc", "precision_recall", "best_threshold", "presence_report", "empty_rates",
           "MIN_TRUE_POSITIVES"]

MIN_TRUE_POSITIVES = 10


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (NaN without both kinds)."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    # rank-based U statistic with average ranks for ties
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(allv.size, np.float64)
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    u = r[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def precision_recall(labels: Sequence[bool], decisions: Sequence[bool]) -> Dict[str, float]:
    """Precision, recall and F1 of the decisions "present" against ``labels``."""
    y = np.asarray(labels, bool)
    d = np.asarray(decisions, bool)
    tp = int(np.sum(y & d))
    fp = int(np.sum(~y & d))
    fn = int(np.sum(y & ~d))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "F1": f1}


def best_threshold(labels: Sequence[bool], scores: Sequence[float],
                   precision: Optional[float] = None,
                   min_true_positives: int = MIN_TRUE_POSITIVES) -> Tuple[float, bool]:
    """The threshold (present when score >= it) of best F1 over the observed finite scores, or
    with ``precision`` the lowest one whose precision reaches it with at least
    ``min_true_positives`` true positives.

    Returns:
        (threshold, reached): ``reached`` is False when a ``precision`` target cannot be met
        (the threshold is then the best-F1 one); True otherwise.
    """
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    candidates = np.unique(s[np.isfinite(s)])
    if candidates.size == 0:
        raise ValueError("best_threshold: no finite score")
    best, best_value = candidates[-1], -1.0
    for t in candidates:  # ascending: the first that reaches a precision keeps most recall
        d = s >= t
        pr = precision_recall(y, d)
        if precision is not None and pr["precision"] >= precision \
                and int(np.sum(y & d)) >= min_true_positives:
            return float(t), True
        if pr["F1"] > best_value:
            best, best_value = t, pr["F1"]
    return float(best), precision is None


def empty_rates(labels: Sequence[bool], scores: Sequence[float], threshold: float
                ) -> Dict[str, float]:
    """Deciding at ``threshold``: the share (%) of absent queries (labels False) and of present
    ones judged absent, i.e. given an empty mask: ``{"absent-empty", "present-empty"}``."""
    y = np.asarray(labels, bool)
    under = ~(np.asarray(scores, np.float64) >= threshold)  # NaN counts as under
    return {"absent-empty": 100.0 * float(under[~y].mean()) if (~y).any() else 0.0,
            "present-empty": 100.0 * float(under[y].mean()) if y.any() else 0.0}


def presence_report(labels: Sequence[bool], scores: Sequence[float],
                    decisions: Sequence[bool]) -> Dict[str, float]:
    """``{"presence-AUROC", "presence-precision", "presence-recall", "num_absent"}``, x100 for
    the rates (the decisions: whether each mask was found, i.e. is not empty)."""
    pr = precision_recall(labels, decisions)
    return {"presence-AUROC": 100.0 * auroc(labels, scores),
            "presence-precision": 100.0 * pr["precision"],
            "presence-recall": 100.0 * pr["recall"],
            "num_absent": int(np.sum(~np.asarray(labels, bool)))}
