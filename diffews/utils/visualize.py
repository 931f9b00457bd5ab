# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Pictures of evaluated episodes: the query with its ground truth and with the prediction, and
each support with its mask, side by side at the working size."""

import os
from typing import Dict

import numpy as np
from PIL import Image

from .overlay import GT_COLOR, PRED_COLOR, SUPPORT_COLOR, draw_contour, overlay_mask, side_by_side

__all__ = ["draw_episode", "episode_grid", "save_episode"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def draw_episode(inputs: Dict, output: Dict, height: int = 256) -> np.ndarray:
    """One row: query + GT (green; ignored pixels grey), query + prediction (red), the decoded
    prediction if the output has one, supports + masks (blue).

    Args:
        inputs: an ``EpisodeMapper`` dict ("image" (3, S, S), "sem_seg" (S, S), "support_images"
            (K, 3, S, S), "support_masks" (K, S, S), optional "query_id"/"support_ids").
        output: the model's output for the episode, with "pred_mask" (S, S) bool.
        height: panel height in pixels.
    Returns:
        (height, W, 3) uint8 picture.
    """
    query = _np(inputs["image"]).transpose(1, 2, 0)
    gt = _np(inputs["sem_seg"])
    pred = _np(output["pred_mask"]).astype(bool)
    gt_panel = overlay_mask(overlay_mask(query, gt == 255, (128, 128, 128), 0.6), gt == 1, GT_COLOR)
    # the prediction panel also outlines the ground truth, so that misses read at a glance
    panels = [gt_panel, draw_contour(overlay_mask(query, pred, PRED_COLOR), gt == 1, GT_COLOR)]
    titles = [f"query {inputs.get('query_id', '')} GT", "prediction (GT outline)"]
    if "pred_image" in output:
        panels.append(_np(output["pred_image"]).transpose(1, 2, 0))
        titles.append("decoded")
    support_ids = inputs.get("support_ids", [])
    supports = zip(_np(inputs["support_images"]), _np(inputs["support_masks"]))
    for k, (image, mask) in enumerate(supports):
        panels.append(overlay_mask(image.transpose(1, 2, 0), mask > 0, SUPPORT_COLOR))
        titles.append(f"support {support_ids[k] if k < len(support_ids) else k}")
    return side_by_side(panels, titles, height=height)


def episode_grid(inputs, outputs, height: int = 128) -> np.ndarray:
    """``draw_episode`` rows of several episodes stacked top to bottom (white padding).

    Returns:
        (N * (height + 2), W, 3) uint8 picture.
    """
    rows = [draw_episode(x, y, height) for x, y in zip(inputs, outputs)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def save_episode(inputs: Dict, output: Dict, folder: str) -> str:
    """Write ``draw_episode`` to ``<folder>/episode_<id>_class_<c>.png``; returns the path."""
    os.makedirs(folder, exist_ok=True)
    eid = inputs["episode_id"]
    eid = f"{eid:05d}" if isinstance(eid, int) else str(eid)
    path = os.path.join(folder, f"episode_{eid}_class_{int(inputs['class_id'])}.png")
    Image.fromarray(draw_episode(inputs, output)).save(path)
    return path
