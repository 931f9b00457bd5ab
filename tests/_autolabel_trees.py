# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A tiny labelling job on disk: supports in the class-folder layout (and the same supports as a
COCO json), images to label with their ground truth as a COCO json, and a corrupt image.

Each object is a rectangle of its class's colour on a noise background (JPEG images, 0/255 PNG
masks). The writer returns what it wrote, so tests compare against the files, not the code.
"""

import json
import os
from typing import Dict, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

H, W = 20, 24
COLOURS = [(230, 40, 40), (40, 220, 60), (50, 60, 230), (220, 220, 40)]


def _object(seed: int):
    rng = np.random.RandomState(seed)
    y, x = rng.randint(0, H // 2), rng.randint(0, W // 2)
    m = np.zeros((H, W), bool)
    m[y:y + rng.randint(4, H // 2 + 1), x:x + rng.randint(4, W // 2 + 1)] = True
    noise = rng.randint(0, 120, (H, W, 3)).astype(np.uint8)
    return m, noise


def _write(path: str, mask: np.ndarray, noise: np.ndarray, colour) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = noise.copy()
    image[mask] = colour
    Image.fromarray(image).save(path, quality=95)


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _coco(images, annotations, names, ids) -> Dict:
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in zip(ids, names)]}


def write_autolabel_tree(root: str, classes: Sequence[str] = ("apple", "bird", "cup"),
                         shots: int = 2, per_class: int = 3, corrupt: bool = True) -> Dict:
    """``root/supports/<class>/<i>.jpg + .png``, ``root/supports.json`` (the same supports as a
    COCO json over ``root/supports_flat/``, category ids 10, 20, ...), ``root/images/<class>_<i>
    .jpg`` (``per_class`` each, one object of its class), ``root/images/zz_corrupt.jpg`` (not an
    image) and ``root/gt.json`` (their ground truth, category ids 1..C in class order).

    Returns:
        {"supports", "supports_json", "supports_flat", "images", "gt", "corrupt", "names":
        [file names of the good images, sorted], "classes"}.
    """
    flat_images, flat_anns = [], []
    for c, name in enumerate(classes):
        for i in range(shots):
            m, noise = _object(100 * c + i)
            _write(os.path.join(root, "supports", name, f"{i}.jpg"), m, noise, COLOURS[c])
            os.makedirs(os.path.join(root, "supports", name), exist_ok=True)
            Image.fromarray((m * 255).astype(np.uint8), mode="L").save(
                os.path.join(root, "supports", name, f"{i}.png"))
            fname = f"{name}_{i}.jpg"
            _write(os.path.join(root, "supports_flat", fname), m, noise, COLOURS[c])
            flat_images.append({"id": len(flat_images) + 1, "file_name": fname, "height": H,
                                "width": W})
            flat_anns.append({"id": len(flat_anns) + 1, "image_id": len(flat_images),
                              "category_id": 10 * (c + 1), "segmentation": _rle(m),
                              "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
    with open(os.path.join(root, "supports.json"), "w") as f:
        json.dump(_coco(flat_images, flat_anns, classes, [10 * (c + 1) for c in
                                                          range(len(classes))]), f)
    images, anns = [], []
    for c, name in enumerate(classes):
        for i in range(per_class):
            m, noise = _object(5000 + 100 * c + i)
            fname = f"{name}_{i}.jpg"
            _write(os.path.join(root, "images", fname), m, noise, COLOURS[c])
            images.append({"file_name": fname, "height": H, "width": W})
            ys, xs = np.nonzero(m)
            anns.append({"file_name": fname, "category_id": c + 1, "segmentation": _rle(m),
                         "area": int(m.sum()), "iscrowd": 0,
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)]})
    images.sort(key=lambda x: x["file_name"])
    for k, img in enumerate(images):
        img["id"] = k + 1
    ids = {img["file_name"]: img["id"] for img in images}
    for k, a in enumerate(anns):
        a.update(id=k + 1, image_id=ids[a.pop("file_name")])
    with open(os.path.join(root, "gt.json"), "w") as f:
        json.dump(_coco(images, anns, classes, range(1, len(classes) + 1)), f)
    corrupt_path = os.path.join(root, "images", "zz_corrupt.jpg")
    if corrupt:
        with open(corrupt_path, "wb") as f:
            f.write(b"\xff\xd8 this is not a JPEG")
    return {"supports": os.path.join(root, "supports"),
            "supports_json": os.path.join(root, "supports.json"),
            "supports_flat": os.path.join(root, "supports_flat"),
            "images": os.path.join(root, "images"), "gt": os.path.join(root, "gt.json"),
            "corrupt": corrupt_path, "names": [img["file_name"] for img in images],
            "classes": list(classes)}
