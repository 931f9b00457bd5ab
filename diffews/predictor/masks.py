# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Support masks as the predictors take them: a binary mask (a file path, a PIL image or an
(H, W) array, non-zero = foreground), or COCO annotations of the supports' instances (a dict
with "segmentation": polygons or RLE, or a list of such dicts: the class's instances in that
image). A model that rasterises instances itself at its own input size (SINE's few-shot instance
segmentation) reads the annotations; the others take their union at the image's size."""

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..utils.image import ImageReadError, as_mask

__all__ = ["is_annotations", "annotation_list", "instance_masks", "union_mask"]

Annotation = Dict
MaskInput = Union[str, np.ndarray, Annotation, Sequence[Annotation]]


def is_annotations(mask) -> bool:
    """Whether ``mask`` is a COCO annotation dict or a non-empty list of them."""
    if isinstance(mask, dict):
        return "segmentation" in mask
    return (isinstance(mask, (list, tuple)) and len(mask) > 0
            and all(isinstance(a, dict) and "segmentation" in a for a in mask))


def annotation_list(mask) -> List[Annotation]:
    """The annotations of ``mask`` as a list (``is_annotations`` must hold)."""
    return [mask] if isinstance(mask, dict) else list(mask)


def instance_masks(mask, shape: Tuple[int, int], what: str) -> List[np.ndarray]:
    """One (H, W) bool mask per instance at the image's ``shape``: each annotation decoded
    (polygons rasterised by pycocotools, RLE decoded), or the one binary mask given."""
    if not is_annotations(mask):
        m = as_mask(mask, what)
        if m.shape != tuple(shape):
            raise ImageReadError(f"{what}: mask is {m.shape[1]}x{m.shape[0]} but its image is "
                                 f"{shape[1]}x{shape[0]}")
        return [m]
    from ..data.datasets.coco_fsod_reader import annotation_mask

    h, w = shape
    out = []
    for ann in annotation_list(mask):
        if isinstance(ann["segmentation"], list) and not ann["segmentation"]:
            out.append(np.zeros((h, w), bool))  # an instance without polygons
            continue
        try:
            m = annotation_mask(ann, h, w)
        except (ValueError, TypeError, KeyError) as e:
            raise ImageReadError(f"{what}: unreadable segmentation ({e})") from e
        if m.shape != (h, w):
            raise ImageReadError(f"{what}: annotation is {m.shape[1]}x{m.shape[0]} but its image "
                                 f"is {w}x{h}")
        out.append(m)
    return out


def union_mask(mask, shape: Tuple[int, int], what: str) -> np.ndarray:
    """The (H, W) bool union of ``instance_masks``."""
    masks = instance_masks(mask, shape, what)
    return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
