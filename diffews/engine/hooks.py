# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Training hooks: TensorBoard image grids of predictions on fixed episodes."""

import numpy as np
import torch
from detectron2.engine import HookBase

from ..utils.overlay import GT_COLOR, PRED_COLOR, SUPPORT_COLOR, overlay_mask


def episode_grid(inputs, outputs) -> np.ndarray:
    """One row per episode: supports (with masks), query with ground truth, query with prediction,
    decoded prediction. Returns an (H, W, 3) uint8 image."""
    rows = []
    for x, y in zip(inputs, outputs):
        hwc = lambda t: t.permute(1, 2, 0).cpu().numpy()  # noqa: E731
        query = hwc(x["image"])
        panels = [overlay_mask(hwc(s), m.cpu().numpy(), SUPPORT_COLOR)
                  for s, m in zip(x["support_images"], x["support_masks"])]
        if "sem_seg" in x:
            panels.append(overlay_mask(query, (x["sem_seg"] == 1).cpu().numpy(), GT_COLOR))
        panels.append(overlay_mask(query, y["pred_mask"].cpu().numpy(), PRED_COLOR))
        panels.append(hwc(y["pred_image"]))
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


class PredictionVisualizer(HookBase):
    """Every ``period`` iterations, predict fixed episodes and put the grid in the event storage
    (TensorBoard shows it under ``predictions``)."""

    def __init__(self, period: int, episodes, model):
        self.period, self.episodes, self.model = period, episodes, model

    def after_step(self):
        it = self.trainer.iter + 1
        if self.period <= 0 or (it % self.period and it != self.trainer.max_iter):
            return
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.eval()
        with torch.no_grad():
            outputs = model(self.episodes)
        model.train()
        grid = episode_grid(self.episodes, outputs)
        self.trainer.storage.put_image("predictions", torch.from_numpy(grid).permute(2, 0, 1).float() / 255)
