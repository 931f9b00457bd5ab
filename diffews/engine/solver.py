# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Optimizers and LR schedules of the two models' recipes.

* DiffewS: AdamW over the UNet and the polynomial decay to SOLVER.END_LR (docs/METHOD.md
  section 4).
* SINE (``MODEL.META_ARCHITECTURE: "SINE"``): AdamW over the trainable parameters in the
  original's groups, and DeepSpeed's ``WarmupDecayLR`` (``SOLVER.LR_SCHEDULER_NAME:
  "WarmupDecayLR"``), as aim-uofa/SINE's DeepSpeed config (``sine/utils/utils.py`` l.99-141)
  gives them; see ``sine_param_groups`` and ``WarmupDecayParamScheduler``.
"""

from typing import Dict, List

import torch
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler
from torch import nn

__all__ = ["PolyToEndParamScheduler", "WarmupDecayParamScheduler", "build_optimizer",
           "build_lr_scheduler", "sine_param_groups"]

# the original's norm types with weight decay 0 (tools/train.py l.243-255); detectron2's channel
# LayerNorm (the neck's, the mask features') is not among them and keeps the weight decay
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm,
          nn.LocalResponseNorm)


class PolyToEndParamScheduler(ParamScheduler):
    """``(1 - end) * (1 - where) ** power + end``: diffusers' polynomial decay with ``lr_end``,
    as a multiplier of the base LR (``end = END_LR / BASE_LR``); power 1 is linear decay."""

    def __init__(self, end: float, power: float = 1.0):
        self.end, self.power = end, power

    def __call__(self, where: float) -> float:
        return (1.0 - self.end) * (1.0 - where) ** self.power + self.end


class WarmupDecayParamScheduler(ParamScheduler):
    """The LR multiplier of DeepSpeed 0.11.0's ``WarmupDecayLR`` (deepspeed/runtime/
    lr_schedules.py, linear warmup, ``warmup_min_lr`` 0) as the original trains with it
    (``total_num_steps`` = epochs x steps per epoch = ``SOLVER.MAX_ITER``, ``warmup_num_steps``
    = ``SOLVER.WARMUP_ITERS``, 100).

    DeepSpeed steps the schedule after each update and does not set the LR before the first:
    update 0 runs at the optimizer's own LR (the full base LR), update ``k >= 1`` at
    ``gamma(k - 1)`` with ``gamma(t) = t / W`` for ``t < W`` (W = max(2, warmup)), then
    ``max(0, (T - t) / max(1, T - W))``. So the first update is at the full LR and the second at
    0 before the warmup climbs: a quirk of the original's runs, kept.

    Args:
        warmup: warmup updates (W). total: updates of the run (T).
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = max(2, int(warmup)), int(total)

    def gamma(self, t: int) -> float:
        if t < self.warmup:
            return t / self.warmup
        return max(0.0, (self.total - t) / max(1.0, self.total - self.warmup))

    def __call__(self, where: float) -> float:
        k = int(round(where * self.total))  # LRMultiplier passes iteration / MAX_ITER
        return 1.0 if k == 0 else self.gamma(k - 1)


def sine_param_groups(model: nn.Module, lr: float, weight_decay: float,
                      weight_decay_norm: float, weight_decay_embed: float) -> List[Dict]:
    """The original's optimizer groups (aim-uofa/SINE tools/train.py l.234-282): one group per
    trainable parameter, in module order, with ``weight_decay_norm`` for the parameters of
    torch's norm layers (the decoder's ``nn.LayerNorm``s), ``weight_decay_embed`` for
    ``nn.Embedding`` ones (queries, ``query_grained_embed``, ``neg_class_embed``) and
    ``weight_decay`` for every other (convolutions, linears and their biases, detectron2's
    channel LayerNorm, ``temp``, ``logit_scale``). The frozen encoder has no group. The original's
    "backbone" LR multiplier matches no SINE module and is left out."""
    groups, seen = [], set()
    for _, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in seen:
                continue
            seen.add(p)
            wd = weight_decay
            if isinstance(module, _NORMS):
                wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    return groups


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: DiffewS's UNet (the VAE is frozen) in one group;
    SINE's neck and decoder in the original's groups (``sine_param_groups``)."""
    if cfg.SOLVER.OPTIMIZER.upper() != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER: only ADAMW is supported, got {cfg.SOLVER.OPTIMIZER!r}")
    if cfg.MODEL.META_ARCHITECTURE == "SINE":
        params = sine_param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY,
                                   cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_EMBED)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def build_lr_scheduler(cfg, optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` "WarmupDecayLR": ``WarmupDecayParamScheduler`` (SINE's
    recipe); any other name: DiffewS's polynomial decay to ``SOLVER.END_LR`` after an optional
    warmup of ``SOLVER.WARMUP_ITERS``."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupDecayLR":
        sched = WarmupDecayParamScheduler(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER)
        return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
    end = cfg.SOLVER.END_LR / cfg.SOLVER.BASE_LR
    sched = PolyToEndParamScheduler(end, cfg.SOLVER.POLY_LR_POWER)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(
            sched,
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
