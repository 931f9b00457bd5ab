# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One image of an in-context sample: read, augment, and its instances with ids and classes.

As the original builds them (aim-uofa/SINE ``sine/data/coco.py`` l.128-215 for panoptic data,
``sine/data/o365.py`` l.151-272 for instance data, ``coco_ins.py`` and ``paco.py`` the same
with polygons):

* **panoptic**: the segment-id PNG goes through the same transforms (nearest), each segment of a
  kept class that is not a crowd and still has a pixel becomes an instance; its id is the
  segment's ``id``;
* **instance**: annotations (Objects365: masks from the image's SAM mask json) of kept classes,
  not crowds, transformed by detectron2 (polygons cropped by shapely, RLE decoded then
  transformed as a mask), boxes recomputed from the masks, empty instances dropped
  (``filter_empty_instances``), polygons rasterised at the augmented size; the id is the
  annotation's ``id``.

In both, instances are in class order (a stable sort by ``category_id``, so the reference and a
target cut from the same image list their common instances in the same order, which the ID
matching relies on) and masks are zero-padded bottom/right to the working size.
"""

import copy
import json
import os
from typing import Collection, Dict, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Boxes, Instances

from ..records import BadSampleError
from .augment import pad_to

__all__ = ["read_rgb", "rgb_to_id", "panoptic_instances", "annotation_instances",
           "empty_instances"]


def read_rgb(path: str, record_id="") -> np.ndarray:
    """(H, W, 3) uint8 RGB with EXIF orientation applied (detectron2's ``read_image``, what the
    original uses); BadSampleError naming the file when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise BadSampleError(f"{path}: no such file", str(record_id), path)
    try:
        return utils.read_image(path, format="RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise BadSampleError(f"{path}: not a readable image ({e})", str(record_id), path) from e


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG (H, W, 3) -> (H, W) segment ids ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def empty_instances(image_shape: Tuple[int, int], size: int) -> Instances:
    """No instance (the sample is drawn again): zero masks at the padded size."""
    inst = Instances(image_shape)
    inst.gt_classes = torch.zeros(0, dtype=torch.int64)
    inst.ins_ids = torch.zeros(0, dtype=torch.int64)
    inst.gt_masks = torch.zeros((0, size, size), dtype=torch.bool)
    inst.gt_boxes = Boxes(torch.zeros((0, 4)))
    return inst


def _by_class(items):
    return [items[i] for i in sorted(range(len(items)), key=lambda i: items[i]["category_id"])]


def panoptic_instances(record: Dict, transforms, image_shape: Tuple[int, int],
                       keep: Collection[int], size: int) -> Instances:
    """Instances of a panoptic record's kept classes after ``transforms``.

    Args:
        record: panoptic record (``pan_seg_file_name``, ``segments_info``).
        transforms: the image's detectron2 transforms.
        image_shape: (h, w) of the augmented image.
        keep: the classes to keep (all of the record's for a reference; the reference's for a
            target).
        size: working size the masks are padded to.

    Returns:
        ``Instances`` with ``gt_classes`` (N,), ``ins_ids`` (N,) the segment ids, ``gt_masks``
        (N, size, size) bool, ``gt_boxes``.
    """
    png = read_rgb(record["pan_seg_file_name"], record.get("image_id", ""))
    ids = rgb_to_id(transforms.apply_segmentation(png))
    if ids.shape != tuple(image_shape):
        raise BadSampleError(f"{record['pan_seg_file_name']}: panoptic PNG of another size than "
                             f"{record['file_name']}", str(record.get("image_id", "")),
                             record["pan_seg_file_name"])
    classes, masks, seg_ids = [], [], []
    for seg in _by_class(record["segments_info"]):
        if seg["category_id"] in keep and not seg["iscrowd"]:
            mask = ids == seg["id"]
            if mask.any():
                classes.append(seg["category_id"])
                masks.append(torch.from_numpy(mask))
                seg_ids.append(seg["id"])
    if not masks:
        return empty_instances(image_shape, size)
    inst = Instances(image_shape)
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.ins_ids = torch.tensor(seg_ids, dtype=torch.int64)
    inst.gt_masks = pad_to(torch.stack(masks), size)
    inst.gt_boxes = BitMasks(inst.gt_masks).get_bounding_boxes()
    return inst


def _sam_segmentations(record: Dict) -> Dict[int, Dict]:
    """Objects365: annotation id -> RLE from the image's SAM mask json."""
    path = record["segmentation_file"]
    if not os.path.isfile(path):
        raise BadSampleError(f"{path}: no such file (SAM mask json)", str(record["image_id"]),
                             path)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise BadSampleError(f"{path}: not a readable json ({e})", str(record["image_id"]),
                             path) from e
    if info.get("image_id") != record["image_id"]:
        raise BadSampleError(f"{path}: image_id {info.get('image_id')} is not the record's "
                             f"{record['image_id']}", str(record["image_id"]), path)
    out = {}
    for ann in record["annotations"]:
        segm = info.get("segmentations", {}).get(str(ann["id"]))
        if segm is None:
            raise BadSampleError(f"{path}: no mask for annotation {ann['id']}",
                                 str(record["image_id"]), path)
        out[ann["id"]] = (mask_util.frPyObjects(segm, *segm["size"])
                          if isinstance(segm["counts"], list) else segm)
    return out


def _rasterise(polygons, h: int, w: int) -> torch.Tensor:
    """Per instance, the union of its polygons at (h, w) -> (N, h, w) bool."""
    masks = []
    for polys in polygons:
        rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polys], h, w)
        masks.append(torch.from_numpy(mask_util.decode(rles).any(axis=2)))
    return torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)


def annotation_instances(record: Dict, transforms, image_shape: Tuple[int, int],
                         keep: Collection[int], size: int, mask_format: str = "auto"
                         ) -> Instances:
    """Instances of an instance record's kept classes after ``transforms`` (arguments and
    result as ``panoptic_instances``; ``ins_ids`` are annotation ids).

    ``mask_format``: "auto" keeps polygons as polygons (dropped when the crop leaves none,
    rasterised at the end) unless the first kept annotation is a mask (COCO / Objects365:
    ``coco_ins.py`` l.220, ``o365.py`` l.235); "bitmask" rasterises polygons right after the
    transforms, so an instance whose polygon covers no pixel is dropped (PACO: ``paco.py``
    l.278)."""
    annotations = copy.deepcopy(record["annotations"])
    if record.get("segmentation_file"):
        segms = _sam_segmentations(record)
        for ann in annotations:
            ann["segmentation"] = segms[ann["id"]]
    annos = [utils.transform_instance_annotations(a, transforms, image_shape)
             for a in _by_class(annotations)
             if not a.get("iscrowd", 0) and a["category_id"] in keep]
    if not annos:
        return empty_instances(image_shape, size)
    if mask_format not in ("auto", "bitmask"):
        raise ValueError(f"mask_format must be 'auto' or 'bitmask', got {mask_format!r}")
    bitmask = mask_format == "bitmask" or isinstance(annos[0]["segmentation"], np.ndarray)
    inst = utils.annotations_to_instances(annos, image_shape,
                                          mask_format="bitmask" if bitmask else "polygon")
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.ins_ids = torch.tensor([a["id"] for a in annos], dtype=torch.int64)
    inst = utils.filter_empty_instances(inst)
    if len(inst) == 0:
        return empty_instances(image_shape, size)
    masks = inst.gt_masks
    h, w = image_shape
    masks = masks.tensor if isinstance(masks, BitMasks) else _rasterise(masks.polygons, h, w)
    inst.gt_masks = pad_to(masks.bool(), size)
    return inst
