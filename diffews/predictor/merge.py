# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Per-object masks of one frame -> one label map (video object segmentation)."""

from typing import Dict, Tuple

import numpy as np

__all__ = ["merge_objects"]


def merge_objects(masks: Dict[int, np.ndarray], confidence: Dict[int, np.ndarray],
                  size: Tuple[int, int]) -> np.ndarray:
    """One (H, W) int64 label map from per-object (H, W) bool masks: a pixel belongs to the object
    with the highest confidence among those whose mask covers it (a tie: the higher id); 0 where
    no mask is on."""
    label = np.zeros(size, np.int64)
    ids = sorted(masks)
    if not ids:
        return label
    on = np.stack([masks[o].astype(bool) for o in ids])  # (N, H, W)
    conf = np.stack([np.asarray(confidence[o], np.float64) for o in ids])
    if on.shape[1:] != tuple(size) or conf.shape != on.shape:
        raise ValueError(f"merge_objects: masks {on.shape[1:]} / confidences {conf.shape[1:]} "
                         f"are not of the frame's size {tuple(size)}")
    conf = np.where(on, conf, -np.inf)[::-1]  # highest id first, so argmax's first max is it
    winner = np.asarray(ids)[::-1][np.argmax(conf, axis=0)]
    return np.where(on.any(axis=0), winner, 0).astype(np.int64)
