# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's readouts: decoder outputs -> semantic map, instances, object masks (docs/SINE.md 6).

All three first resize the mask logits bilinearly from the mask-feature size (4h, 4w) to the
padded input size; then, as each original does:

- FSS (``semantic_inference``; aim-uofa/SINE inference_fss/model/model.py l.100-138): the
  semantic map at the padded size, ``sem_seg[c] = sum_q softmax(logits_q)[c] * sigmoid(mask_q)``
  (a sum over the queries, not normalised), then detectron2's ``sem_seg_postprocess`` (crop to
  the unpadded size, bilinear to the output size);
- FSIS (``instance_inference``; inference_fsod/fsdet/model/model.py l.210-290): the mask logits
  are ``sem_seg_postprocess``ed to the original image size FIRST, then top-k over queries x
  classes, binary mask ``logit > 0``, score = class probability x mean sigmoid inside the mask;
- VOS (``id_inference``; inference_vos/model/model.py l.103-183): the ID masks
  ``sem_seg_postprocess``ed to the frame size, score = ID probability x mean sigmoid inside.
"""

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

__all__ = ["upsample_masks", "semantic_inference", "fss_sem_seg", "instance_inference",
           "fsis_instances", "mask_boxes", "id_inference", "vos_objects", "label_map"]


def upsample_masks(masks: torch.Tensor, padded: Tuple[int, int]) -> torch.Tensor:
    """(1, Q, 4h, 4w) mask logits -> (Q, Hp, Wp) at the padded input size (bilinear)."""
    return F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)[0]


def semantic_inference(masks: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(Q, H, W) mask logits and (Q, nc+1) class logits -> (nc, H, W) semantic map
    ``einsum(softmax(logits)[:, :-1], sigmoid(masks))`` (can exceed 1)."""
    probs = F.softmax(logits, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, masks.sigmoid())


def fss_sem_seg(outputs: Dict, padded: Tuple[int, int], image_size: Tuple[int, int],
                out_size: Tuple[int, int]) -> torch.Tensor:
    """FSS semantic map of one target.

    Args:
        outputs: the decoder's output (batch 1).
        padded: (Hp, Wp) padded input size. image_size: (h, w) of the image inside the padding.
        out_size: (H, W) of the returned map (the benchmark: ``image_size`` itself).
    Returns:
        (nc, H, W) float semantic map; the FSS foreground is ``sem_seg[0] > SCORE_THRESHOLD``.
    """
    sem = semantic_inference(upsample_masks(outputs["pred_ins_masks"], padded),
                             outputs["pred_ins_logits"][0])
    return sem_seg_postprocess(sem, image_size, out_size[0], out_size[1])


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) binary masks -> (n, 4) float [xmin, ymin, xmax, ymax] of their pixels (no +1);
    [0, 0, 1, 1] for an empty mask (fsdet/model/model.py l.278-286)."""
    boxes = torch.zeros(masks.shape[0], 4)
    for i, m in enumerate(masks):
        ys, xs = torch.where(m > 0)
        if len(xs):
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        else:
            boxes[i] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return boxes


def instance_inference(masks: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                       topk: int = 100, score_threshold: float = 0.0) -> Dict[str, torch.Tensor]:
    """Instances from per-query masks and class logits.

    Args:
        masks: (Q, H, W) mask logits at the output size. logits: (Q, K+1) class logits.
        labels: (K,) the category id of each class column.
        topk: candidates kept over the Q*K (query, class) pairs by class probability
            (``min(topk, Q*K)``, unsorted top-k as the original).
        score_threshold: an instance is kept if its score is > this (0: empty masks drop out).
    Returns:
        dict sorted by descending score: "masks" (n, H, W) bool (logit > 0), "scores" (n,)
        (class probability x mean sigmoid over the mask), "classes" (n,) int64, "boxes" (n, 4)
        float xyxy from the masks, "queries" (n,) the query index of each instance.
    """
    num_classes = labels.shape[0]
    probs = F.softmax(logits, dim=-1)[:, :-1].flatten(0, 1)
    pair_labels = labels.unsqueeze(0).repeat(masks.shape[0], 1).flatten(0, 1)
    top_probs, top = probs.topk(min(topk, len(probs)), sorted=False)
    queries = torch.div(top, num_classes, rounding_mode="floor")
    cand = masks[queries]
    binary = (cand > 0).float()
    mask_scores = (cand.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
        binary.flatten(1).sum(1) + 1e-6)
    scores = top_probs * mask_scores
    keep = scores > score_threshold
    order = torch.argsort(scores[keep], descending=True, stable=True)
    kept = binary[keep][order]
    return {"masks": kept > 0, "scores": scores[keep][order],
            "classes": pair_labels[top][keep][order].to(torch.int64), "boxes": mask_boxes(kept),
            "queries": queries[keep][order]}


def fsis_instances(outputs: Dict, padded: Tuple[int, int], image_size: Tuple[int, int],
                   out_size: Tuple[int, int], labels: torch.Tensor, topk: int = 100,
                   score_threshold: float = 0.0) -> Dict[str, torch.Tensor]:
    """FSIS instances of one target at ``out_size`` (the original image size).

    Args:
        outputs: the decoder's output (batch 1, class columns in ``labels`` order).
        padded: (Hp, Wp). image_size: (h, w) of the resized image inside the padding.
        out_size: (H, W) original size. labels, topk, score_threshold: ``instance_inference``.
    """
    masks = sem_seg_postprocess(upsample_masks(outputs["pred_ins_masks"], padded), image_size,
                                out_size[0], out_size[1])
    return instance_inference(masks, outputs["pred_ins_logits"][0], labels, topk,
                              score_threshold)


def id_inference(masks: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                 score_threshold: float = -1e9) -> Dict[str, torch.Tensor]:
    """Object masks from the ID queries (one per object; the original's top-k keeps them all).

    Args:
        masks: (n, H, W) ID mask logits at the output size. logits: (n, 2) ID logits.
        ids: (n,) object ids.
    Returns:
        dict in ``ids`` order, objects with score > ``score_threshold``: "masks" (m, H, W) bool
        (logit > 0), "scores" (m,) (softmax(logits)[:, 0] x mean sigmoid over the mask), "ids".
    """
    probs = F.softmax(logits, dim=-1)[:, 0]
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
        binary.flatten(1).sum(1) + 1e-6)
    scores = probs * mask_scores
    keep = scores > score_threshold
    return {"masks": binary[keep] > 0, "scores": scores[keep], "ids": ids[keep]}


def vos_objects(outputs: Dict, padded: Tuple[int, int], image_size: Tuple[int, int],
                out_size: Tuple[int, int], ids: torch.Tensor,
                score_threshold: float = -1e9) -> Dict[str, torch.Tensor]:
    """VOS object masks of one frame at ``out_size`` (the frame size, shorter side FRAME_SIZE).

    Args:
        outputs: the decoder's output (batch 1, ID queries in ``ids`` order).
        padded: (Hp, Wp). image_size: (h, w) of the model input inside the padding.
    """
    masks = sem_seg_postprocess(upsample_masks(outputs["pred_id_masks"], padded), image_size,
                                out_size[0], out_size[1])
    return id_inference(masks, outputs["pred_id_logits"][0], ids, score_threshold)


def label_map(masks: Sequence[torch.Tensor], ids: Sequence[int]) -> torch.Tensor:
    """One (H, W) int64 label map: each pixel takes the largest id among the masks covering it,
    0 where none does (tools/eval_vos.py l.451-453)."""
    out = torch.zeros(masks[0].shape, dtype=torch.int64)
    for m, i in zip(masks, ids):
        out = torch.maximum(out, m.to(torch.int64) * int(i))
    return out
