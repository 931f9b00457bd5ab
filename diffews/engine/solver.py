# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""AdamW and the polynomial decay to SOLVER.END_LR of the reference recipe (docs/METHOD.md section 4)."""

import torch
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler


class PolyToEndParamScheduler(ParamScheduler):
    """``(1 - end) * (1 - where) ** power + end``: diffusers' polynomial decay with ``lr_end``,
    as a multiplier of the base LR (``end = END_LR / BASE_LR``); power 1 is linear decay."""

    def __init__(self, end: float, power: float = 1.0):
        self.end, self.power = end, power

    def __call__(self, where: float) -> float:
        return (1.0 - self.end) * (1.0 - where) ** self.power + self.end


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the UNet; the VAE is frozen)."""
    if cfg.SOLVER.OPTIMIZER.upper() != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER: only ADAMW is supported, got {cfg.SOLVER.OPTIMIZER!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def build_lr_scheduler(cfg, optimizer):
    end = cfg.SOLVER.END_LR / cfg.SOLVER.BASE_LR
    sched = PolyToEndParamScheduler(end, cfg.SOLVER.POLY_LR_POWER)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(
            sched, cfg.SOLVER.WARMUP_FACTOR, min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
