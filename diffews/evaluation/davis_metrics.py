# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Per-frame DAVIS metrics J and F and the per-object statistics, as davis2017-evaluation
defines them (``davis2017/metrics.py``: ``db_eval_iou``, ``f_measure``, ``_seg2bmap``;
``davis2017/utils.py``: ``db_statistics``). Reimplemented from the definitions, not copied; the
disk structuring element is built with numpy (skimage is not a dependency), the dilation is cv2's
as upstream. The protocol that uses them is in ``vos_evaluation.py``.
"""

import os
import warnings
from typing import Sequence, Tuple

import cv2
import numpy as np

from ..utils.image import ImageReadError, read_pixels

__all__ = ["BOUND_TH", "VOSEvaluationError", "boundary_tolerance", "disk", "seg2bmap",
           "db_eval_iou", "f_measure", "db_statistics", "read_label_png"]

BOUND_TH = 0.008


class VOSEvaluationError(ValueError):
    """Bad input to the scorer; the one-line message names the sequence or file at fault."""


def boundary_tolerance(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """F's tolerance in pixels: ``bound_th`` itself if >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape[:2])))


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk, 1 where ``x^2 + y^2 <= r^2`` (skimage.morphology.disk)."""
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map of a (H, W) mask, offset half a pixel towards the origin.

    A pixel is a boundary pixel if it differs from its east, south or south-east neighbour
    (outside the image counts as 0), except that in the last row only the east neighbour and in
    the last column only the south neighbour count, and the bottom-right pixel never does: the
    image border itself is not a boundary.
    """
    seg = np.asarray(seg).astype(bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def db_eval_iou(gt: np.ndarray, pred: np.ndarray):
    """J of (..., H, W) binary masks: ``|P & G| / |P | G|``, 1 where the union is empty."""
    if gt.shape != pred.shape:
        raise VOSEvaluationError(f"ground truth {gt.shape} and result {pred.shape} differ in size")
    gt, pred = gt.astype(bool), pred.astype(bool)
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    return np.where(union == 0, 1.0, j)


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F of one (H, W) result mask against its ground truth (see the module docstring)."""
    if gt.shape != pred.shape:
        raise VOSEvaluationError(f"ground truth {gt.shape} and result {pred.shape} differ in size")
    kernel = disk(boundary_tolerance(pred.shape, bound_th))
    pred_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.sum(pred_b & gt_dil) / float(n_pred)
        recall = np.sum(gt_b & pred_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_statistics(values: Sequence[float]) -> Tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame J or F (see the module docstring).

    NaN values are skipped by the mean but count as not recalled. The official code casts the bin
    indices to uint8, which is undefined beyond 256 frames; we keep them as integers.
    """
    v = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():  # the mean of an empty or all-NaN bin is NaN, as upstream
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
        bins = [v[ids[i]:ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def read_label_png(path: str) -> np.ndarray:
    """A label PNG as stored (palette indices or grey values), (H, W) int64.

    Raises VOSEvaluationError naming the file if it is missing, unreadable or has colour channels
    (results must be indexed or grey PNGs whose pixel values are object ids).
    """
    if not os.path.isfile(path):
        raise VOSEvaluationError(f"{path}: no such file")
    try:
        arr = read_pixels(path)  # palette indices as stored
    except ImageReadError as e:
        raise VOSEvaluationError(str(e)) from e
    if arr.ndim != 2:
        raise VOSEvaluationError(
            f"{path}: an image of {arr.shape[2]} channels; labels must be indexed (palette) or "
            "grey PNGs whose pixel values are object ids")
    return arr.astype(np.int64)
