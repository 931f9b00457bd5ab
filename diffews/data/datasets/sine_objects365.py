# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Objects365 with SAM masks (SAM-Objects365, github.com/KainingYing/SAM_Objects365): the
instance source that makes up 3/4 of SINE's instance samples.

Layout (aim-uofa/SINE ``TRAINING.md``), relative to ``$DETECTRON2_DATASETS``::

    Objects365/
      annotations/sam_obj365_train_1742k.json   sam_obj365_train_75k.json   sam_obj365_val_5k.json
      sam_mask_json/sam_obj365_train_1742k/<segmentation_file>   (one json per image)
      sam_mask_json/sam_obj365_train_75k/<segmentation_file>
      images/...                      (wherever the annotation json's ``file_name`` points)

An annotation json is a COCO detection json (boxes, no masks) whose ``images[]`` also name a
``segmentation_file``; that file holds ``{"image_id": ..., "segmentations": {"<annotation id>":
RLE}}`` with the RLE uncompressed (``counts`` a list) as the original reads it with
``pycocotools.mask.frPyObjects`` (compressed ``counts`` strings are accepted too). Paths, as the
original's loader builds them (``sine/data/load_data/object365.py`` l.39-102): the image is
``<Objects365>/<file_name>`` and the mask file ``<Objects365>/sam_mask_json/<json file name
without extension>/<segmentation_file>``; annotations whose category is not in ``categories`` are
dropped (the original keeps the 365 classes). The masks are read when a sample is built
(``diffews.data.incontext``), not here.

Registered: ``sine_o365_sam_train`` (the 1742k file), ``sine_o365_sam_train_75k`` and
``sine_o365_sam_val`` (5k). Which training file the released model used is not in the original
repository (its registration module is missing); the recipe's default is the full file.
Records: ``file_name, image_id, segmentation_file, annotations[{id, category_id (contiguous:
sorted category ids -> 0, 1, ...), bbox, bbox_mode, iscrowd}]`` (plus ``height``/``width`` when
the json has them).
"""

import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

from detectron2.structures import BoxMode

from .roots import dataset_root, require
from .split_files import load_json
from .sine_instances import register_sine_set

logger = logging.getLogger(__name__)

__all__ = ["O365_ROOT", "O365_SETS", "load_objects365_sam", "load_objects365_sam_json",
           "register_all_sine_objects365"]

O365_ROOT = "Objects365"
O365_SETS = {  # name -> annotation json under <root>/Objects365/annotations/
    "sine_o365_sam_train": "sam_obj365_train_1742k.json",
    "sine_o365_sam_train_75k": "sam_obj365_train_75k.json",
    "sine_o365_sam_val": "sam_obj365_val_5k.json",
}


def load_objects365_sam_json(json_file: str, o365_root: str) -> List[Dict]:
    """Records of one SAM-Objects365 annotation json (format in the module docstring).

    Args:
        json_file: the annotation json.
        o365_root: the ``Objects365`` folder (images and ``sam_mask_json/`` are under it).

    Returns:
        records in the json's image order.
    """
    require(json_file, "Objects365 annotation json")
    mask_dir = os.path.join(o365_root, "sam_mask_json",
                            os.path.basename(json_file).split(".")[0])
    require(mask_dir, "SAM mask json folder of this annotation file", is_dir=True)
    data = load_json(json_file)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: no '{key}' list; is it a SAM-Objects365 json?")
    contiguous = {c["id"]: i for i, c in enumerate(sorted(data["categories"],
                                                          key=lambda c: c["id"]))}
    by_image = defaultdict(list)
    dropped = 0
    for ann in data["annotations"]:
        if ann["category_id"] not in contiguous:
            dropped += 1
            continue
        by_image[int(ann["image_id"])].append({
            "id": int(ann["id"]), "category_id": contiguous[ann["category_id"]],
            "bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
            "iscrowd": int(ann.get("iscrowd", 0))})
    records = []
    for img in data["images"]:
        if not img.get("segmentation_file"):
            raise ValueError(f"{json_file}: image {img['id']} names no 'segmentation_file' (a "
                             "SAM-Objects365 json gives every image one)")
        record = {"file_name": os.path.join(o365_root, img["file_name"]),
                  "image_id": int(img["id"]),
                  "segmentation_file": os.path.join(mask_dir, img["segmentation_file"]),
                  "annotations": by_image.get(int(img["id"]), [])}
        if "height" in img and "width" in img:
            record.update(height=img["height"], width=img["width"])
        records.append(record)
    if dropped:
        logger.warning("%s: %d annotations of unknown categories dropped", json_file, dropped)
    logger.info("%s: %d images, %d categories", json_file, len(records), len(contiguous))
    return records


def load_objects365_sam(name: str, root: Optional[str] = None) -> List[Dict]:
    """Records of a registered SAM-Objects365 set (``O365_SETS``) under ``root``."""
    if name not in O365_SETS:
        raise KeyError(f"unknown SAM-Objects365 set {name!r}; one of {sorted(O365_SETS)}")
    o365 = os.path.join(dataset_root(root), O365_ROOT)
    require(o365, "Objects365 folder", is_dir=True)
    return load_objects365_sam_json(os.path.join(o365, "annotations", O365_SETS[name]), o365)


def register_all_sine_objects365() -> None:
    """Register ``O365_SETS`` (lazy)."""
    for name in O365_SETS:
        split = "val" if name.endswith("_val") else "train"
        register_sine_set(name, lambda n=name: load_objects365_sam(n), "instance", split)


register_all_sine_objects365()
