# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Calibrating the presence decision (``tools/calibrate_presence.py``).

Episodes are drawn from one registered few-shot dataset (the training classes for calibration;
a held-out split only to report how the choice transfers), seeded: episode i takes a class
uniform over the dataset's classes, ``shot`` distinct supports of that class, a positive query
(another image of the class) and a negative query (an image that cannot hold the class,
``data.episodes.holds_class``). Both queries meet the same supports in one query pass, which
measures every signal the model has (``readout.PRESENCE_SIGNALS``) at once.

The episodes are split in two halves by a permutation of ``np.random.RandomState(seed)``: the
*choice* half chooses, per signal, the threshold of best F1 of "present" (or the lowest whose
precision reaches ``precision`` with at least ``min_true_positives`` true positives), and the
signal of highest AUROC; the *report* half (never used to choose) reports each signal's AUROC and
its threshold's precision, recall and empty rates (``evaluation.presence``), and so does a
held-out dataset when given.
"""

import logging
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.episodes import holds_class
from ..data.records import load_sample
from ..evaluation.presence import (MIN_TRUE_POSITIVES, auroc, best_threshold, empty_rates,
                                   precision_recall)
from ..modeling.readout import PRESENCE_SIGNALS

logger = logging.getLogger(__name__)

__all__ = ["draw_presence_episodes", "dataset_episodes", "measure_signals", "split_halves",
           "calibrate", "config_fragment", "calibration_entry"]


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
    """Every presence signal the model has, of each episode's positive then negative query:
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
        if name in rows[0][1]:
            out[name] = np.array([r[1][name] for r in rows], np.float64)
    return out


def split_halves(samples: Dict[str, np.ndarray], seed: int):
    """(choice half, report half) of ``measure_signals`` samples, episode by episode (an
    episode's positive and negative query stay together), by a seeded permutation."""
    n = len(samples["labels"]) // 2
    order = np.random.RandomState(seed).permutation(n)
    halves = []
    for part in (np.sort(order[:(n + 1) // 2]), np.sort(order[(n + 1) // 2:])):
        idx = np.stack([2 * part, 2 * part + 1], axis=1).ravel()
        halves.append({k: v[idx] for k, v in samples.items()})
    return halves[0], halves[1]


def _numbers(samples: Dict[str, np.ndarray], name: str, threshold: float) -> Dict:
    y, s = samples["labels"], samples[name]
    return {"AUROC": auroc(y, s), **precision_recall(y, s >= threshold),
            **empty_rates(y, s, threshold), "queries": int(len(y))}


def calibrate(samples: Dict[str, np.ndarray], precision: Optional[float] = None,
              held_out: Optional[Dict[str, np.ndarray]] = None, seed: int = 0,
              min_true_positives: int = MIN_TRUE_POSITIVES) -> Dict:
    """Choose on one seeded half of ``samples``, report on the other (module docstring).

    Returns:
        ``{"signals": {name: {"threshold", "reached", "choice": {...}, "report": {...},
        "held_out": {...}}}, "chosen", "positives", "negatives", "choice_queries",
        "report_queries", "unreached"}`` where each numbers dict has "AUROC", "precision",
        "recall", "F1", "absent-empty", "present-empty" (%) and "queries"; "unreached" is a
        one-line message when the precision target cannot be reached (else "").
    """
    if len(samples["labels"]) < 4:
        raise ValueError("calibration needs at least 2 episodes (one per half)")
    choice, report_half = split_halves(samples, seed)
    y = samples["labels"]
    names = [n for n in PRESENCE_SIGNALS if n in samples]
    report: Dict = {"signals": {}, "positives": int(y.sum()), "negatives": int((~y).sum()),
                    "choice_queries": int(len(choice["labels"])),
                    "report_queries": int(len(report_half["labels"]))}
    for name in names:
        t, reached = best_threshold(choice["labels"], choice[name], precision,
                                    min_true_positives)
        row = {"threshold": t, "reached": reached, "choice": _numbers(choice, name, t),
               "report": _numbers(report_half, name, t)}
        if held_out is not None:
            row["held_out"] = _numbers(held_out, name, t)
        report["signals"][name] = row
    chosen = max(names, key=lambda n: report["signals"][n]["choice"]["AUROC"])
    report["chosen"] = chosen
    report["unreached"] = "" if report["signals"][chosen]["reached"] else (
        f"precision {precision} cannot be reached with >= {min_true_positives} true positives "
        f"on the {report['choice_queries']} choice queries for signal {chosen}: its best-F1 "
        f"threshold is used instead")
    return report


def calibration_entry(report: Dict) -> Dict:
    """What a checkpoint carries of a calibration (``checkpoint.write_presence_calibration``)."""
    name = report["chosen"]
    row = report["signals"][name]
    return {"signal": name, "threshold": float(row["threshold"]),
            "choice_AUROC": float(row["choice"]["AUROC"]),
            "report_AUROC": float(row["report"]["AUROC"]),
            "dataset": report.get("dataset"), "episodes": report.get("episodes"),
            "seed": report.get("seed")}


def config_fragment(report: Dict) -> str:
    """The YAML fragment of the chosen signal and threshold, to merge into a config."""
    name = report["chosen"]
    row = report["signals"][name]
    return (f"# tools/calibrate_presence.py: AUROC {row['choice']['AUROC']:.3f} on "
            f"{report['choice_queries']} training-class queries (choice half), "
            f"{row['report']['AUROC']:.3f} on the other {report['report_queries']}\n"
            f"MODEL:\n  DIFFEWS:\n    PRESENCE_SIGNAL: \"{name}\"\n"
            f"    PRESENCE_THRESHOLD: {row['threshold']:.6g}\n")


def dataset_episodes(dataset: str, n: int, shot: int, seed: int) -> List[Dict]:
    """``draw_presence_episodes`` over a registered dataset's records and classes."""
    records = DatasetCatalog.get(dataset)
    return draw_presence_episodes(records, list(MetadataCatalog.get(dataset).class_ids), n, shot,
                                  seed)
