# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Panoptic training sources of SINE's in-context recipe: COCO panoptic and ADE20K panoptic.

Both are COCO panoptic files (a json with ``images``, ``annotations[{file_name, image_id,
segments_info[{id, category_id, iscrowd, ...}]}]`` and ``categories[{id, isthing, ...}]``, plus one
RGB PNG per image whose pixel value ``R + 256 G + 256^2 B`` is the segment ``id``). The original
trains on detectron2's ``coco_2017_train_panoptic`` and Mask2Former's ``ade20k_panoptic_train``
(aim-uofa/SINE ``sine/data/dataset.py`` l.20-24); the layouts (``TRAINING.md``, Mask2Former's
``datasets/README.md``), relative to ``$DETECTRON2_DATASETS``:

* ``sine_coco_panoptic_{train,val}``: ``coco/annotations/panoptic_{split}2017.json``,
  ``coco/panoptic_{split}2017/*.png``, images ``coco/{split}2017/*.jpg``;
* ``sine_ade20k_panoptic_{train,val}``: ``ADEChallengeData2016/ade20k_panoptic_{split}.json``,
  ``ADEChallengeData2016/ade20k_panoptic_{split}/*.png`` (Mask2Former's
  ``prepare_ade20k_pan_seg.py``), images ``ADEChallengeData2016/images/{training,validation}``.

Records (detectron2's panoptic dicts, as both loaders build them): ``file_name`` (the PNG's name
with ``.jpg``), ``pan_seg_file_name``, ``image_id`` and ``segments_info[{id, category_id,
iscrowd, isthing}]`` with ``category_id`` contiguous (the json's category ids in increasing order
-> 0, 1, ...; only equality between classes matters to the in-context samples).
"""

import logging
import os
from typing import Dict, List, Optional

from .roots import dataset_root, require
from .split_files import load_json
from .sine_instances import register_sine_set

logger = logging.getLogger(__name__)

__all__ = ["PANOPTIC_SETS", "load_panoptic", "load_panoptic_json", "register_all_sine_panoptic"]

# name -> (json, PNG folder, image folder), relative to the root
PANOPTIC_SETS = {
    "sine_coco_panoptic_train": ("coco/annotations/panoptic_train2017.json",
                                 "coco/panoptic_train2017", "coco/train2017"),
    "sine_coco_panoptic_val": ("coco/annotations/panoptic_val2017.json",
                               "coco/panoptic_val2017", "coco/val2017"),
    "sine_ade20k_panoptic_train": ("ADEChallengeData2016/ade20k_panoptic_train.json",
                                   "ADEChallengeData2016/ade20k_panoptic_train",
                                   "ADEChallengeData2016/images/training"),
    "sine_ade20k_panoptic_val": ("ADEChallengeData2016/ade20k_panoptic_val.json",
                                 "ADEChallengeData2016/ade20k_panoptic_val",
                                 "ADEChallengeData2016/images/validation"),
}


def load_panoptic_json(json_file: str, panoptic_root: str, image_root: str) -> List[Dict]:
    """Records of one COCO-panoptic json (format in the module docstring).

    Args:
        json_file: the panoptic json.
        panoptic_root: folder of the segment-id PNGs named by ``annotations[].file_name``.
        image_root: folder of the images (the PNG's name with ``.jpg``).

    Returns:
        list of records, in the json's annotation order.
    """
    require(json_file, "panoptic annotation json")
    require(panoptic_root, "panoptic PNG folder", is_dir=True)
    require(image_root, "image folder", is_dir=True)
    data = load_json(json_file)
    for key in ("annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: no '{key}' list; is it a COCO panoptic json?")
    contiguous = {c["id"]: i for i, c in enumerate(sorted(data["categories"],
                                                          key=lambda c: c["id"]))}
    things = {c["id"] for c in data["categories"] if c.get("isthing", 0)}
    records = []
    for ann in data["annotations"]:
        segments = []
        for s in ann["segments_info"]:
            if s["category_id"] not in contiguous:
                raise ValueError(f"{json_file}: image {ann['image_id']}: segment {s['id']} has "
                                 f"category {s['category_id']}, not in 'categories'")
            segments.append({"id": int(s["id"]), "category_id": contiguous[s["category_id"]],
                             "iscrowd": int(s.get("iscrowd", 0)),
                             "isthing": s["category_id"] in things})
        records.append({
            "file_name": os.path.join(image_root, os.path.splitext(ann["file_name"])[0] + ".jpg"),
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "image_id": ann["image_id"],
            "segments_info": segments,
        })
    logger.info("%s: %d panoptic images, %d categories", json_file, len(records),
                len(contiguous))
    return records


def load_panoptic(name: str, root: Optional[str] = None) -> List[Dict]:
    """Records of a registered SINE panoptic source (``PANOPTIC_SETS``) under ``root``
    (default ``$DETECTRON2_DATASETS``)."""
    if name not in PANOPTIC_SETS:
        raise KeyError(f"unknown SINE panoptic set {name!r}; one of {sorted(PANOPTIC_SETS)}")
    json_file, png_root, image_root = (os.path.join(dataset_root(root), p)
                                       for p in PANOPTIC_SETS[name])
    return load_panoptic_json(json_file, png_root, image_root)


def register_all_sine_panoptic() -> None:
    """Register ``PANOPTIC_SETS`` (lazy: the root is read when a set is loaded)."""
    for name in PANOPTIC_SETS:
        register_sine_set(name, lambda n=name: load_panoptic(n), "panoptic",
                          name.rsplit("_", 1)[1])


register_all_sine_panoptic()
