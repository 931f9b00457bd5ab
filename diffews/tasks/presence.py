# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Calibrating the presence decision (``tools/calibrate_presence.py``).

Episodes are drawn from one registered few-shot dataset (the training classes for calibration;
a held-out split only to report how the choice transfers), seeded: episode i takes a class
uniform over the dataset's classes, ``shot`` distinct supports of that class, a positive query
(another image of the class) and a negative query (an image that cannot hold the class,
``data.episodes.holds_class``). Both queries meet the same supports in one query pass, which
measures every signal of ``readout.PRESENCE_SIGNALS`` at once. Per signal: AUROC, and the
threshold of best F1 of "present" (or the lowest reaching ``precision``) with its precision and
recall (``evaluation.presence``); the signal of highest AUROC is chosen.
"""

import logging
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.episodes import holds_class
from ..data.records import load_sample
from ..evaluation.presence import auroc, best_threshold, precision_recall
from ..modeling.readout import PRESENCE_SIGNALS

logger = logging.getLogger(__name__)

__all__ = ["draw_presence_episodes", "dataset_episodes", "measure_signals", "calibrate",
           "config_fragment"]


def draw_presence_episodes(records: List[Dict], class_ids: List[int], n: int, shot: int,
                           seed: int) -> List[Dict]:
    """``n`` episodes ``{"class_id", "supports": [record], "positive": record, "negative":
    record}`` (see the module docstring)."""
    by_class = {c: [r for r in records if int(c) in [int(x) for x in r.get("classes", ())]]
                for c in class_ids}
    usable = [c for c in class_ids if len(by_class[c]) > shot]
    if not usable:
        raise ValueError(f"no class has more than {shot} images: cannot draw episodes")
    rng = np.random.RandomState(seed)
    out, negatives = [], {}
    for _ in range(n):
        c = int(usable[rng.randint(len(usable))])
        pool = by_class[c]
        picked = rng.choice(len(pool), shot + 1, replace=False)
        if c not in negatives:
            negatives[c] = [r for r in records if not holds_class(r, c)]
        others = negatives[c]
        if not others:
            raise ValueError(f"every image may hold class {c}: no negative query")
        out.append({"class_id": c, "supports": [pool[i] for i in picked[1:]],
                    "positive": pool[picked[0]], "negative": others[rng.randint(len(others))]})
    return out


def measure_signals(predictor, dataset: str, episodes: List[Dict]) -> Dict[str, np.ndarray]:
    """Every presence signal of each episode's positive then negative query:
    ``{"labels": (2n,) bool, <signal>: (2n,) float}``."""
    fmt = MetadataCatalog.get(dataset).label_format
    rows = []
    with predictor.measuring_signals():
        for e in episodes:
            c = e["class_id"]
            sup = [load_sample(r, c, fmt) for r in e["supports"]]
            supports = predictor.encode_supports([i for i, _ in sup], [m == 1 for _, m in sup])
            pos, label = load_sample(e["positive"], c, fmt)
            neg, _ = load_sample(e["negative"], c, fmt)
            results = predictor.predict([pos, neg], supports, batch_size=2, presence_threshold=-1)
            rows.append((bool((label == 1).any()), results[0]["signals"]))
            rows.append((False, results[1]["signals"]))
    out = {"labels": np.array([r[0] for r in rows])}
    for name in PRESENCE_SIGNALS:
        out[name] = np.array([r[1][name] for r in rows], np.float64)
    return out


def calibrate(samples: Dict[str, np.ndarray], precision: Optional[float] = None,
              held_out: Optional[Dict[str, np.ndarray]] = None) -> Dict:
    """Per signal AUROC, threshold, precision and recall (and, with ``held_out`` samples, the
    same threshold's numbers there); the chosen signal is the one of highest AUROC."""
    y = samples["labels"]
    report: Dict = {"signals": {}, "positives": int(y.sum()), "negatives": int((~y).sum())}
    for name in PRESENCE_SIGNALS:
        s = samples[name]
        t = best_threshold(y, s, precision)
        row = {"AUROC": auroc(y, s), "threshold": t, **precision_recall(y, s >= t)}
        if held_out is not None:
            h = held_out[name]
            row["held_out"] = {"AUROC": auroc(held_out["labels"], h),
                               **precision_recall(held_out["labels"], h >= t)}
        report["signals"][name] = row
    report["chosen"] = max(PRESENCE_SIGNALS, key=lambda n: report["signals"][n]["AUROC"])
    return report


def config_fragment(report: Dict) -> str:
    """The YAML fragment of the chosen signal and threshold, to merge into a config."""
    name = report["chosen"]
    return (f"# tools/calibrate_presence.py: AUROC {report['signals'][name]['AUROC']:.3f} on "
            f"{report['positives']} + {report['negatives']} training-class queries\n"
            f"MODEL:\n  DIFFEWS:\n    PRESENCE_SIGNAL: \"{name}\"\n"
            f"    PRESENCE_THRESHOLD: {report['signals'][name]['threshold']:.6g}\n")


def dataset_episodes(dataset: str, n: int, shot: int, seed: int) -> List[Dict]:
    """``draw_presence_episodes`` over a registered dataset's records and classes."""
    records = DatasetCatalog.get(dataset)
    return draw_presence_episodes(records, list(MetadataCatalog.get(dataset).class_ids), n, shot,
                                  seed)
