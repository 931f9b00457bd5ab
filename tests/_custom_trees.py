# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny custom few-shot datasets in the three layouts of diffews/data/datasets/custom.py, written
in the real on-disk formats (JPEG images, PNG masks, a COCO instances json).

Each writer returns what it wrote (class names, per-image classes and the exact masks), so tests
compare the loaders against the files, not against the loaders' own code.
"""

import json
import os
from typing import Dict, List

import numpy as np
from pycocotools import mask as mask_util

from _fss_trees import _image as _random_jpeg
from _fss_trees import _label as _png

H, W = 20, 24


def _image(path: str, seed: int) -> None:
    _random_jpeg(path, seed, H, W)


def _box(seed: int) -> np.ndarray:
    """(H, W) bool: a rectangle whose place and size depend on ``seed``."""
    rng = np.random.RandomState(seed)
    y, x = rng.randint(0, H // 2), rng.randint(0, W // 2)
    m = np.zeros((H, W), bool)
    m[y:y + rng.randint(3, H // 2), x:x + rng.randint(3, W // 2)] = True
    return m


def write_folder_tree(root: str, counts: Dict[str, int], zero_one: str = "") -> Dict:
    """``<root>/<class>/<i>.jpg`` + ``<i>.png`` (0/255 masks; class ``zero_one`` gets 0/1 masks).

    Returns:
        {"classes": sorted names, "images": {class: ["<class>/<i>", ...]},
         "masks": {"<class>/<i>": (H, W) bool}}.
    """
    out = {"classes": sorted(counts), "images": {}, "masks": {}}
    for ci, (name, n) in enumerate(sorted(counts.items())):
        out["images"][name] = []
        for i in range(n):
            seed = 1000 * ci + i
            _image(os.path.join(root, name, f"{i}.jpg"), seed)
            mask = _box(seed)
            _png(os.path.join(root, name, f"{i}.png"), mask * (1 if name == zero_one else 255))
            out["images"][name].append(f"{name}/{i}")
            out["masks"][f"{name}/{i}"] = mask
    return out


def write_semseg_tree(root: str, class_names: List[str], labels: List[np.ndarray],
                      class_file: bool = True) -> Dict:
    """``<root>/images/img_<i>.jpg``, ``<root>/labels/img_<i>.png`` (the given label arrays, as
    stored) and ``<root>/class_names.txt``.

    Returns:
        {"ids": ["img_<i>", ...], "labels": {id: array}}.
    """
    ids = [f"img_{i:03d}" for i in range(len(labels))]
    for i, (image_id, label) in enumerate(zip(ids, labels)):
        _image(os.path.join(root, "images", image_id + ".jpg"), 500 + i)
        _png(os.path.join(root, "labels", image_id + ".png"), label)
    if class_file:
        with open(os.path.join(root, "class_names.txt"), "w") as f:
            f.write("\n".join(class_names) + "\n")
    return {"ids": ids, "labels": dict(zip(ids, labels))}


def _rle(mask: np.ndarray, compressed: bool) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    # uncompressed RLE (COCO crowd style): run lengths in column-major order, starting with 0s
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def write_coco_tree(root: str, categories: Dict[int, str], images: List[Dict]) -> Dict:
    """``<root>/images/<name>.jpg`` and ``<root>/instances.json``.

    Args:
        categories: COCO category id -> name (ids need not be contiguous).
        images: per image ``{"name": str, "instances": [(category id, (H, W) bool mask,
            iscrowd), ...]}``; masks are written as compressed RLE, crowds as uncompressed RLE.
    Returns:
        {"json": path, "image_dir": path, "data": the json dict}.
    """
    data = {"images": [], "annotations": [],
            "categories": [{"id": k, "name": v} for k, v in categories.items()]}
    for i, img in enumerate(images):
        _image(os.path.join(root, "images", img["name"] + ".jpg"), 900 + i)
        data["images"].append({"id": 100 + i, "file_name": img["name"] + ".jpg",
                               "height": H, "width": W})
        for cat, mask, crowd in img["instances"]:
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": 100 + i, "category_id": cat,
                "segmentation": _rle(mask, compressed=not crowd), "iscrowd": int(crowd),
                "area": int(mask.sum()), "bbox": [0, 0, W, H],
            })
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return {"json": path, "image_dir": os.path.join(root, "images"), "data": data}


def write_ade20k_tree(root: str, labels: List[np.ndarray]) -> Dict:
    """detectron2's ADE20K layout: ``ADEChallengeData2016/images/training/ADE_train_<i>.jpg`` and
    ``annotations_detectron2/training/ADE_train_<i>.png`` (class 0..149, 255 = ignore), plus one
    validation pair.

    Returns:
        {"ids": ["ADE_train_<i>", ...], "labels": {id: array}}.
    """
    base = os.path.join(root, "ADEChallengeData2016")
    ids = [f"ADE_train_{i + 1:08d}" for i in range(len(labels))]
    for i, (image_id, label) in enumerate(zip(ids, labels)):
        _image(os.path.join(base, "images", "training", image_id + ".jpg"), 700 + i)
        _png(os.path.join(base, "annotations_detectron2", "training", image_id + ".png"), label)
    _image(os.path.join(base, "images", "validation", "ADE_val_00000001.jpg"), 799)
    _png(os.path.join(base, "annotations_detectron2", "validation", "ADE_val_00000001.png"),
         labels[0])
    return {"ids": ids, "labels": dict(zip(ids, labels))}
