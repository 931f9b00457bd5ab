# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Training sets of the in-context recipe (``configs/incontext/``; TRAINING.md): every class of
COCO, ADE20K and PASCAL, none held out.

* ``coco_incontext_train``: COCO 2014 **train** images, all 80 classes (ids 0..79, COCO-20i's
  numbering). The COCO-20i tree and loader (``coco20i.py``): the union of the HSNet train lists of
  folds 0 and 1, which together cover every class (fold 0 trains on the 60 classes outside
  ``{0, 4, ..., 76}``, fold 1 outside ``{1, 5, ..., 77}``; 79,939 images with the shipped lists).
  COCO-20i tests on val2014 and LVIS-92i on val2017 images, neither of which is in train2014.
* ``pascal_incontext_train``: VOC2012 + SBD (``SegmentationClassAug``), all 20 classes: the
  union of the PASCAL-5i train lists of folds 0 and 1 (the ``trn`` lists of all four folds;
  10,092 images, none of them a PASCAL-5i test image). Label 255 (boundaries) is ignored.
* ``ade20k_incontext_train``: ADE20K's 150 classes through detectron2's own registration
  ``ade20k_sem_seg_train`` (``ADEChallengeData2016/images/training`` and
  ``annotations_detectron2/training``, written by detectron2's
  ``datasets/prepare_ade20k_sem_seg.py``: class = value, 0..149, 255 = ignore). An image is
  listed under a class covering at least ``ADE20K_MIN_PIXELS`` pixels (our choice: PFENet's
  2 x 32 x 32 training filter; ADE20K has many specks that make useless supports). The label
  scan is cached in ``$DETECTRON2_DATASETS/.diffews_cache``.
"""

import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco20i import COCO_CLASSES, load_coco20i
from .registration import register_fss
from .roots import require
from .custom_layouts import scan_semseg_labels
from .pascal5i import PASCAL_CLASSES, load_pascal5i

logger = logging.getLogger(__name__)

__all__ = ["INCONTEXT_TRAIN", "ADE20K_MIN_PIXELS", "load_coco_incontext",
           "load_pascal_incontext", "load_ade20k_incontext", "register_all_incontext"]

INCONTEXT_TRAIN = ("coco_incontext_train", "ade20k_incontext_train", "pascal_incontext_train")
ADE20K_MIN_PIXELS = 2 * 32 * 32
ADE20K_D2_NAME = "ade20k_sem_seg_train"


def _merge(*record_lists: List[Dict]) -> List[Dict]:
    """Records of several lists merged by ``image_id`` (classes united), sorted by ID."""
    by_id: Dict[str, Dict] = {}
    for records in record_lists:
        for r in records:
            if r["image_id"] in by_id:
                merged = by_id[r["image_id"]]
                merged["classes"] = sorted(set(merged["classes"]) | set(r["classes"]))
            else:
                by_id[r["image_id"]] = {**r, "classes": sorted(r["classes"])}
    return [by_id[k] for k in sorted(by_id)]


def load_coco_incontext(root: Optional[str] = None, splits: Optional[str] = None) -> List[Dict]:
    """COCO 2014 train records with all 80 classes (records.py contract, "class_value")."""
    records = _merge(load_coco20i(0, "train", root, splits), load_coco20i(1, "train", root, splits))
    logger.info("COCO in-context train: %d images, 80 classes", len(records))
    return records


def load_pascal_incontext(root: Optional[str] = None, splits: Optional[str] = None) -> List[Dict]:
    """VOC2012 + SBD train records with all 20 classes (records.py contract, "class_value")."""
    records = _merge(load_pascal5i(0, "train", root, splits),
                     load_pascal5i(1, "train", root, splits))
    logger.info("PASCAL in-context train: %d images, 20 classes", len(records))
    return records


def load_ade20k_incontext(min_pixels: int = ADE20K_MIN_PIXELS) -> List[Dict]:
    """ADE20K train records with the 150 classes (label format "class_index", offset 0), from
    detectron2's ``ade20k_sem_seg_train`` (its root is ``$DETECTRON2_DATASETS`` when detectron2
    was imported)."""
    meta = MetadataCatalog.get(ADE20K_D2_NAME)
    hint = " (ADE20K prepared with detectron2's datasets/prepare_ade20k_sem_seg.py)"
    require(meta.image_root, "ADE20K training image folder" + hint, is_dir=True)
    require(meta.sem_seg_root, "ADE20K detectron2 label folder" + hint, is_dir=True)
    d2 = sorted(DatasetCatalog.get(ADE20K_D2_NAME), key=lambda r: r["file_name"])
    scans = scan_semseg_labels([r["sem_seg_file_name"] for r in d2], len(meta.stuff_classes), 0,
                               meta.ignore_label, min_pixels)
    records = []
    for r, (classes, h, w) in zip(d2, scans):
        if classes:
            records.append({
                "image_id": os.path.splitext(os.path.basename(r["file_name"]))[0],
                "file_name": r["file_name"], "mask_file": r["sem_seg_file_name"],
                "label_offset": 0, "ignore_label": int(meta.ignore_label),
                "height": h, "width": w, "classes": classes,
            })
    logger.info("ADE20K in-context train: %d of %d images with a class of >= %d pixels",
                len(records), len(d2), min_pixels)
    return records


def register_all_incontext() -> None:
    """Register the three in-context training sets (lazy: nothing is read until loaded)."""
    common = dict(benchmark="incontext", fold=0, split="train", num_episodes=None)
    register_fss("coco_incontext_train", load_coco_incontext, class_ids=list(range(80)),
                 class_names=list(COCO_CLASSES), label_format="class_value",
                 ignore_boundary=False, **common)
    register_fss("pascal_incontext_train", load_pascal_incontext, class_ids=list(range(20)),
                 class_names=list(PASCAL_CLASSES), label_format="class_value",
                 ignore_boundary=True, **common)
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    register_fss("ade20k_incontext_train", load_ade20k_incontext, class_ids=list(range(150)),
                 class_names=list(ADE20K_SEM_SEG_CATEGORIES), label_format="class_index",
                 ignore_boundary=True, **common)


register_all_incontext()
