# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One optimizer step of DiffewS training: gradient accumulation, AMP, clipping, NaN guard."""

import logging
import time
from contextlib import nullcontext

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class EpisodeTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose iteration is one optimizer update over ``accumulation_steps``
    batches (the reference: 1 episode x 4 accumulation steps per update).

    Args:
        accumulation_steps: batches whose gradients are summed (averaged) per update.
        amp: None (fp32), "float16" (autocast + GradScaler) or "bfloat16" (autocast only).
        clip_norm: max gradient L2 norm over all trainable parameters; <= 0 disables.
        nan_policy: "raise" stops with FloatingPointError naming the iteration on a NaN or infinite
            loss; "skip" drops that update (gradients zeroed, weights untouched) and counts it in
            the ``skipped_updates`` scalar.
    """

    def __init__(self, model, data_loader, optimizer, *, accumulation_steps: int = 1, amp=None,
                 clip_norm: float = 0.0, nan_policy: str = "raise"):
        super().__init__(model, data_loader, optimizer)
        if accumulation_steps < 1:
            raise ValueError(f"SOLVER.ACCUMULATION_STEPS must be >= 1, got {accumulation_steps}")
        if amp is not None and amp not in PRECISIONS:
            raise ValueError(
                f"SOLVER.AMP.PRECISION must be one of {sorted(PRECISIONS)}, got {amp!r}"
            )
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"SOLVER.NAN_POLICY must be 'raise' or 'skip', got {nan_policy!r}")
        self.accumulation_steps = accumulation_steps
        self.amp_dtype = PRECISIONS.get(amp)
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(
            self.device_type, enabled=self.amp_dtype == torch.float16 and self.device_type == "cuda"
        )
        self.clip_norm = clip_norm
        self.nan_policy = nan_policy
        self.skipped_updates = 0

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def run_step(self):
        assert self.model.training, "[EpisodeTrainer] model was changed to eval mode!"
        self.optimizer.zero_grad(set_to_none=True)
        data_time, totals, finite = 0.0, {}, True
        for micro in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = micro == self.accumulation_steps - 1
            sync = nullcontext() if last or not isinstance(self.model, DistributedDataParallel) \
                else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss_dict = self.model(data)
                losses = sum(loss_dict.values())
                if finite and not torch.isfinite(losses).all():
                    finite, bad = False, (micro, {k: v.item() for k, v in loss_dict.items()})
                # backward even on a bad loss, so that DDP's collectives stay aligned across ranks
                self.grad_scaler.scale(losses / self.accumulation_steps).backward()
            for k, v in loss_dict.items():
                totals[k] = totals.get(k, 0.0) + v.detach() / self.accumulation_steps
        self.after_backward()
        all_finite = self._all_finite(finite)
        if not all_finite and self.nan_policy == "raise":
            where = (
                f" (accumulation step {bad[0]}): {bad[1]}" if not finite else " on another process"
            )
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}{where}; set "
                "SOLVER.NAN_POLICY skip to drop such updates instead"
            )
        if all_finite:
            if self.clip_norm > 0:
                self.grad_scaler.unscale_(self.optimizer)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            self._write_metrics(totals, data_time)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            logger.warning("Non-finite loss at iteration %d: update skipped (%d so far)",
                           self.iter, self.skipped_updates)
        get_event_storage().put_scalar(
            "skipped_updates", self.skipped_updates, smoothing_hint=False
        )

    def _all_finite(self, finite: bool) -> bool:
        """Every process takes the same decision, so replicas stay identical under DDP."""
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=next(self.model.parameters()).device)
        torch.distributed.all_reduce(flag)
        return flag.item() == 0

    def state_dict(self):
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["skipped_updates"] = self.skipped_updates
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self.skipped_updates = state_dict.get("skipped_updates", 0)
