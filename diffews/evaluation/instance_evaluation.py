# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation metrics: COCO bbox and segm AP on the novel classes.

Protocol: docs/PROTOCOLS.md section 2f (TFA's evaluator, copied by SINE): pycocotools ``COCOeval``
over the whole test json with ``params.catIds = _novel_classes`` (the 20 COCO ids of the VOC
classes), reported as nAP, nAP50, ..., and ``AP := nAP``. For COCO-to-VOC SINE uses detectron2's
stock ``COCOEvaluator`` on the converted json, i.e. every one of its 20 categories.

``FSODEvaluator`` is detectron2's ``COCOEvaluator`` (official pycocotools, ``use_fast_impl=False``)
whose ground truth keeps only the test set's ``eval_category_ids`` (categories and their
annotations, every image). COCOeval then defaults to exactly those ``catIds`` and, since it only
reads ground truth and detections of ``params.catIds``, the numbers equal TFA's restriction.
Its dict is detectron2's: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...},
"segm": {...}}`` in percent, all meaning the novel classes.

Two conventions differ from TFA's old evaluator and are detectron2's: for ``segm`` the results'
boxes are dropped so small/medium/large use the mask area (TFA kept them: its segm APs/APm/APl
use box areas; AP, AP50, AP75 are unaffected), and an evaluation without any detection gives NaN.

``aggregate_seeds`` is TFA's seed aggregation (docs/PROTOCOLS.md section 2f): mean, ``np.std``
(population, ddof=0) and the 95% interval ``1.96 * std / sqrt(n)`` per metric over the seeds.
"""

import contextlib
import io
import itertools
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from pycocotools.coco import COCO
from tabulate import tabulate

from ..data.datasets.roots import require
from ..data.datasets.split_files import save_json
from ..data.datasets.registration import update_metadata

logger = logging.getLogger(__name__)

__all__ = ["FSODEvaluator", "restrict_coco", "coco_results", "write_coco_results",
           "aggregate_seeds", "format_seed_table", "METRICS"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"


def restrict_coco(coco_api: COCO, category_ids: Sequence[int]) -> COCO:
    """A copy of a COCO ground truth with only ``category_ids`` (categories and annotations);
    every image is kept."""
    keep = set(int(c) for c in category_ids)
    data = {k: v for k, v in coco_api.dataset.items() if k not in ("categories", "annotations")}
    data["categories"] = [c for c in coco_api.dataset.get("categories", []) if c["id"] in keep]
    data["annotations"] = [a for a in coco_api.dataset.get("annotations", [])
                           if a["category_id"] in keep]
    out = COCO()
    out.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


def coco_results(predictions: List[Dict], id_map: Mapping[int, int]) -> List[Dict]:
    """COCO results (dataset category ids) from ``COCOEvaluator`` predictions (contiguous ids),
    copied, in order."""
    reverse = {v: k for k, v in id_map.items()}
    out = []
    for r in itertools.chain(*[p.get("instances", []) for p in predictions]):
        r = dict(r)
        r["category_id"] = reverse[r["category_id"]]
        out.append(r)
    return out


def write_coco_results(results: List[Dict], path: str) -> str:
    """Write COCO results (RLE ``segmentation`` with str counts) atomically; returns ``path``."""
    save_json(results, path)
    logger.info("Wrote %d detections to %s", len(results), path)
    return path


class FSODEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator restricted to a test set's ``eval_category_ids``.

    ``process`` takes ``outputs[i]["instances"]`` (detectron2 ``Instances`` at the original image
    size with ``pred_boxes`` XYXY, ``scores``, ``pred_classes`` contiguous 0..19, ``pred_masks``
    (N, H, W) bool), as COCOEvaluator does. ``evaluate`` writes ``<output_dir>/
    coco_instances_results.json`` atomically (main process) and returns the metric dict.
    ``root``: the datasets root of ``coco_test_novel`` / ``VOCSegm_val_novel`` (default
    ``$DETECTRON2_DATASETS``), read now.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None,
                 distributed: bool = True, tasks=("bbox", "segm"),
                 max_dets_per_image: Optional[int] = None, root: Optional[str] = None):
        from ..data.datasets.coco_fsod import TEST_SETS
        from ..data.datasets.coco_fsod_reader import fsod_test_metadata

        ours = dataset_name in TEST_SETS.values()
        if ours:  # the json path follows $DETECTRON2_DATASETS now, even if the set was not loaded
            update_metadata(dataset_name, **fsod_test_metadata(dataset_name, root))
            require(MetadataCatalog.get(dataset_name).json_file, f"{dataset_name} annotation file")
        super().__init__(dataset_name, tasks=tasks, distributed=distributed, output_dir=None,
                         max_dets_per_image=max_dets_per_image, use_fast_impl=False)
        if ours:  # check the json's categories (VOC: match them to the novel classes by name)
            update_metadata(dataset_name, **fsod_test_metadata(
                dataset_name, root, categories=self._coco_api.dataset.get("categories", [])))
        meta = self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "eval_category_ids"):
            raise ValueError(f"{dataset_name}: no eval_category_ids in its metadata; FSODEvaluator "
                             "evaluates the few-shot instance segmentation test sets")
        self._eval_ids = [int(c) for c in meta.eval_category_ids]
        self._coco_api = restrict_coco(self._coco_api, self._eval_ids)
        have = set(self._coco_api.getCatIds())
        if have != set(self._eval_ids):
            raise ValueError(f"{meta.json_file}: categories {sorted(set(self._eval_ids) - have)} "
                             "are missing from the annotation file")
        self._results_dir = output_dir

    def _eval_predictions(self, predictions, img_ids=None):
        if self._results_dir:
            write_coco_results(
                coco_results(predictions, self._metadata.thing_dataset_id_to_contiguous_id),
                os.path.join(self._results_dir, RESULTS_FILE))
        super()._eval_predictions(predictions, img_ids=img_ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        # COCOeval orders per-class precision by sorted dataset id: name the classes that way
        id_map = self._metadata.thing_dataset_id_to_contiguous_id
        names = [self._metadata.thing_classes[id_map[i]] for i in sorted(id_map)]
        return super()._derive_coco_results(coco_eval, iou_type, class_names=names)


def aggregate_seeds(results: Mapping[int, Mapping[str, Mapping[str, float]]],
                    metrics: Sequence[str] = METRICS) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean and spread of each task's metrics over seeds (docs/PROTOCOLS.md section 2f).

    Args:
        results: seed -> evaluator dict (``{"bbox": {"AP": ..}, "segm": {..}}``).
        metrics: metric names to aggregate (default AP .. APl).
    Returns:
        task -> metric -> {"mean", "std" (population, ``np.std``), "ci95" (``1.96 std /
        sqrt(n)``), "n"}, over the seeds that report the metric.
    """
    if not results:
        raise ValueError("aggregate_seeds: no results")
    tasks = sorted({t for r in results.values() for t in r})
    out: Dict[str, Dict[str, Dict[str, float]]] = OrderedDict()
    for task in tasks:
        out[task] = OrderedDict()
        for m in metrics:
            vals = [float(r[task][m]) for _, r in sorted(results.items())
                    if task in r and m in r[task]]
            if vals:
                std = float(np.std(vals))
                out[task][m] = {"mean": float(np.mean(vals)), "std": std,
                                "ci95": 1.96 * std / math.sqrt(len(vals)), "n": len(vals)}
    return out


def format_seed_table(aggregate: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A pipe table: one row per task, ``mean ± std`` per metric."""
    tasks = list(aggregate)
    metrics = list(dict.fromkeys(m for t in tasks for m in aggregate[t]))
    rows = [[t] + [f"{aggregate[t][m]['mean']:.2f} ± {aggregate[t][m]['std']:.2f}"
                   if m in aggregate[t] else "" for m in metrics] for t in tasks]
    n = max((v["n"] for t in tasks for v in aggregate[t].values()), default=0)
    return tabulate(rows, headers=[f"task ({n} seeds)"] + metrics, tablefmt="pipe")
