# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A few-shot segmentation evaluation: folds of a benchmark, or your own dataset, resumable.

``FSSJob`` says what to evaluate; ``check`` does everything that needs no model (datasets, episodes,
the output folder's journal) and ``run`` evaluates each fold (``chunks.evaluate_fold``), prints
mIoU / FB-IoU per fold and their mean over folds and writes ``results.json`` in the output folder.
``MODEL.WEIGHTS`` may contain ``{fold}``: each fold then loads its own weights, as the strict
few-shot setting needs. Episodes are fixed lists (seed ``TEST.FSS.SEED``), identical for 1 or N
processes; every ``chunk_episodes`` episodes of a fold are journalled in ``<output>/journal/``, so
the same job started again after a kill evaluates only the chunks left.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from detectron2.utils import comm
from tabulate import tabulate

from ...config import fold_weights
from ...data.episodes import BENCHMARK_FOLDS, test_dataset_name, test_episodes
from ...predictor import build_predictor
from ...utils.atomic import atomic_write_json
from ..resume import JOURNAL, check_resume, files_identity, open_journal, run_fingerprint
from .chunks import DEFAULT_CHUNK, episodes_identity, evaluate_fold

logger = logging.getLogger(__name__)

__all__ = ["FSSJob", "check", "run"]


@dataclass
class FSSJob:
    """What ``run`` evaluates (``inference_fss/run_fss.py`` builds it from its flags).

    Attributes:
        benchmark: "coco", "pascal", "fss", "lvis" or "synthetic" (or None with ``layout``).
        layout: your own dataset's layout, "coco", "semseg" or "folder" (datasets/README.md).
        dataset_root: ``layout``'s folder; for a benchmark the datasets root (already set as
            ``$DETECTRON2_DATASETS`` by the caller).
        coco_json, class_names: ``layout`` "coco"'s instances json, "semseg"'s class-name list.
        folds: fold indices (a custom dataset has fold 0).
        output: results folder.
        chunk_episodes: episodes per journal shard.
        save_vis: pictures of the first N episodes of each fold.
        overwrite: start again in a folder holding another job's journal.
    """

    benchmark: Optional[str] = None
    layout: Optional[str] = None
    dataset_root: Optional[str] = None
    coco_json: Optional[str] = None
    class_names: Optional[str] = None
    folds: List[int] = field(default_factory=lambda: [0])
    output: str = "output/fss"
    chunk_episodes: int = DEFAULT_CHUNK
    save_vis: int = 0
    overwrite: bool = False

    def folds_of(self) -> int:
        """How many folds the benchmark has (1 for your own dataset)."""
        return BENCHMARK_FOLDS[self.benchmark] if self.benchmark else 1

    def weights(self, cfg) -> List[str]:
        """Every fold's ``MODEL.WEIGHTS`` (``{fold}`` replaced), without repeats."""
        return sorted({fold_weights(cfg, f) for f in self.folds})


def check(cfg, job: FSSJob) -> Dict[int, tuple]:
    """Everything that needs no model, per fold: its dataset (a custom layout is registered and
    read here: a bad layout fails now), weights and resolved episodes; an output folder holding
    another job's journal is refused unless ``job.overwrite``.

    Returns:
        {fold: (dataset name, weights, episodes)}.
    """
    folds = {}
    for fold in job.folds:
        if job.layout:
            from ...data.datasets.custom import custom_test_dataset

            name = custom_test_dataset(job.layout, job.dataset_root, coco_json=job.coco_json,
                                       class_names=job.class_names, shot=cfg.TEST.FSS.SHOT)
        else:
            name = test_dataset_name(job.benchmark, fold, cfg.TEST.FSS.SHOT)
        folds[fold] = (name, fold_weights(cfg, fold), test_episodes(cfg, name))
    check_resume(os.path.join(job.output, JOURNAL), _fingerprint(cfg, job, folds), job.overwrite,
                 f"--output {job.output}")
    return folds


def _fingerprint(cfg, job: FSSJob, folds: dict) -> dict:
    """What changes results.json: the config, the weights of each fold, the model's other files,
    the benchmark or layout and each fold's episodes."""
    return run_fingerprint(
        cfg, weights=None, benchmark=job.benchmark or f"layout {job.layout}",
        folds={str(f): {"dataset": name, "weights": files_identity(w),
                        "episodes": episodes_identity(episodes)}
               for f, (name, w, episodes) in folds.items()})


def _summarize(fold_results: dict, job: FSSJob, shot: int) -> dict:
    """Per-fold table and mean over folds; writes results.json (atomically)."""
    benchmark = job.benchmark or f"custom ({job.layout}: {job.dataset_root})"
    rows, summary = [], {"benchmark": benchmark, "shot": shot, "folds": {}}
    for fold, (name, res) in fold_results.items():
        if job.layout:
            from ...data.datasets.custom import per_class_iou_by_name

            per_class = per_class_iou_by_name(name, res)
        else:
            per_class = res.get("per_class_iou") or {
                k[len("IoU-"):]: v for k, v in res.items() if k.startswith("IoU-")}
        summary["folds"][fold] = {"dataset": name, "mIoU": res["mIoU"], "FB-IoU": res["FB-IoU"],
                                  "num_episodes": res.get("num_episodes"),
                                  "skipped_episodes": res.get("skipped_episodes", []),
                                  "per_class_iou": per_class}
        rows.append([fold, name, f"{res['mIoU']:.2f}", f"{res['FB-IoU']:.2f}"])
    n = len(fold_results)
    folds = summary["folds"].values()
    summary["mean"] = {k: sum(f[k] for f in folds) / n for k in ("mIoU", "FB-IoU")}
    rows.append(["mean", f"{n} fold(s)", f"{summary['mean']['mIoU']:.2f}",
                 f"{summary['mean']['FB-IoU']:.2f}"])
    logger.info("%s %d-shot:\n%s", benchmark, shot,
                tabulate(rows, headers=["fold", "dataset", "mIoU", "FB-IoU"], tablefmt="pipe"))
    atomic_write_json(summary, os.path.join(job.output, "results.json"), indent=2)
    return summary


def run(cfg, job: FSSJob, checked: Optional[Dict[int, tuple]] = None, predictor=None
        ) -> Optional[dict]:
    """Evaluate every fold of ``job`` in this process (call it in every process of a launch).

    Args:
        checked: what ``check(cfg, job)`` returned, if the caller ran it already.
        predictor: a ``Predictor`` to use (default: ``build_predictor(cfg)`` with the first
            fold's weights); a fold whose weights differ from the loaded ones loads its own.
    Returns:
        the results.json dict in the main process (``{"benchmark", "shot", "folds": {fold:
        {"mIoU", "FB-IoU", ...}}, "mean"}``), None in the others.
    """
    folds = checked if checked is not None else check(cfg, job)
    stale = [os.path.join(job.output, "results.json")] + [os.path.join(job.output, name)
                                                           for name, _, _ in folds.values()]
    journal = open_journal(os.path.join(job.output, JOURNAL), _fingerprint(cfg, job, folds),
                           job.overwrite, f"--output {job.output}", stale=stale)
    fold_results = {}
    for fold, (name, weights, episodes) in folds.items():
        if predictor is None:
            fold_cfg = cfg.clone()
            fold_cfg.defrost()
            fold_cfg.MODEL.WEIGHTS = weights
            predictor = build_predictor(fold_cfg)
        elif weights != predictor.weights:
            predictor.load_weights(weights)  # strict few-shot weights are per fold
        res = evaluate_fold(cfg, predictor, name, episodes, fold, journal, job.output,
                            chunk=job.chunk_episodes, save_vis=job.save_vis)
        if comm.is_main_process():
            fold_results[fold] = (name, res)
            logger.info("%s: mIoU %.2f  FB-IoU %.2f", name, res["mIoU"], res["FB-IoU"])
    if comm.is_main_process():
        return _summarize(fold_results, job, cfg.TEST.FSS.SHOT)
    return None
