# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reading the few-shot instance segmentation files, TFA protocol (docs/METHOD.md section 7.2, docs/PROTOCOLS.md section 2f);
the registered names and the record format are in ``coco_fsod.py``, which re-exports these names.

* Support splits: ``<root>/cocosplit[/seed{S}]/full_box_{K}shot_{class}_trainval.json`` (class =
  the COCO name with its space, e.g. ``potted plant``), images in ``<root>/coco/trainval2014/``,
  **one record per annotation**. TFA ``fsdet/data/meta_coco.py`` ``load_coco_json``: per class
  in novel order, images sorted by id, each image's annotations in file order; a class with more
  than K records keeps ``np.random.choice(records, K, replace=False)``. TFA draws from numpy's
  global RNG, seeded only by ``default_setup`` (``cfg.SEED``, -1 = random in TFA's and SINE's
  configs); here one ``np.random.RandomState(sample_seed)`` is shared by the classes in novel
  order, which is TFA's draw after ``np.random.seed(sample_seed)``. Only seed 0 (the earlier
  works' files) has classes with more than K instances; TFA's seeds 1-9 hold exactly K.
  Seed 0 lives in ``cocosplit/`` itself (TFA); SINE's copy moved it to ``cocosplit/seed0/``,
  which is read when the TFA file is absent.
* ``coco_test_novel``: ``<root>/cocosplit/datasplit/5k.json`` over ``<root>/coco/val2014/``, every
  image, annotations of the 20 novel classes only (COCO ids ``NOVEL_IDS``).
* ``VOCSegm_val_novel``: ``<root>/VOCOutput/annotations/val_converted.json`` over
  ``<root>/VOCOutput/val/``; its categories are matched to the COCO novel classes by name (VOC or
  COCO spelling).
"""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from .roots import README, dataset_root, require
from .split_files import load_json
from .registration import update_metadata

logger = logging.getLogger(__name__)

__all__ = ["NOVEL_IDS", "NOVEL_CLASSES", "NOVEL_ID_MAP", "SHOTS", "SEEDS", "TEST_PATHS",
           "SUPPORT_IMAGES", "check_shot_seed", "support_split_file", "load_support_class_file",
           "load_fsod_support", "voc_category_map", "fsod_test_metadata", "load_fsod_test",
           "annotation_mask"]

# TFA fsdet/data/builtin_meta.py COCO_NOVEL_CATEGORIES (the 20 VOC classes), contiguous 0..19
NOVEL_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
NOVEL_CLASSES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat",
                 "bird", "cat", "dog", "horse", "sheep", "cow", "bottle", "chair", "couch",
                 "potted plant", "dining table", "tv"]
NOVEL_ID_MAP = {cid: i for i, cid in enumerate(NOVEL_IDS)}
_VOC_NAMES = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch",
              "pottedplant": "potted plant", "diningtable": "dining table", "tvmonitor": "tv",
              "tv monitor": "tv"}
SHOTS = (1, 2, 3, 5, 10, 30)
SEEDS = tuple(range(10))
TEST_PATHS = {  # name -> (annotation json, image folder), relative to the root
    "coco_test_novel": ("cocosplit/datasplit/5k.json", "coco/val2014"),
    "VOCSegm_val_novel": ("VOCOutput/annotations/val_converted.json", "VOCOutput/val"),
}
SUPPORT_IMAGES = "coco/trainval2014"


def check_shot_seed(shot: int, seed: int) -> None:
    """Raise ValueError unless ``shot`` is one of TFA's shots and ``seed`` one of its seeds."""
    if shot not in SHOTS or seed not in SEEDS:
        raise ValueError(f"FSOD: shot must be one of {SHOTS} and seed 0..9, got {shot}, {seed}")


def support_split_file(root: str, shot: int, seed: int, class_name: str) -> str:
    """``<root>/cocosplit[/seed{S}]/full_box_{K}shot_{class}_trainval.json`` (TFA layout: no
    ``seed0`` folder). For seed 0, SINE's ``cocosplit/seed0/`` copy is used if only it exists."""
    name = f"full_box_{shot}shot_{class_name}_trainval.json"
    base = os.path.join(root, "cocosplit")
    path = os.path.join(base, f"seed{seed}", name) if seed else os.path.join(base, name)
    if seed == 0 and not os.path.isfile(path):
        sine = os.path.join(base, "seed0", name)
        if os.path.isfile(sine):
            logger.info("FSOD seed 0: reading SINE's layout %s (TFA's %s is absent)", sine, path)
            return sine
    return path


def _coco_json(path: str, what: str) -> Dict:
    require(path, what)
    data = load_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' "
                         f"lists), see {README}")
    return data


def _images_and_annotations(data: Dict) -> List[Tuple[Dict, List[Dict]]]:
    """(image, its annotations in file order) for images sorted by id (pycocotools' imgToAnns)."""
    by_image: Dict[int, List[Dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = {img["id"]: img for img in data["images"]}
    return [(images[i], by_image[i]) for i in sorted(images)]


def _instance(ann: Dict, id_map: Dict[int, int]) -> Dict:
    obj = {k: ann[k] for k in ("iscrowd", "bbox", "segmentation") if k in ann}
    obj["bbox_mode"] = BoxMode.XYWH_ABS
    obj["category_id"] = id_map[ann["category_id"]]
    return obj


def _record(img: Dict, image_root: str, annotations: List[Dict]) -> Dict:
    return {"file_name": os.path.join(image_root, img["file_name"]), "height": img["height"],
            "width": img["width"], "image_id": img["id"], "annotations": annotations}


def load_support_class_file(path: str, class_index: int, image_root: str) -> List[Dict]:
    """One record per annotation of one class's split file (TFA order), before the K draw."""
    data = _coco_json(path, f"TFA few-shot split file of class '{NOVEL_CLASSES[class_index]}'")
    records = []
    for img, anns in _images_and_annotations(data):
        for ann in anns:
            if ann["category_id"] not in NOVEL_ID_MAP:
                raise ValueError(f"{path}: annotation {ann.get('id')} has category_id "
                                 f"{ann['category_id']}, not a novel class {NOVEL_IDS}")
            if ann["category_id"] != NOVEL_IDS[class_index]:
                logger.warning("%s: annotation %s is of category %d, kept as TFA does", path,
                               ann.get("id"), ann["category_id"])
            records.append(_record(img, image_root, [_instance(ann, NOVEL_ID_MAP)]))
    return records


def load_fsod_support(shot: int, seed: int = 0, root: Optional[str] = None,
                      sample_seed: int = 0) -> List[Dict]:
    """The K support records of each novel class, classes in novel order (TFA ``meta_coco``).

    A class file with more than K records keeps ``K`` drawn without replacement by one
    ``np.random.RandomState(sample_seed)`` shared across the classes (``choice(n, K,
    replace=False)`` draws ``permutation(n)[:K]``, as ``np.random.choice(records, K, ...)``
    does on the global RNG after ``np.random.seed(sample_seed)``); the drawn order is kept.
    Raises MissingDataError naming the first missing class file or image folder.
    """
    check_shot_seed(shot, seed)
    root = dataset_root(root)
    image_root = require(os.path.join(root, SUPPORT_IMAGES), "COCO trainval2014 image folder",
                         is_dir=True)
    rng = np.random.RandomState(sample_seed)
    out: List[Dict] = []
    for idx, name in enumerate(NOVEL_CLASSES):
        path = support_split_file(root, shot, seed, name)
        records = load_support_class_file(path, idx, image_root)
        if len(records) > shot:
            records = [records[i] for i in rng.choice(len(records), shot, replace=False)]
        elif len(records) < shot:
            logger.warning("%s: %d instances for a %d-shot split", path, len(records), shot)
        out.extend(records)
    logger.info("FSOD supports %d-shot seed %d: %d records", shot, seed, len(out))
    return out


def voc_category_map(categories: Sequence[Dict], path: str) -> Dict[int, int]:
    """VOC-as-COCO category id -> contiguous novel index, matched by name (``sofa`` = couch, ...).
    SINE's ``val_converted.json`` numbers them 1..20 in the COCO novel order."""
    index = {n: i for i, n in enumerate(NOVEL_CLASSES)}
    out: Dict[int, int] = {}
    for cat in categories:
        raw = str(cat.get("name", "")).strip().lower()
        name = _VOC_NAMES.get(raw, raw)
        if name not in index:
            raise ValueError(f"{path}: category {cat.get('id')} '{cat.get('name')}' is not one "
                             f"of the 20 VOC classes")
        if index[name] in out.values():
            raise ValueError(f"{path}: two categories name the class '{name}'")
        out[int(cat["id"])] = index[name]
    if len(out) != len(NOVEL_CLASSES):
        missing = sorted(set(NOVEL_CLASSES) - {NOVEL_CLASSES[v] for v in out.values()})
        raise ValueError(f"{path}: the categories lack the VOC classes {missing}, see {README}")
    return out


def fsod_test_metadata(name: str, root: Optional[str] = None,
                  categories: Optional[Sequence[Dict]] = None) -> Dict:
    """Metadata of a test set under ``root``: json_file, image_root, the id map and
    ``eval_category_ids``; ``categories`` (the json's) are checked/matched when given."""
    json_rel, img_rel = TEST_PATHS[name]
    root = dataset_root(root)
    json_file = os.path.join(root, json_rel)
    # VOC before its json is read: SINE's numbering, 1..20 in the COCO novel order
    id_map = dict(NOVEL_ID_MAP) if name == "coco_test_novel" else {i + 1: i for i in range(20)}
    if categories is not None:
        if name == "VOCSegm_val_novel":
            id_map = voc_category_map(categories, json_file)
        else:
            missing = sorted(set(NOVEL_IDS) - {int(c["id"]) for c in categories})
            if missing:
                raise ValueError(f"{json_file}: the novel classes with COCO ids {missing} are "
                                 f"missing from its categories, see {README}")
    return {"json_file": json_file, "image_root": os.path.join(root, img_rel),
            "thing_dataset_id_to_contiguous_id": id_map, "eval_category_ids": sorted(id_map)}


def load_fsod_test(name: str, root: Optional[str] = None) -> List[Dict]:
    """Every image of a test set (sorted by id) with its novel-class annotations (TFA
    ``meta_coco`` non-shot branch, plus the segmentation SINE adds); updates the metadata."""
    meta = fsod_test_metadata(name, root)
    require(meta["image_root"], f"{name} image folder", is_dir=True)
    data = _coco_json(meta["json_file"], f"{name} annotation file")
    meta = fsod_test_metadata(name, root, data.get("categories", []))
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    records = [
        _record(img, meta["image_root"],
                [_instance(a, id_map) for a in anns if a["category_id"] in id_map])
        for img, anns in _images_and_annotations(data)
    ]
    update_metadata(name, **meta)
    logger.info("%s: %d images, %d novel instances", name, len(records),
                sum(len(r["annotations"]) for r in records))
    return records


def annotation_mask(annotation: Dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO/detectron2 annotation's polygons, RLE or uncompressed RLE."""
    segm = annotation["segmentation"]
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
    return mask_util.decode(rle).astype(bool)
