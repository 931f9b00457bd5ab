# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Instance training sources of SINE's in-context recipe in COCO / LVIS json: COCO instances,
ADE20K instances and PACO-LVIS (Objects365 with SAM masks: ``sine_objects365.py``).

The original registers them in a ``sine/data/datasets/`` package that its ``.gitignore`` left
out of the repository (``datasets/`` is ignored at any depth); its loaders are in
``sine/data/load_data/{coco,paco}.py`` (detectron2's COCO / LVIS loaders that also keep each
annotation's ``id``, the instance id SINE's ID queries are matched by). Layouts, relative to
``$DETECTRON2_DATASETS`` (aim-uofa/SINE ``TRAINING.md``; Mask2Former's ``datasets/README.md``):

* ``sine_coco_instance_{train,val}``: ``coco/annotations/instances_{split}2017.json`` over
  ``coco/{split}2017/``;
* ``sine_ade20k_instance_{train,val}``: ``ADEChallengeData2016/ade20k_instance_{split}.json``
  (Mask2Former's ``prepare_ade20k_ins_seg.py``: RLE masks) over
  ``ADEChallengeData2016/images/{training,validation}/``;
* ``sine_paco_lvis_{train,val,test}``: ``paco/paco_lvis_v1_{split}.json`` over ``coco/`` (PACO's
  ``file_name`` holds the COCO split folder, e.g. ``train2017/000000000009.jpg``); objects and
  object parts are both instances.

Records (detectron2's instance dicts): ``file_name, height, width, image_id, annotations[{id,
category_id (contiguous: the json's category ids in increasing order -> 0, 1, ...), bbox,
bbox_mode (XYWH_ABS), iscrowd, segmentation (polygons, or compressed RLE)}]``. As the original's
loaders do: polygons with fewer than 3 points are dropped and an annotation left without one is
skipped; uncompressed RLE is compressed; PACO annotations with an empty segmentation are skipped;
annotation ids must be unique within a file.
"""

import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .roots import dataset_root, require
from .split_files import load_json

logger = logging.getLogger(__name__)

__all__ = ["INSTANCE_SETS", "load_instances", "load_instances_json", "register_sine_set",
           "register_all_sine_instances"]

# name -> (json, image folder), relative to the root
INSTANCE_SETS = {
    "sine_coco_instance_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "sine_coco_instance_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    "sine_ade20k_instance_train": ("ADEChallengeData2016/ade20k_instance_train.json",
                                   "ADEChallengeData2016/images/training"),
    "sine_ade20k_instance_val": ("ADEChallengeData2016/ade20k_instance_val.json",
                                 "ADEChallengeData2016/images/validation"),
    "sine_paco_lvis_train": ("paco/paco_lvis_v1_train.json", "coco"),
    "sine_paco_lvis_val": ("paco/paco_lvis_v1_val.json", "coco"),
    "sine_paco_lvis_test": ("paco/paco_lvis_v1_test.json", "coco"),
}


def _segmentation(segm, height: int, width: int):
    """Valid polygons (>= 3 points) or a compressed RLE; None when nothing is left."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def load_instances_json(json_file: str, image_root: str) -> List[Dict]:
    """Records of a COCO- or LVIS-format instance json (format in the module docstring).

    Args:
        json_file: the annotation json (``images``, ``annotations``, ``categories``).
        image_root: folder the images' ``file_name`` is relative to.

    Returns:
        list of records, sorted by image id (the original's loaders' order); every image is
        kept, also one without annotations.
    """
    require(json_file, "instance annotation json")
    require(image_root, "image folder", is_dir=True)
    data = load_json(json_file)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: no '{key}' list; is it a COCO/LVIS instance json?")
    contiguous = {c["id"]: i for i, c in enumerate(sorted(data["categories"],
                                                          key=lambda c: c["id"]))}
    by_image = defaultdict(list)
    seen = set()
    for ann in data["annotations"]:
        if ann["id"] in seen:
            raise ValueError(f"{json_file}: annotation id {ann['id']} appears twice (SINE matches "
                             "instances by annotation id)")
        seen.add(ann["id"])
        by_image[ann["image_id"]].append(ann)
    records, dropped = [], 0
    for img in sorted(data["images"], key=lambda i: i["id"]):
        objs = []
        for ann in by_image.get(img["id"], []):
            if ann["category_id"] not in contiguous:
                raise ValueError(f"{json_file}: annotation {ann['id']} has category "
                                 f"{ann['category_id']}, not in 'categories'")
            segm = _segmentation(ann.get("segmentation") or [], img["height"], img["width"])
            if segm is None:
                dropped += 1
                continue
            objs.append({"id": int(ann["id"]), "category_id": contiguous[ann["category_id"]],
                         "bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
                         "iscrowd": int(ann.get("iscrowd", 0)), "segmentation": segm})
        records.append({"file_name": os.path.join(image_root, img["file_name"]),
                        "height": img["height"], "width": img["width"], "image_id": img["id"],
                        "annotations": objs})
    if dropped:
        logger.warning("%s: %d annotations without a valid segmentation skipped", json_file,
                       dropped)
    logger.info("%s: %d images, %d annotations, %d categories", json_file, len(records),
                len(seen) - dropped, len(contiguous))
    return records


def load_instances(name: str, root: Optional[str] = None) -> List[Dict]:
    """Records of a registered SINE instance source (``INSTANCE_SETS``) under ``root``
    (default ``$DETECTRON2_DATASETS``)."""
    if name not in INSTANCE_SETS:
        raise KeyError(f"unknown SINE instance set {name!r}; one of {sorted(INSTANCE_SETS)}")
    json_file, image_root = (os.path.join(dataset_root(root), p) for p in INSTANCE_SETS[name])
    return load_instances_json(json_file, image_root)


def register_sine_set(name: str, loader, task: str, split: str, **metadata) -> None:
    """Register ``name`` (replacing an earlier registration) as a SINE ``task`` source
    ("panoptic" or "instance") of ``split`` ("train", "val", ...), with extra ``metadata``."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(benchmark="sine_incontext", sine_task=task,
                                  split=split, ignore_label=255, **metadata)


def register_all_sine_instances() -> None:
    """Register ``INSTANCE_SETS`` (lazy: the root is read when a set is loaded)."""
    for name in INSTANCE_SETS:
        # PACO's builder rasterises polygons before dropping empty instances (paco.py l.278)
        fmt = "bitmask" if name.startswith("sine_paco") else "auto"
        register_sine_set(name, lambda n=name: load_instances(n), "instance",
                          name.rsplit("_", 1)[1], sine_mask_format=fmt)


register_all_sine_instances()
