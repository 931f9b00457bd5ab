# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""From one predicted mask per class to scored instances (few-shot instance segmentation).

DiffewS predicts, for a query image and one class's supports, a decoded image whose RGB mean is a
probability map ``prob`` in [0, 1] and a binary mask (``prob > 0.25 * max(prob)``, docs/METHOD.md
section 3.2).
It has no notion of instances, so the mask is split after the fact. Strategies (``MODES``):

* ``"mask"``: the whole mask is one instance (the FSS output as is);
* ``"components"``: each 8-connected component (``cv2.connectedComponentsWithStats``) of at least
  ``min_area`` pixels is an instance; smaller ones are dropped;
* ``"mask+components"``: the components above, plus their union as one more instance when there
  are two or more. A class's mask may cover one object broken into pieces (the union is right) or
  several objects (the components are right); COCO AP only loses the precision of the unmatched
  hypothesis, ranked by its own score.

Score of an instance with pixels P: ``class_score * mean(prob[P])``. ``mean(prob[P])`` is absolute
(the relative threshold always yields pixels, even for a class absent from the image, whose
probabilities are then low; a class the predictor judges absent arrives with an empty mask and
gives no instance); ``class_score`` (default 1) is whatever per-class confidence the caller has
(``class_confidence``). Box: the mask's tight box, XYXY with exclusive max (detectron2
``BitMasks``). All masks are at the output (original image) resolution. Each image keeps its
``topk`` best instances over all classes (TFA/SINE: 100, no score threshold).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..modeling.readout import confidence_map

__all__ = ["MODES", "CLASS_SCORES", "mask_box", "class_instances", "masks_to_instances",
           "class_confidence", "predictions_to_instances"]

MODES = ("mask", "components", "mask+components")
# TEST.FSOD.CLASS_SCORE: what multiplies an instance's mean probability (``class_confidence``)
CLASS_SCORES = ("none", "contrast", "presence", "contrast*presence")


def mask_box(mask: np.ndarray) -> Tuple[float, float, float, float]:
    """Tight XYXY box of a non-empty (H, W) bool mask: ``(x_min, y_min, x_max + 1, y_max + 1)``."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        raise ValueError("mask_box: empty mask")
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def _candidates(mask: np.ndarray, prob: Optional[np.ndarray], class_score: float, mode: str,
                min_area: int) -> Tuple[np.ndarray, List[Tuple[float, Tuple[int, ...]]]]:
    """(label map (H, W) int32, [(score, label ids of the instance)]) without building masks:
    per-label probability sums and areas come from one ``bincount``."""
    if mode not in MODES:
        raise ValueError(f"instance mode must be one of {MODES}, got {mode!r}")
    mask = np.asarray(mask).astype(bool)
    prob = mask.astype(np.float32) if prob is None else np.asarray(prob, dtype=np.float32)
    if prob.shape != mask.shape:
        raise ValueError(f"probability map {prob.shape} and mask {mask.shape} differ in size")
    if mode == "mask":
        n, labels = 2, mask.astype(np.int32)
    else:
        n, labels = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)[:2]
    area = np.bincount(labels.ravel(), minlength=n)
    total = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)
    keep = [i for i in range(1, n) if area[i] >= max(min_area, 1)]
    found = [(float(class_score) * float(total[i] / area[i]), (i,)) for i in keep]
    if mode == "mask+components" and len(keep) >= 2:
        union = float(total[keep].sum() / area[keep].sum())
        found.append((float(class_score) * union, tuple(keep)))
    return labels, found


def _build(labels: np.ndarray, ids: Tuple[int, ...]) -> np.ndarray:
    return labels == ids[0] if len(ids) == 1 else np.isin(labels, ids)


def class_instances(mask: np.ndarray, prob: Optional[np.ndarray] = None, class_score: float = 1.0,
                    mode: str = "mask+components", min_area: int = 0
                    ) -> List[Tuple[np.ndarray, float]]:
    """Instances of one class's prediction.

    Args:
        mask: (H, W) bool (or {0, 1}) predicted mask.
        prob: (H, W) float probability map in [0, 1]; None scores every pixel 1.
        class_score: the class's confidence, multiplies every instance's score.
        mode: one of ``MODES``.
        min_area: components (and, for "mask", the whole mask) below this many pixels are dropped.
    Returns:
        [(instance mask (H, W) bool, score float)], components in label order, union last.
    """
    labels, found = _candidates(mask, prob, class_score, mode, min_area)
    return [(_build(labels, ids), score) for score, ids in found]


def masks_to_instances(masks: np.ndarray, probs: Optional[np.ndarray] = None,
                       class_ids: Optional[Sequence[int]] = None,
                       class_scores: Optional[Sequence[float]] = None,
                       mode: str = "mask+components", min_area: int = 0,
                       topk: int = 100) -> Instances:
    """Run a strategy on every class's mask of one image and keep the ``topk`` best instances.

    Args:
        masks: (C, H, W) bool, one predicted mask per class, at the image's size.
        probs: (C, H, W) float in [0, 1], the classes' probability maps (None: all 1).
        class_ids: C contiguous class ids (default 0..C-1), what ``pred_classes`` holds.
        class_scores: C per-class confidences (default 1).
        mode, min_area: see ``class_instances``. topk: instances kept per image (<= 0: all).
    Returns:
        detectron2 ``Instances`` of size (H, W) with ``pred_masks`` (N, H, W) bool,
        ``pred_boxes`` (N, 4) XYXY, ``scores`` (N,) float32 and ``pred_classes`` (N,) int64,
        sorted by decreasing score (ties: class order, then component order).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (C, H, W), got shape {masks.shape}")
    c, h, w = masks.shape
    class_ids = list(range(c)) if class_ids is None else [int(i) for i in class_ids]
    class_scores = [1.0] * c if class_scores is None else [float(s) for s in class_scores]
    if len(class_ids) != c or len(class_scores) != c or (probs is not None
                                                         and np.shape(probs) != masks.shape):
        raise ValueError(f"{c} masks of size {h}x{w} need as many class ids, class scores and "
                         f"probability maps of the same size")
    labels, found = [], []  # found: (score, class index, label ids)
    for i in range(c):
        lab, cand = _candidates(masks[i], None if probs is None else probs[i], class_scores[i],
                                mode, min_area)
        labels.append(lab)
        found += [(score, i, ids) for score, ids in cand]
    order = np.argsort(-np.array([f[0] for f in found], dtype=np.float64), kind="stable")
    keep = [found[j] for j in (order[:topk] if topk > 0 else order)]
    inst_masks = [_build(labels[i], ids) for _, i, ids in keep]
    out = Instances((h, w))
    out.pred_masks = torch.from_numpy(np.stack(inst_masks) if keep else np.zeros((0, h, w), bool))
    out.pred_boxes = Boxes(torch.tensor([mask_box(m) for m in inst_masks],
                                        dtype=torch.float32).reshape(-1, 4))
    out.scores = torch.tensor([s for s, _, _ in keep], dtype=torch.float32)
    out.pred_classes = torch.tensor([class_ids[i] for _, i, _ in keep], dtype=torch.int64)
    return out


def class_confidence(prediction: Dict, mode: str) -> float:
    """The per-class confidence of one ``predict_many`` result (TEST.FSOD.CLASS_SCORE): 1,
    its score, its presence signal, or their product (a presence outside [0, 1] is clipped)."""
    presence = min(max(float(prediction.get("presence", 1.0)), 0.0), 1.0)
    return {"none": 1.0, "contrast": float(prediction["score"]), "presence": presence,
            "contrast*presence": float(prediction["score"]) * presence}[mode]


def predictions_to_instances(predictions: Sequence[Dict], size: Tuple[int, int],
                             mode: str = "mask+components", min_area: int = 16, topk: int = 100,
                             class_score: str = "none") -> Instances:
    """One image's ``predict_many`` results (one per class, in class order) -> ``Instances``
    (``pred_masks`` (N, H, W), ``pred_boxes``, ``scores``, ``pred_classes``): each class's mask
    split by ``mode`` (TEST.FSOD.INSTANCE_MODE, MIN_AREA), scored by the mean of its probability
    map times ``class_confidence`` (CLASS_SCORE), the ``topk`` best kept (TOPK). A class judged
    absent (``present`` False) has an empty mask and gives no instance."""
    masks = np.stack([p["mask"] if p.get("present", True) is not False
                      else np.zeros_like(p["mask"]) for p in predictions])
    probs = np.stack([confidence_map(p["pred_image"], size) for p in predictions])
    scores = [class_confidence(p, class_score) for p in predictions]
    return masks_to_instances(masks, probs, class_scores=scores, mode=mode, min_area=min_area,
                              topk=topk)
