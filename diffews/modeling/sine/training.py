# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's training forward: in-context samples in, the weighted loss terms out.

As the original's training model computes it (aim-uofa/SINE ``sine/model/model.py`` l.78-134,
``sine/model/transformer_decoder/mformer.py`` l.525-557 and l.709-725 for the pooling):

1. the reference images of the batch and the target images of the batch are each stacked with
   detectron2's ``ImageList.from_tensors`` (padded to a multiple of the patch size 14; the
   samples are already normalised and zero-padded to the working size, ``data/incontext``) and
   encoded separately: the frozen DINOv2 under ``no_grad``, then the trainable neck;
2. per sample, the reference's instance masks (zero-padded to the image batch, as
   ``prepare_targets``) and its features are resized bilinearly to the mask-feature size (4x the
   feature grid); one **ID query** per reference instance (mask pooling over its mask > 0) and
   one **class query** per distinct reference class, sorted (pooling over the union of that
   class's instances: the sum of their resized masks > 0) (``pool_references``);
3. the Matching Transformer decodes the target from ``[ID queries; class queries]``
   (``decoder.MatchingTransformer.forward``): last layer's predictions and the earlier layers'
   (``aux_outputs``, deep supervision);
4. ``SineCriterion`` matches and computes the loss terms against the target's instances (each
   target class as its index among the reference classes, ``labels_t``), and each term is
   multiplied by its weight; terms without a weight are dropped (``model.py`` l.128-133).

Gradients reach the neck through both the pooled reference features and the target features,
and the decoder; the DINOv2 weights never get one (``requires_grad`` False, ``no_grad``).
"""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import ImageList

from .criterion import prepare_targets
from .pooling import mask_pool, pooling_inputs

__all__ = ["pool_references", "training_losses", "check_sample"]


def pool_references(features: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training rule's queries of one reference image (mformer.py l.538-557).

    Args:
        features: (1, C, h, w) neck features of the padded reference.
        masks: (M, H, W) its instance masks at the padded image size (bool or {0, 1}).
        labels: (M,) int64 class of each instance.
    Returns:
        ID queries (M, C), class queries (K, C) and the K distinct classes (K,) sorted
        ascending (the class columns of the instance logits).
    """
    feats, m = pooling_inputs(features, masks[None].to(features.dtype))  # (1, C, 4h, 4w)
    id_queries = mask_pool(feats, m)[0]
    classes = torch.unique(labels)
    union = torch.stack([m[0, labels == c].sum(0) for c in classes.tolist()])  # (K, 4h, 4w)
    class_queries = mask_pool(feats, union[None])[0]
    return id_queries, class_queries, classes


def check_sample(sample: Dict, index: int) -> None:
    """Raise ValueError naming the sample and key when a training sample lacks what the
    forward reads (schema: ``diffews/data/incontext/source.py``)."""
    for side in ("ref_dict", "tar_dict"):
        if not isinstance(sample, dict) or side not in sample:
            raise ValueError(f"SINE training sample {index}: no '{side}' (an in-context sample "
                             "has 'ref_dict' and 'tar_dict', see data/incontext/source.py)")
        for key in ("image", "instances"):
            if key not in sample[side]:
                raise ValueError(f"SINE training sample {index}: '{side}' has no '{key}'")
        image = sample[side]["image"]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"SINE training sample {index}: '{side}' image is "
                             f"{tuple(image.shape)}, expected (3, H, W) normalised")
    if len(sample["ref_dict"]["instances"]) == 0:
        raise ValueError(f"SINE training sample {index}: the reference has no instance")


def _encode(model, images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ImageList]:
    """Stack (ImageList, size divisibility 14) and encode one side of the batch."""
    batch = ImageList.from_tensors([x.to(model.device, torch.float32) for x in images],
                                   size_divisibility=model.image_encoder.patch_size)
    return model.image_encoder(batch.tensor), batch


def training_losses(model, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
    """The weighted loss terms of one batch of in-context samples.

    Args:
        model: a ``SINE`` with a ``criterion``.
        batched_inputs: in-context samples (``data/incontext/source.py``): per sample
            ``{"ref_dict": {"image": (3, S, S) normalised, zero-padded float, "instances":
            Instances(gt_classes (N,), gt_masks (N, S, S), ins_ids (N,))}, "tar_dict": same}``;
            every target class must be a reference class.
    Returns:
        ``{name: weighted scalar}``: ``loss_ce_ins``, ``loss_ce_id``, ``loss_mask``,
        ``loss_dice`` and their ``_<i>`` copies for the earlier decoder layers; the optimiser
        sums them.
    """
    if model.criterion is None:
        raise ValueError("SINE training needs a criterion (built from MODEL.SINE.LOSS)")
    if not batched_inputs:
        raise ValueError("SINE training: an empty batch")
    for i, sample in enumerate(batched_inputs):
        check_sample(sample, i)
    refs = [s["ref_dict"] for s in batched_inputs]
    tars = [s["tar_dict"] for s in batched_inputs]
    ref_features, ref_batch = _encode(model, [r["image"] for r in refs])
    tar_features, tar_batch = _encode(model, [t["image"] for t in tars])
    ref_targets = prepare_targets([r["instances"].to(model.device) for r in refs],
                                  tuple(ref_batch.tensor.shape[-2:]))
    tar_targets = prepare_targets([t["instances"].to(model.device) for t in tars],
                                  tuple(tar_batch.tensor.shape[-2:]))
    outputs = []
    for b, (ref, target) in enumerate(zip(ref_targets, tar_targets)):
        ids, cls, classes = pool_references(ref_features[b:b + 1], ref["masks"], ref["labels"])
        out = model.transformer_decoder(tar_features[b:b + 1], ids[None], cls[None])
        out["ref_sem_labels"] = classes[None]
        out["ref_id_labels"] = ref["labels"][None]
        outputs.append(out)
    losses = model.criterion(outputs, ref_targets, tar_targets)
    return model.criterion.weigh(losses)
