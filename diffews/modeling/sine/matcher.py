# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's training matcher: which prediction supervises which target instance.

Two assignments per image, as the original computes them (aim-uofa/SINE
``sine/model/matcher.py`` l.96-177, ``memory_efficient_forward``):

* **instance queries**: Hungarian matching (``scipy.optimize.linear_sum_assignment``) of the Q
  instance queries to the N target instances on the cost
  ``cost_mask * BCE + cost_class * (-p[class]) + cost_dice * dice``, the mask terms on
  ``num_points`` points drawn uniformly (``torch.rand(1, P, 2)``, one draw per image shared by all
  masks) and bilinearly sampled from predictions and targets (detectron2 PointRend's
  ``point_sample``, ``align_corners=False``); ``p`` is the softmax over the K reference classes +
  "no object", the target class being its index among the reference classes (``labels_t``);
* **ID queries**: no optimisation. One ID query per reference instance, in reference order; a
  target instance whose ``ids`` value also occurs among the reference ids is matched to that
  reference's query. The original pairs the two sorted index lists position by position
  (reference positions of the common ids with target positions of the common ids), which is the
  id-to-id pairing whenever the common ids come in the same relative order on both sides; the
  data builders guarantee it (both sides keep the instances in one stable class-sorted order).

The draws use torch's global generator, in the original's order (one ``torch.rand`` per image),
so that a seeded run draws the same points as the original.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["SineHungarianMatcher", "pairwise_sigmoid_ce", "pairwise_dice", "match_ids"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (N, P) binary targets at the same points.

    Returns:
        (Q, N) cost, the mean over the P points of BCE-with-logits.
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = torch.einsum("qp,np->qn", pos, targets) + torch.einsum("qp,np->qn", neg, 1 - targets)
    return cost / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (with the +1 smoothing of Mask2Former) of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (N, P) binary targets.

    Returns:
        (Q, N) ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(logits)``.
    """
    probs = logits.sigmoid().flatten(1)
    numerator = 2 * torch.einsum("qp,np->qn", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def match_ids(ref_ids: torch.Tensor, tar_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ID-branch assignment (original ``matcher.py`` l.159-168).

    Args:
        ref_ids: (M,) instance ids of the reference instances (= the ID queries, in order).
        tar_ids: (N,) instance ids of the target instances.

    Returns:
        (ID query indices, target indices), int64 on the CPU: the reference positions whose id
        occurs in the target and the target positions whose id occurs in the reference, each in
        increasing order, paired position by position.
    """
    tar_common = torch.isin(tar_ids, ref_ids)
    tar_idx = torch.where(tar_common)[0]
    ref_idx = torch.where(torch.isin(ref_ids, tar_ids[tar_common]))[0]
    return ref_idx.cpu().to(torch.int64), tar_idx.cpu().to(torch.int64)


class SineHungarianMatcher(nn.Module):
    """Assigns instance queries (Hungarian) and ID queries (by instance id) to target instances.

    Args:
        cost_class: weight of ``-p[target class]`` in the instance cost (original 2.0).
        cost_mask: weight of the point-sampled mean BCE (original 5.0).
        cost_dice: weight of the point-sampled dice loss (original 5.0).
        num_points: points drawn per image for the mask costs (original 12544 = 112 x 112).
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("SineHungarianMatcher: cost_class, cost_mask and cost_dice are all 0")
        if num_points < 1:
            raise ValueError(f"SineHungarianMatcher: num_points must be >= 1, got {num_points}")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    def instance_cost(self, ins_logits: torch.Tensor, ins_masks: torch.Tensor,
                      labels_t: torch.Tensor, tar_masks: torch.Tensor) -> torch.Tensor:
        """The (Q, N) instance cost of one image (draws ``num_points`` points).

        Args:
            ins_logits: (Q, K + 1) class logits of the instance queries.
            ins_masks: (Q, h, w) mask logits.
            labels_t: (N,) target classes as indices among the K reference classes.
            tar_masks: (N, H, W) binary target masks (any resolution: points are normalised).
        """
        cost_class = -ins_logits.softmax(-1)[:, labels_t]
        tar_masks = tar_masks.to(ins_masks)
        points = torch.rand(1, self.num_points, 2, device=ins_masks.device)
        tgt = point_sample(tar_masks[:, None], points.repeat(tar_masks.shape[0], 1, 1),
                           align_corners=False).squeeze(1)
        out = point_sample(ins_masks[:, None], points.repeat(ins_masks.shape[0], 1, 1),
                           align_corners=False).squeeze(1)
        with torch.autocast(device_type=out.device.type, enabled=False):
            out, tgt = out.float(), tgt.float()
            cost_mask = pairwise_sigmoid_ce(out, tgt)
            cost_dice = pairwise_dice(out, tgt)
        return (self.cost_mask * cost_mask + self.cost_class * cost_class
                + self.cost_dice * cost_dice)

    @torch.no_grad()
    def forward(self, outputs: Sequence[Dict], ref_targets: Sequence[Dict],
                tar_targets: Sequence[Dict]) -> Tuple[Indices, Indices]:
        """Match one decoder layer's predictions of a batch.

        Args:
            outputs: per image, the decoder's dict (schema in ``criterion.py``); read here:
                "pred_ins_logits" (1, Q, K + 1) and "pred_ins_masks" (1, Q, h, w).
            ref_targets: per image, {"ids": (M,)} of the reference instances.
            tar_targets: per image, {"labels_t": (N,) class index among the reference classes,
                "masks": (N, H, W), "ids": (N,)}.

        Returns:
            (indices_id, indices_ins): per image a pair (query indices, target indices) of int64
            CPU tensors; ID query indices are reference-instance positions.
        """
        indices_id: Indices = []
        indices_ins: Indices = []
        for out, ref, tar in zip(outputs, ref_targets, tar_targets):
            cost = self.instance_cost(out["pred_ins_logits"][0], out["pred_ins_masks"][0],
                                      tar["labels_t"], tar["masks"])
            rows, cols = linear_sum_assignment(cost.reshape(cost.shape[0], -1).cpu().numpy())
            indices_ins.append((torch.as_tensor(rows, dtype=torch.int64),
                                torch.as_tensor(cols, dtype=torch.int64)))
            indices_id.append(match_ids(ref["ids"], tar["ids"]))
        return indices_id, indices_ins

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}, num_points={self.num_points}")
