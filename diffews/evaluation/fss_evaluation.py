# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episodic few-shot segmentation metrics: mIoU and FB-IoU, as HSNet computes them.

Protocol: docs/PROTOCOLS.md section 2a (HSNet's per-episode counts and per-class sums, which
Matcher, DiffewS and SINE copy). For one episode with prediction P and ground truth G (values 0, 1,
255 = ignore):

* pixels where G == 255 are set to 255 in P too and fall outside the 2-bin histogram over {0, 1},
  so they count in no bin (PASCAL-5i boundaries);
* for each bin b in {0 = background, 1 = foreground}:
  ``I_b = #{P == G == b}``, ``U_b = #{P == b} + #{G == b} - I_b``.

Counts are summed per class over all episodes (as int64; HSNet sums float32, which rounds once a
sum exceeds 2**24 pixels and is the only intended difference) and then, with C the fold's classes
(``class_ids``)::

    IoU_c  = sum_e I_fg(e, c) / max(sum_e U_fg(e, c), 1)
    mIoU   = 100 * mean_{c in C} IoU_c            # a fold class never sampled counts as IoU 0
    FB-IoU = 100 * mean_{b in {bg, fg}} sum_{c in C} I_b(c) / max(sum_{c in C} U_b(c), 1)

(HSNet's FB-IoU has no ``max(., 1)``; it only matters when a fold saw no pixel of a bin.)

Resolution: the published protocol (and the default here) scores the prediction against the label
nearest-resized to the square working size ``(S, S)``. With ``original_size=True`` the ``(S, S)``
predicted mask is instead nearest-resized to the original label's size (``"sem_seg_original"``)
and scored there; HSNet's ``--use_original_imgsize`` resizes logits bilinearly, which a binary
mask cannot reproduce, so numbers from this mode are not comparable with published ones.
"""

import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..utils.atomic import atomic_write_json
from ..utils.image import resize_mask
from .presence import presence_report

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


def episode_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Background/foreground intersection and union pixel counts of one episode.

    Args:
        pred: (H, W) predicted mask, bool or {0, 1}.
        gt: (H, W) label, values in {0, 1, 255}; 255 is ignored in both ``pred`` and ``gt``.
    Returns:
        np.ndarray: (2, 2) int64, ``[[I_bg, I_fg], [U_bg, U_fg]]``.
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and label {tuple(gt.shape)} differ in size"
        )
    gt = gt.astype(np.int64)
    bad = ~np.isin(gt, (0, 1, IGNORE_LABEL))
    if bad.any():
        raise ValueError(f"label values must be 0, 1 or {IGNORE_LABEL}; got {np.unique(gt[bad])}")
    valid = gt != IGNORE_LABEL
    p = pred.astype(bool)[valid]
    g = gt[valid] == 1
    i_fg = np.count_nonzero(p & g)
    i_bg = np.count_nonzero(~p & ~g)
    p_fg, g_fg, n = np.count_nonzero(p), np.count_nonzero(g), p.size
    u_fg = p_fg + g_fg - i_fg
    u_bg = (n - p_fg) + (n - g_fg) - i_bg
    return np.array([[i_bg, i_fg], [u_bg, u_fg]], dtype=np.int64)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class FSSEvaluator(DatasetEvaluator):
    """mIoU and FB-IoU over a fold's classes, summed per class over episodes (HSNet protocol).

    See the module docstring for the formulas. Results are exact integers summed per class, so 1 and
    N processes give identical numbers: every process keeps one record per episode, ``evaluate``
    gathers them on the main process and drops repeated ``episode_id`` s (padding) before summing.
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        *,
        class_ids: Optional[Sequence[int]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        original_size: bool = False,
        presence_threshold: Optional[float] = None,
    ):
        """
        Args:
            dataset_name: registered test dataset; its metadata gives ``class_ids`` when the
                argument is not passed.
            class_ids: the fold's classes over which mIoU and FB-IoU are averaged.
            distributed: gather results from all processes (else evaluate this process only).
            output_dir: if set, the main process writes ``fss_results.json`` there.
            original_size: score at the original label size (``inputs["sem_seg_original"]``)
                instead of the working size; the published protocol uses the working size.
            presence_threshold: with absent-target episodes, also report what deciding at
                this threshold would empty (a mask is kept when its presence >= it), while
                the masks scored stay the model's (the benchmark path never decides).
        """
        if presence_threshold is not None and not np.isfinite(presence_threshold):
            raise ValueError(f"presence_threshold must be finite, got {presence_threshold}")
        self._presence_threshold = presence_threshold
        if class_ids is None:
            if dataset_name is None:
                raise ValueError("FSSEvaluator needs dataset_name or class_ids")
            class_ids = MetadataCatalog.get(dataset_name).get("class_ids")
            if class_ids is None:
                raise ValueError(f"metadata of {dataset_name!r} has no class_ids; pass class_ids=")
        self.class_ids = [int(c) for c in class_ids]
        if not self.class_ids or len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"class_ids must be non-empty and distinct, got {self.class_ids}")
        self._class_set = set(self.class_ids)
        self.dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._original_size = original_size
        self.reset()

    def reset(self):
        # one (episode_id, class_id, (2, 2) counts) per processed episode on this process
        self._records: List[tuple] = []
        self._running: Dict[int, np.ndarray] = {}
        # (episode_id, object in the query, presence, mask not empty, absent-target episode):
        # a mask is "found" when it is not empty, whatever "present" says (True: found; False:
        # judged absent, the mask emptied; None: no decision, the mask kept as it is)
        self._presence: List[tuple] = []

    def process(self, inputs: List[Dict], outputs: List[Dict]):
        """Count intersections and unions of a batch of episodes.

        Args:
            inputs: episode dicts with "class_id" (int), "episode_id" (int or str, unique in the
                test set), "sem_seg" ((S, S) uint8 tensor, 0/1/255) and, when
                ``original_size``, "sem_seg_original" ((H, W) uint8 tensor).
            outputs: dicts with "pred_mask" ((S, S) bool tensor).
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            for key in ("class_id", "episode_id"):
                if key not in inp:
                    raise KeyError(f"FSSEvaluator needs inputs[{key!r}]; got keys {sorted(inp)}")
            class_id = int(inp["class_id"])
            if class_id not in self._class_set:
                raise ValueError(
                    f"episode class {class_id} is not one of the fold's {self.class_ids}"
                )
            pred = _to_numpy(out["pred_mask"]).astype(bool)
            if self._original_size:
                gt = _to_numpy(inp["sem_seg_original"])
                pred = resize_mask(pred, tuple(gt.shape[-2:]))
            else:
                gt = _to_numpy(inp["sem_seg"])
            counts = episode_counts(pred, gt)
            episode_id = inp["episode_id"]
            if isinstance(episode_id, torch.Tensor):
                episode_id = episode_id.item()
            self._records.append((episode_id, class_id, counts))
            self._presence.append((episode_id, bool((gt == 1).any()),
                                   float(out.get("presence", float("nan"))),
                                   bool(pred.any()), bool(inp.get("negative"))))
            if class_id in self._running:
                self._running[class_id] += counts
            else:
                self._running[class_id] = counts.copy()

    def running_miou(self) -> float:
        """mIoU (×100) over the classes this process has seen so far (for progress bars)."""
        if not self._running:
            return 0.0
        ious = [c[0, 1] / max(c[1, 1], 1) for c in self._running.values()]
        return 100.0 * float(np.mean(ious))

    def evaluate(self):
        """Gather the episodes and compute the metrics.

        Returns:
            ``{"fss": {"mIoU", "FB-IoU", "num_episodes", "IoU-<class_id>" ...}}`` on the main
            process (floats, ×100, except ``num_episodes``), None on the other processes. With
            absent-target episodes (inputs "negative") also "presence-AUROC", "-precision",
            "-recall" (of the masks found, i.e. not empty: ``presence.presence_report``),
            "num_absent", "absent-empty" and "present-empty" (% of the absent / present
            episodes whose mask is empty) and "mIoU-present", "FB-IoU-present" (the episodes
            whose query holds the object); with ``presence_threshold`` also
            "absent-empty-at-threshold" and "present-empty-at-threshold" (what deciding at it would
            give).
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self._records, self._presence), dst=0)
            if not comm.is_main_process():
                return None
            records = list(itertools.chain(*[g[0] for g in gathered]))
            presence = dict(itertools.chain(*[[(p[0], p) for p in g[1]] for g in gathered]))
        else:
            records, presence = self._records, {p[0]: p for p in self._presence}
        records = _deduplicate(records)
        if not records:
            logger.warning("FSSEvaluator received no episodes")

        per_class = {c: np.zeros((2, 2), np.int64) for c in self.class_ids}
        num_per_class = {c: 0 for c in self.class_ids}
        for _, class_id, counts in records:
            per_class[class_id] += counts
            num_per_class[class_id] += 1
        metrics = compute_metrics(per_class, self.class_ids)

        res = OrderedDict()
        res["mIoU"] = metrics["mIoU"]
        res["FB-IoU"] = metrics["FB-IoU"]
        res["num_episodes"] = len(records)
        for c in self.class_ids:
            res[f"IoU-{c}"] = metrics["per_class_iou"][c]
        if any(p[4] for p in presence.values()):  # absent-target episodes (TEST.FSS.NEGATIVE_RATIO)
            rows = [presence[e] for e, _, _ in records]
            held = np.array([p[1] for p in rows])
            found = np.array([p[3] for p in rows])
            res.update(presence_report(held, [p[2] for p in rows], found))
            res["absent-empty"] = 100.0 * float(np.mean(~found[~held])) if (~held).any() else 0.0
            res["present-empty"] = 100.0 * float(np.mean(~found[held])) if held.any() else 0.0
            if self._presence_threshold is not None:
                kept = found & (np.array([p[2] for p in rows]) >= self._presence_threshold)
                res["presence-threshold"] = float(self._presence_threshold)
                res["absent-empty-at-threshold"] = 100.0 * float(np.mean(~kept[~held])) \
                    if (~held).any() else 0.0
                res["present-empty-at-threshold"] = 100.0 * float(np.mean(~kept[held])) \
                    if held.any() else 0.0
            present = [r for r, p in zip(records, rows) if p[1]]
            per_present = {c: np.zeros((2, 2), np.int64) for c in self.class_ids}
            for _, class_id, counts in present:
                per_present[class_id] += counts
            present_metrics = compute_metrics(per_present, self.class_ids)
            res["mIoU-present"] = present_metrics["mIoU"]
            res["FB-IoU-present"] = present_metrics["FB-IoU"]
        never = [c for c in self.class_ids if num_per_class[c] == 0]
        if never and records:
            logger.warning(f"{len(never)} fold classes never sampled, counted as IoU 0: {never}")
        logger.info(
            f"{self.dataset_name or 'FSS'}: mIoU {res['mIoU']:.2f}  FB-IoU {res['FB-IoU']:.2f}  "
            f"({len(records)} episodes)"
        )
        if self._output_dir:
            self._write_json(res, per_class, num_per_class, records)
        return OrderedDict(fss=res)

    def _write_json(self, res, per_class, num_per_class, records):
        payload = {
            "dataset": self.dataset_name,
            "original_size": self._original_size,
            "metrics": {k: v for k, v in res.items() if not k.startswith("IoU-")},
            "class_ids": self.class_ids,
            "per_class": {
                str(c): {
                    "IoU": res[f"IoU-{c}"],
                    "num_episodes": num_per_class[c],
                    "intersection": per_class[c][0].tolist(),  # [bg, fg]
                    "union": per_class[c][1].tolist(),
                }
                for c in self.class_ids
            },
            "episodes": [
                {"episode_id": e, "class_id": c,
                 "intersection": n[0].tolist(), "union": n[1].tolist()}
                for e, c, n in records
            ],
        }
        path = os.path.join(self._output_dir, "fss_results.json")
        atomic_write_json(payload, path, indent=1)  # never half-written
        logger.info(f"wrote {path}")


def compute_metrics(per_class: Dict[int, np.ndarray], class_ids: Sequence[int]) -> Dict:
    """mIoU, FB-IoU and per-class foreground IoU from per-class count sums.

    Args:
        per_class: class id -> (2, 2) int64 ``[[ΣI_bg, ΣI_fg], [ΣU_bg, ΣU_fg]]``; classes of
            ``class_ids`` that are missing count as all zeros.
        class_ids: the fold's classes.
    Returns:
        dict with "mIoU" and "FB-IoU" (floats, ×100) and "per_class_iou" (class id -> ×100).
    """
    zero = np.zeros((2, 2), np.int64)
    stacked = np.stack([per_class.get(c, zero) for c in class_ids])  # (C, 2, 2)
    inter, union = stacked[:, 0], stacked[:, 1]  # (C, 2) each
    iou_fg = inter[:, 1] / np.maximum(union[:, 1], 1)
    fb = inter.sum(0) / np.maximum(union.sum(0), 1)  # (2,) pooled over the fold's classes
    return {
        "mIoU": 100.0 * float(iou_fg.mean()),
        "FB-IoU": 100.0 * float(fb.mean()),
        "per_class_iou": {c: 100.0 * float(v) for c, v in zip(class_ids, iou_fg)},
    }


def _deduplicate(records: List[tuple]) -> List[tuple]:
    """Keep one record per episode_id; a repeated id must carry the same class and counts."""
    seen: Dict = {}
    out = []
    for episode_id, class_id, counts in records:
        prev = seen.get(episode_id)
        if prev is None:
            seen[episode_id] = (class_id, counts)
            out.append((episode_id, class_id, counts))
        elif prev[0] != class_id or not np.array_equal(prev[1], counts):
            raise ValueError(
                f"episode_id {episode_id!r} appears twice with different class or counts; "
                "episode ids must be unique within a test set"
            )
    if len(out) != len(records):
        logger.info(f"dropped {len(records) - len(out)} repeated episodes (sampler padding)")
    return out
