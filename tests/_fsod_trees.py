# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A tiny few-shot instance segmentation tree in TFA's layout (datasets/README.md, FSOD), for tests.

Written independently of the loaders (paths spelled out here from TFA's ``datasets/README.md`` and
``prepare_coco_few_shot.py``)::

    coco/trainval2014/*.jpg, coco/val2014/*.jpg
    cocosplit/full_box_{K}shot_{class}_trainval.json          # seed 0: no seed folder
    cocosplit/seed{S}/full_box_{K}shot_{class}_trainval.json  # seeds 1..9
    cocosplit/datasplit/5k.json
    VOCOutput/annotations/val_converted.json, VOCOutput/val/*.jpg

Images are small JPEGs with the annotated shapes drawn in; annotations are COCO polygons,
compressed RLE (str counts) and, for crowds, uncompressed RLE; ``bbox`` and ``area`` are those of
the rasterised mask (pycocotools).
"""

import json
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

H, W = 48, 64
# TFA builtin_meta COCO_NOVEL_CATEGORIES (ids, names), the 20 VOC classes in COCO order
NOVEL = [(1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
         (6, "bus"), (7, "train"), (9, "boat"), (16, "bird"), (17, "cat"), (18, "dog"),
         (19, "horse"), (20, "sheep"), (21, "cow"), (44, "bottle"), (62, "chair"), (63, "couch"),
         (64, "potted plant"), (67, "dining table"), (72, "tv")]
BASE = [(8, "truck"), (15, "bench")]
VOC_NAMES = ["person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "boat", "bird",
             "cat", "dog", "horse", "sheep", "cow", "bottle", "chair", "sofa", "pottedplant",
             "diningtable", "tvmonitor"]  # same order as NOVEL (SINE's val_converted.json)


def _shape(rng: np.random.RandomState, kind: str) -> Dict:
    """A shape's segmentation: "polygon" (a quadrilateral), "rle" (an ellipse, compressed) or
    "crowd" (a rectangle, uncompressed RLE with iscrowd 1), plus its mask, bbox and area."""
    if kind == "polygon":
        x0, y0 = rng.randint(0, W - 20), rng.randint(0, H - 16)
        w, h = rng.randint(8, 20), rng.randint(6, 16)
        poly = [x0, y0, x0 + w, y0 + 1, x0 + w - 1, y0 + h, x0 + 1, y0 + h - 1]
        segm = [[float(v) for v in poly]]
        rle = mask_util.merge(mask_util.frPyObjects(segm, H, W))
    else:
        m = np.zeros((H, W), np.uint8)
        cx, cy = rng.randint(10, W - 10), rng.randint(8, H - 8)
        if kind == "rle":
            cv2.ellipse(m, (int(cx), int(cy)), (int(rng.randint(4, 10)), int(rng.randint(3, 7))),
                        0, 0, 360, 1, -1)
        else:
            m[cy - 5:cy + 5, cx - 8:cx + 8] = 1
        rle = mask_util.encode(np.asfortranarray(m))
        if kind == "rle":
            segm = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
        else:  # uncompressed: run lengths in column-major order
            flat = m.flatten(order="F")
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            counts = np.diff(np.concatenate([[0], edges])).tolist()
            segm = {"size": [H, W], "counts": [int(c) for c in counts]}
    mask = mask_util.decode(rle).astype(bool)
    return {"segmentation": segm, "mask": mask, "bbox": [float(v) for v in mask_util.toBbox(rle)],
            "area": float(mask_util.area(rle))}


def _write_image(path: str, masks: Sequence[np.ndarray], seed: int) -> None:
    rng = np.random.RandomState(seed)
    img = rng.randint(0, 60, (H, W, 3)).astype(np.uint8)
    for i, m in enumerate(masks):
        img[m] = [(80 + 50 * i) % 256, 200, (40 * i) % 256]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


class _Writer:
    """Accumulates one COCO json (images, annotations) and writes the images it lists."""

    def __init__(self, image_dir: str, prefix: str, seed: int):
        self.image_dir, self.prefix = image_dir, prefix
        self.rng = np.random.RandomState(seed)
        self.images: List[Dict] = []
        self.annotations: List[Dict] = []
        self.gt: Dict[int, List[Dict]] = {}

    def image(self, image_id: int, objects: Sequence) -> None:
        """objects: [(category id, kind)]; kind as in ``_shape``."""
        name = f"{self.prefix}_{image_id:012d}.jpg"
        self.images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        shapes = []
        for cat, kind in objects:
            s = _shape(self.rng, kind)
            ann = {"id": 1000 * image_id + len(self.annotations) + 1, "image_id": image_id,
                   "category_id": cat, "segmentation": s["segmentation"], "bbox": s["bbox"],
                   "area": s["area"], "iscrowd": int(kind == "crowd")}
            self.annotations.append(ann)
            self.gt.setdefault(image_id, []).append(ann)
            shapes.append(s["mask"])
        _write_image(os.path.join(self.image_dir, name), shapes, seed=image_id)

    def dump(self, path: str, categories: List[Dict]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # images listed in decreasing id order: loaders must sort them (TFA sorts by id)
        data = {"info": {}, "licenses": [], "images": self.images[::-1],
                "annotations": self.annotations, "categories": categories}
        with open(path, "w") as f:
            json.dump(data, f)


def split_path(root: str, shot: int, seed: int, name: str) -> str:
    """TFA's split file path (seed 0 directly in cocosplit/)."""
    folder = os.path.join(root, "cocosplit", *([f"seed{seed}"] if seed else []))
    return os.path.join(folder, f"full_box_{shot}shot_{name}_trainval.json")


def write_fsod_tree(root: str, shots: Sequence[int] = (1, 5), seeds: Sequence[int] = (0, 1),
                    voc_order: str = "coco") -> Dict:
    """Write the tree; returns {"splits": {(shot, seed, class): path}, "test_json", "voc_json"}.

    Seed-0 class files hold more than K instances for classes ``c % 3 != 0`` (K + c % 3 + 1
    records: the first image has two instances), exactly K otherwise; other seeds exactly K.
    ``voc_order``: "coco" numbers the VOC categories 1..20 in NOVEL order (SINE's file),
    "alphabetical" in VOC's alphabetical order.
    """
    cats = [{"id": i, "name": n, "supercategory": ""} for i, n in NOVEL + BASE]
    out = {"splits": {}}
    trainval = os.path.join(root, "coco", "trainval2014")
    next_id = 1
    for seed in seeds:
        for shot in shots:
            for c, (cid, name) in enumerate(NOVEL):
                n = shot + (c % 3 + 1 if seed == 0 and c % 3 else 0)
                w = _Writer(trainval, "COCO_train2014", seed=next_id)
                kinds = ["polygon", "rle"]
                objs = [[(cid, kinds[k % 2])] for k in range(n)]
                if n > shot:  # the first image holds two instances
                    objs = [objs[0] + objs[1]] + objs[2:]
                for o in objs:
                    w.image(next_id, o)
                    next_id += 1
                path = split_path(root, shot, seed, name)
                w.dump(path, cats)
                out["splits"][(shot, seed, name)] = path
    # COCO test: 5k.json over val2014 (novel + base classes, one crowd, one image without novel)
    w = _Writer(os.path.join(root, "coco", "val2014"), "COCO_val2014", seed=7)
    layout = [[(1, "polygon"), (1, "rle"), (3, "polygon")], [(17, "rle"), (8, "polygon")],
              [(62, "polygon"), (62, "polygon"), (1, "crowd")], [(15, "rle")],
              [(72, "rle"), (44, "polygon"), (5, "rle")], [(18, "polygon"), (19, "rle")]]
    for i, objs in enumerate(layout):
        w.image(100 + i, objs)
    out["test_json"] = os.path.join(root, "cocosplit", "datasplit", "5k.json")
    w.dump(out["test_json"], cats[::-1])
    out["test_gt"] = w.gt
    # VOC val converted to COCO json
    names = list(VOC_NAMES) if voc_order == "coco" else sorted(VOC_NAMES)
    voc_cats = [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(names)]
    vid = {n: i + 1 for i, n in enumerate(names)}
    w = _Writer(os.path.join(root, "VOCOutput", "val"), "2008", seed=11)
    layout = [[(vid["person"], "polygon"), (vid["sofa"], "rle")],
              [(vid["aeroplane"], "rle"), (vid["tvmonitor"], "polygon")],
              [(vid["cow"], "polygon"), (vid["cow"], "rle")]]
    for i, objs in enumerate(layout):
        w.image(200 + i, objs)
    out["voc_json"] = os.path.join(root, "VOCOutput", "annotations", "val_converted.json")
    w.dump(out["voc_json"], voc_cats)
    out["voc_gt"] = w.gt
    return out
