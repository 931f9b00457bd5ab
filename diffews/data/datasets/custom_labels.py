# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The binary label of one class, read from a custom record when a sample is loaded
(``records.load_sample``). The records come from the layout readers of ``custom_layouts.py``,
whose docstring states each label format's rule:

* "class_index" (semseg layout): class ``c`` is pixel value ``c + label_offset``; the record's
  ``ignore_label`` is ignore (255) in query labels and background otherwise.
* "binary" (folder layout): a mask whose maximum is 1 is a 0/1 mask; any other mask is foreground
  where >= 128 (FSS-1000's rule).
* "coco_instances" (coco layout): the union of the class's non-crowd instances; in query labels a
  crowd region of the class not covered by a non-crowd instance is ignore (255).
"""

from typing import Dict, Sequence, Tuple

import numpy as np

from ...utils.image import read_label

__all__ = ["IGNORE", "custom_label"]

IGNORE = 255


def _decode(segms: Sequence, h: int, w: int) -> np.ndarray:
    """(h, w) bool union of COCO segmentations (polygon lists, RLE or uncompressed RLE)."""
    from pycocotools import mask as mask_util

    out = np.zeros((h, w), bool)
    for segm in segms:
        if isinstance(segm, list) or isinstance(segm.get("counts"), list):
            rle = mask_util.frPyObjects(segm, h, w)
        else:
            rle = segm
        rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        out |= mask_util.decode(rle).astype(bool)
    return out


def custom_label(record: Dict, class_id: int, label_format: str, shape: Tuple[int, int],
                 ignore: bool) -> np.ndarray:
    """Binary label of one class for a custom record (``records.load_sample``).

    Args:
        record: image record of a custom layout.
        class_id: the episode class.
        label_format: "class_index", "binary" or "coco_instances".
        shape: (H, W) of the image (COCO polygons and RLEs are decoded at the json's size).
        ignore: mark ignore pixels 255 (query labels); else they are background.
    Returns:
        (H, W) uint8, 1 = class, 0 = other, 255 = ignore.
    """
    if label_format == "class_index":
        raw = read_label(record["mask_file"])
        label = (raw == class_id + record.get("label_offset", 0)).astype(np.uint8)
        if ignore:
            label[raw == record.get("ignore_label", IGNORE)] = IGNORE
        return label
    if label_format == "binary":
        raw = read_label(record["mask_file"])
        return (raw == 1 if raw.max() <= 1 else raw >= 128).astype(np.uint8)
    if label_format == "coco_instances":
        h, w = record.get("height", shape[0]), record.get("width", shape[1])
        fg = _decode(record["segmentations"].get(class_id, []), h, w)
        label = fg.astype(np.uint8)
        if ignore and class_id in record.get("crowd", {}):
            label[_decode(record["crowd"][class_id], h, w) & ~fg] = IGNORE
        return label
    raise ValueError(f"unknown custom label format {label_format!r}")
