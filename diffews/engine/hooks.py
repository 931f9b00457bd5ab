# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Training hooks: TensorBoard image grids of predictions on fixed episodes."""

import torch
from detectron2.engine import HookBase

from ..utils.visualize import episode_grid


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
        self.trainer.storage.put_image(
            "predictions", torch.from_numpy(grid).permute(2, 0, 1).float() / 255
        )
