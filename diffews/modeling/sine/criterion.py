# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's training loss: matched classification and point-sampled mask losses on the ID and
instance branches, on the last decoder layer and on every earlier one (deep supervision).

As the original computes it (aim-uofa/SINE ``sine/model/criterion.py`` l.21-309, called from
``sine/model/model.py`` l.106-134, weights from ``build_model`` l.332-340):

* ``loss_ce_ins``: per image, cross-entropy of the Q instance queries over the K reference classes
  + "no object" (index K), matched queries get their target's class index, the others "no
  object"; class weights ``[1] * K + [no_object_weight]``; the mean over the batch of the
  per-image losses.
* ``loss_ce_id``: the ID queries of all images concatenated, two classes (0 = "this reference
  instance is in the target", 1 = "no object"), matched ID queries get 0; class weights
  ``[1, no_object_weight]`` (the ``empty_weight`` buffer, saved in checkpoints as
  ``criterion.empty_weight``).
* ``loss_mask`` / ``loss_dice``: the matched instance masks followed by the matched ID masks of
  the batch, compared with their targets on ``num_points`` points per mask chosen by PointRend's
  uncertainty sampling (``oversample_ratio`` x points drawn uniformly, the
  ``importance_sample_ratio`` share with the smallest ``|logit|`` kept, the rest drawn uniformly),
  BCE averaged over points and dice with +1 smoothing, each summed over masks and divided by
  ``num_masks`` = matched ID + matched instance masks of the batch (averaged over processes,
  at least 1).
* the same four terms ``<name>_<i>`` for each ``aux_outputs[i]`` (layer i, its own matching);
  the meta-arch multiplies each term by ``weight_dict`` (class 2, mask 5, dice 5), see ``weigh``.

Point draws come from torch's global generator in the original's order (per layer: one draw per
image in the matcher, then the uncertainty sampling here), so a seeded run reproduces the
original's points.

**Outputs schema** (a list, one dict per image, as the Matching Transformer returns them;
M reference instances = ID queries, Q instance queries, K reference classes, masks at the
decoder's mask resolution h x w):
    "pred_id_logits" (1, M, 2), "pred_ins_logits" (1, Q, K + 1), "pred_id_masks" (1, M, h, w),
    "pred_ins_masks" (1, Q, h, w), "ref_sem_labels" (1, K) the sorted distinct reference classes,
    optionally "ref_id_labels" (1, M) (unused here) and "aux_outputs": a list with the four
    "pred_*" keys per earlier decoder layer.
**Targets**: per image ``{"labels": (N,) int64 class, "masks": (N, H, W) binary, "ids": (N,)
int64 instance id}`` for the reference (``ref_targets``) and the target image (``tar_targets``),
H x W the padded input size (``prepare_targets``); every target class must be a reference class.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness, point_sample)
from detectron2.utils.comm import get_world_size
from torch import nn

from .matcher import Indices, SineHungarianMatcher

__all__ = ["SineCriterion", "sigmoid_ce_loss", "dice_loss", "prepare_targets", "loss_weights",
           "LOSS_NAMES"]

LOSS_NAMES = ("loss_ce_ins", "loss_ce_id", "loss_mask", "loss_dice")
_PRED_KEYS = ("pred_id_logits", "pred_ins_logits", "pred_id_masks", "pred_ins_masks")


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """BCE-with-logits averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        logits: (R, P) mask logits at P points; targets: (R, P) in [0, 1].
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / (num_masks + 1e-8)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` per mask, summed, divided by ``num_masks``.

    Args:
        logits: (R, P) mask logits at P points; targets: (R, P) in [0, 1].
    """
    probs = logits.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / (num_masks + 1e-8)


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """(R, 1, P) logits -> (R, 1, P) uncertainty ``-|logit|`` (highest at the decision boundary)."""
    return -logits.abs()


def loss_weights(class_weight: float, mask_weight: float, dice_weight: float,
                 num_aux_layers: int) -> Dict[str, float]:
    """The original's ``weight_dict`` (``model.py`` l.332-340): the four terms and their ``_<i>``
    copies for ``i < num_aux_layers`` (0 without deep supervision)."""
    base = {"loss_ce_ins": class_weight, "loss_ce_id": class_weight, "loss_mask": mask_weight,
            "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux_layers):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def prepare_targets(instances: Sequence, padded_hw: Tuple[int, int]) -> List[Dict]:
    """Per-image targets from detectron2 ``Instances`` (original ``model.py`` l.284-299).

    Args:
        instances: per image, ``Instances`` with ``gt_classes`` (N,), ``gt_masks`` (N, h, w)
            tensor and ``ins_ids`` (N,).
        padded_hw: (H, W) of the padded image batch; masks are zero-padded bottom/right to it.

    Returns:
        per image ``{"labels": (N,), "masks": (N, H, W) of the masks' dtype, "ids": (N,)}``.
    """
    out = []
    for inst in instances:
        masks = inst.gt_masks
        masks = masks.tensor if hasattr(masks, "tensor") else masks
        if masks.shape[-2] > padded_hw[0] or masks.shape[-1] > padded_hw[1]:
            raise ValueError(f"prepare_targets: masks {tuple(masks.shape)} larger than the padded "
                             f"size {tuple(padded_hw)}")
        padded = masks.new_zeros((masks.shape[0], *padded_hw))
        padded[:, :masks.shape[1], :masks.shape[2]] = masks
        out.append({"labels": inst.gt_classes, "masks": padded, "ids": inst.ins_ids})
    return out


def _class_indices(outputs: Sequence[Dict], tar_targets: Sequence[Dict]) -> List[Dict]:
    """Targets with "labels_t": each class as its index among the image's reference classes
    (original ``model.py`` l.114-123); a class missing from the reference raises ValueError."""
    new = []
    for b, (out, tar) in enumerate(zip(outputs, tar_targets)):
        ref_classes = out["ref_sem_labels"][0].tolist()
        labels = tar["labels"].tolist()
        missing = sorted(set(labels) - set(ref_classes))
        if missing:
            raise ValueError(f"SineCriterion: image {b}: target classes {missing} are not among "
                             f"the reference classes {ref_classes}")
        labels_t = torch.tensor([ref_classes.index(c) for c in labels], dtype=torch.int64,
                                device=tar["labels"].device)
        new.append({**tar, "labels_t": labels_t})
    return new


def _pad_stack(masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Zero-pad (N_b, H_b, W_b) masks bottom/right to the batch's largest H and W."""
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    out = []
    for m in masks:
        p = m.new_zeros((m.shape[0], h, w))
        p[:, :m.shape[-2], :m.shape[-1]] = m
        out.append(p)
    return out


class SineCriterion(nn.Module):
    """Matching + losses of one SINE training step (schema in the module docstring).

    Args:
        matcher: the ``SineHungarianMatcher``.
        class_weight, mask_weight, dice_weight: loss weights (original 2, 5, 5).
        no_object_weight: class weight of "no object" in both cross-entropies (original 0.1).
        num_points: points per mask for the mask losses (original 12544).
        oversample_ratio: uniform draws per point before importance selection (original 3).
        importance_sample_ratio: share of points chosen by uncertainty (original 0.75).
        num_aux_layers: decoder layers before the last one that deep supervision weights
            (original: the decoder depth, 6); 0 = no deep supervision (aux outputs ignored).
    """

    def __init__(self, matcher: SineHungarianMatcher, class_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0,
                 no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 num_aux_layers: int = 6):
        super().__init__()
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f"SineCriterion: oversample_ratio must be >= 1 and "
                             f"importance_sample_ratio in [0, 1], got {oversample_ratio}, "
                             f"{importance_sample_ratio}")
        self.matcher = matcher
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.num_aux_layers = num_aux_layers
        self.weight_dict = loss_weights(class_weight, mask_weight, dice_weight, num_aux_layers)
        # ID branch: 1 class + "no object"; persistent so checkpoints hold criterion.empty_weight
        self.register_buffer("empty_weight", torch.tensor([1.0, no_object_weight]))

    def loss_labels(self, outputs: Sequence[Dict], targets: Sequence[Dict], indices_id: Indices,
                    indices_ins: Indices) -> Dict[str, torch.Tensor]:
        """``loss_ce_ins`` (mean over images) and ``loss_ce_id`` (over the concatenated batch)."""
        per_image = []
        for out, tar, (src, tgt) in zip(outputs, targets, indices_ins):
            logits = out["pred_ins_logits"].float()  # (1, Q, K + 1)
            k = out["ref_sem_labels"].shape[1]
            classes = torch.full(logits.shape[:2], k, dtype=torch.int64, device=logits.device)
            classes[:, src] = tar["labels_t"][tgt]
            weight = torch.ones(k + 1).to(self.empty_weight)
            weight[-1] = self.no_object_weight
            per_image.append(F.cross_entropy(logits.transpose(1, 2).to(self.empty_weight),
                                             classes, weight))
        id_logits, id_classes = [], []
        for out, (src, _) in zip(outputs, indices_id):
            logits = out["pred_id_logits"].float()  # (1, M, 2)
            classes = torch.full(logits.shape[:2], 1, dtype=torch.int64, device=logits.device)
            classes[:, src] = 0
            id_logits.append(logits)
            id_classes.append(classes)
        loss_id = F.cross_entropy(torch.cat(id_logits, 1).transpose(1, 2).to(self.empty_weight),
                                  torch.cat(id_classes, 1), self.empty_weight)
        return {"loss_ce_ins": sum(per_image) / len(per_image), "loss_ce_id": loss_id}

    def loss_masks(self, outputs: Sequence[Dict], targets: Sequence[Dict], indices_id: Indices,
                   indices_ins: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """``loss_mask`` and ``loss_dice`` on the matched instance masks, then the matched ID
        masks, at uncertainty-sampled points."""
        src_ins = torch.cat([o["pred_ins_masks"][0, s] for o, (s, _) in zip(outputs, indices_ins)])
        src_id = torch.cat([o["pred_id_masks"][0, s] for o, (s, _) in zip(outputs, indices_id)])
        tar_masks = _pad_stack([t["masks"] for t in targets])
        tgt_ins = torch.cat([m[t] for m, (_, t) in zip(tar_masks, indices_ins)]).to(src_ins)
        tgt_id = torch.cat([m[t] for m, (_, t) in zip(tar_masks, indices_id)]).to(src_id)
        src = torch.cat([src_ins, src_id])[:, None]
        tgt = torch.cat([tgt_ins, tgt_id])[:, None]
        with torch.no_grad():
            points = get_uncertain_point_coords_with_randomness(
                src.float(), _uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio).to(tgt.dtype)
            labels = point_sample(tgt, points, align_corners=False).squeeze(1)
        logits = point_sample(src, points, align_corners=False).squeeze(1)
        return {"loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
                "loss_dice": dice_loss(logits, labels, num_masks)}

    def _layer_losses(self, outputs: Sequence[Dict], ref_targets: Sequence[Dict],
                      targets: Sequence[Dict], num_masks=None):
        indices_id, indices_ins = self.matcher(outputs, ref_targets, targets)
        if num_masks is None:
            num_masks = self._num_masks(indices_id, indices_ins, outputs)
        losses = self.loss_labels(outputs, targets, indices_id, indices_ins)
        losses.update(self.loss_masks(outputs, targets, indices_id, indices_ins, num_masks))
        return losses, num_masks

    @staticmethod
    def _num_masks(indices_id: Indices, indices_ins: Indices, outputs: Sequence[Dict]) -> float:
        n = sum(len(i[0]) for i in indices_id) + sum(len(i[0]) for i in indices_ins)
        n = torch.as_tensor([n], dtype=torch.float,
                            device=outputs[0]["pred_ins_logits"].device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(n)
        return torch.clamp(n / get_world_size(), min=1).item()

    def forward(self, outputs: Sequence[Dict], ref_targets: Sequence[Dict],
                tar_targets: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        """Unweighted loss terms (the last layer's, then ``<name>_<i>`` per aux layer).

        Args:
            outputs, ref_targets, tar_targets: see the module docstring.

        Returns:
            {name: scalar tensor}; ``weigh`` turns it into what the optimiser sums.
        """
        if not (len(outputs) == len(ref_targets) == len(tar_targets)) or not outputs:
            raise ValueError(f"SineCriterion: {len(outputs)} outputs, {len(ref_targets)} "
                             f"reference and {len(tar_targets)} target dicts (need equal, >= 1)")
        targets = _class_indices(outputs, tar_targets)
        last = [{k: o[k] for k in (*_PRED_KEYS, "ref_sem_labels")} for o in outputs]
        losses, num_masks = self._layer_losses(last, ref_targets, targets)
        aux = outputs[0].get("aux_outputs") or []
        for i in range(min(len(aux), self.num_aux_layers)):
            layer = [{**{k: o["aux_outputs"][i][k] for k in _PRED_KEYS},
                      "ref_sem_labels": o["ref_sem_labels"]} for o in outputs]
            layer_losses, _ = self._layer_losses(layer, ref_targets, targets, num_masks)
            losses.update({f"{k}_{i}": v for k, v in layer_losses.items()})
        return losses

    def weigh(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Each term times its weight; terms without a weight are dropped (``model.py``
        l.128-133)."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def extra_repr(self) -> str:
        return (f"no_object_weight={self.no_object_weight}, num_points={self.num_points}, "
                f"oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}, "
                f"num_aux_layers={self.num_aux_layers}")
