# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reference pooling: support masks + features -> ID queries and class queries (docs/SINE.md 4).

Every task pools at the mask-feature size (4x the feature grid): masks and features are both
resized there bilinearly (align_corners False), a mask counts where it is > 0, and a pooled
query is the feature sum over the mask divided by (mask area + 1e-8). The tasks differ in what
is pooled together, and we follow each original exactly:

- FSS (``pool_fss``; aim-uofa/SINE inference_fss/model/transformer_decoder/mformer.py
  l.538-555): one ID query per shot; one class query over all shots, the shots' features and
  masks placed side by side along the width;
- FSIS (``pool_fsis``; inference_fsod/fsdet/model/model.py l.107-167): one ID query per support
  instance; one class query per class, ``sum_i sum_px f_i * m_i / (sum_i area_i + 1e-8)`` over
  all the class's instances in all its support images;
- VOS (``pool_vos``; inference_vos/model/transformer_decoder/mformer.py l.538-566): one ID query
  per object over all its memory frames side by side; the class queries ARE the ID queries.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["mask_pool", "pooling_inputs", "pool_fss", "pool_fsis", "pool_vos", "pooled_sums"]

EPS = 1e-8


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` over each mask (> 0), the original's ``MaskPooling``.

    Args:
        features: (B, C, H, W).
        masks: (B, Q, H', W'), resized bilinearly to (H, W) if they differ.
    Returns:
        (B, Q, C): sum over the mask / (mask area + 1e-8); zeros for an empty mask.
    """
    if masks.shape[-2:] != features.shape[-2:]:
        masks = F.interpolate(masks, size=features.shape[-2:], mode="bilinear",
                              align_corners=False)
    binary = (masks.detach() > 0).to(masks.dtype)
    weights = binary / (binary.sum(dim=(-1, -2), keepdim=True) + EPS)
    return torch.einsum("bchw,bqhw->bqc", features, weights)


def pooling_inputs(features: torch.Tensor, masks: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features and masks at the mask-feature size (4h, 4w), both bilinear.

    Args:
        features: (K, C, h, w) neck features of the padded supports.
        masks: (K, n, Hp, Wp) masks at the padded size, {0, 1}.
    Returns:
        (K, C, 4h, 4w) features and (K, n, 4h, 4w) masks in the features' dtype.
    """
    size = (features.shape[-2] * 4, features.shape[-1] * 4)
    masks = F.interpolate(masks.to(features.dtype), size=size, mode="bilinear",
                          align_corners=False)
    features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    return features, masks


def _side_by_side(t: torch.Tensor) -> torch.Tensor:
    """(K, C, H, W) -> (1, C, H, K * W): the K maps placed left to right."""
    return torch.cat(torch.split(t, 1, dim=0), dim=-1)


def pooled_sums(features: torch.Tensor, masks: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised pooling: (sum over all K masks of the masked features (C,), total area ()).
    ``sum / (area + 1e-8)`` is the pooled query of all K together; sums of several supports'
    ``pooled_sums`` pool them together (equal to pooling them at once up to float rounding).

    Args:
        features: (K, C, H, W) at the pooling size. masks: (K, H, W) at the same size.
    """
    binary = (masks > 0).to(features.dtype)
    return torch.einsum("kchw,khw->c", features, binary), binary.sum()


def pool_fss(features: torch.Tensor, masks: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FSS pooling of one episode's K supports (one class).

    Args:
        features: (K, C, h, w) neck features of the padded supports.
        masks: (K, Hp, Wp) support masks at the padded size, {0, 1}.
    Returns:
        id_queries (K, C), class_query (1, C), and the class's ``pooled_sums`` ((C,), ()).
    """
    feats, m = pooling_inputs(features, masks[:, None])
    id_queries = mask_pool(feats, m)[:, 0]
    class_query = mask_pool(_side_by_side(feats), _side_by_side(m))[:, 0]
    return (id_queries, class_query) + pooled_sums(feats, m[:, 0])


def pool_fsis(features: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FSIS pooling of one class over all its support instances.

    Args:
        features: per support image, (C, h, w) neck features of the padded image.
        masks: per support image, (n_i, Hp, Wp) masks of the class's instances in it, {0, 1}
            (n_i >= 1).
    Returns:
        id_queries (sum n_i, C) in image then instance order, class_query (1, C), and the
        class's ``pooled_sums`` ((C,), ()).
    """
    inst_feats: List[torch.Tensor] = []
    inst_masks: List[torch.Tensor] = []
    for feature, mask in zip(features, masks):
        f4, m4 = pooling_inputs(feature[None], mask[None])  # (1, C, 4h, 4w), (1, n_i, ...)
        inst_feats.extend([f4[0]] * m4.shape[1])
        inst_masks.extend(m4[0])
    if not inst_masks:
        raise ValueError("pool_fsis: a class needs at least one support instance")
    id_queries = torch.cat([mask_pool(f[None], m[None, None])[0] for f, m in
                            zip(inst_feats, inst_masks)])
    binary = [(m > 0).to(m.dtype) for m in inst_masks]
    area = sum(b.sum() for b in binary)
    denom = area + EPS
    class_query = 0
    for f, b in zip(inst_feats, binary):
        class_query = class_query + (f * (b / denom)[None]).sum(dim=(-1, -2))
    sums = sum(torch.einsum("chw,hw->c", f, b) for f, b in zip(inst_feats, binary))
    return id_queries, class_query[None], sums, area


def pool_vos(features: torch.Tensor, masks: torch.Tensor, ids: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """VOS pooling: one query per object over all its reference frames.

    Args:
        features: (R, C, h, w) neck features of the R reference frames (padded).
        masks: (R, Hp, Wp) each reference's object mask at the padded size, {0, 1}.
        ids: (R,) int64 object id of each reference.
    Returns:
        object ids (n,) sorted ascending, and their queries (n, C) (used as both the ID and
        the class queries).
    """
    feats, m = pooling_inputs(features, masks[:, None])
    objects = torch.unique(ids)
    queries = [mask_pool(_side_by_side(feats[ids == o]), _side_by_side(m[ids == o]))[0]
               for o in objects.tolist()]
    return objects, torch.cat(queries)
