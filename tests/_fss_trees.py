# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny few-shot benchmark trees in the real on-disk layouts (datasets/README.md), for tests.

Every writer returns a dict describing what it wrote (class lists, image names) so that tests can
compare loaders against it. Images are small random JPEGs; labels are PNGs in each benchmark's
format. Split files are written in the real formats, under the tree's own ``splits/`` folder (the
loaders read them with ``DIFFEWS_SPLITS=tree``).
"""

import os
import pickle
from typing import Dict, List

import numpy as np
from PIL import Image

H, W = 24, 32


def register_all() -> None:
    """Re-register the real benchmarks (fresh metadata; loading a tree updates some of it)."""
    from diffews.data.datasets import coco20i, fss1000, lvis92i, pascal5i

    coco20i.register_all_coco20i()
    pascal5i.register_all_pascal5i()
    fss1000.register_all_fss1000()
    lvis92i.register_all_lvis92i()


def _image(path: str, seed: int, h: int = H, w: int = W) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def _label(path: str, label: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def _bands(classes: List[int], boundary: bool = False) -> np.ndarray:
    """Label with value c + 1 on every len(classes)-th column per class; optional 255 border."""
    label = np.zeros((H, W), np.uint8)
    for x in range(W):
        label[4:, x] = classes[x % len(classes)] + 1
    if boundary:
        label[3, :] = 255
    return label


def write_coco_tree(root: str, fold: int = 0, num_images: int = 6, per_class: int = 3) -> Dict:
    """COCO2014 tree for one fold: val images/masks for the 20 test classes, train for the 60
    base classes, and HSNet-format pickles ``COCO2014/splits/{val,trn}/fold{fold}.pkl`` (dict
    over all 80 classes, empty lists outside the split)."""
    base = os.path.join(root, "COCO2014")
    test = [fold + 4 * v for v in range(20)]
    out = {"test_classes": test}
    for split, sub, classes in (("val", "val2014", test),
                                ("trn", "train2014", [c for c in range(80) if c not in test])):
        names = [f"{sub}/COCO_{sub}_{i:012d}.jpg" for i in range(num_images)]
        classwise = {c: [] for c in range(80)}
        for k, c in enumerate(classes):
            classwise[c] = [names[(k + j) % num_images] for j in range(per_class)]
        for i, name in enumerate(names):
            listed = [c for c in classes if name in classwise[c]]
            _image(os.path.join(base, name), seed=i)
            _label(os.path.join(base, "annotations", name[:-4] + ".png"), _bands(listed))
        os.makedirs(os.path.join(base, "splits", split), exist_ok=True)
        with open(os.path.join(base, "splits", split, f"fold{fold}.pkl"), "wb") as f:
            pickle.dump(classwise, f)
        out[split] = classwise
    return out


def write_pascal_tree(root: str, num_images: int = 8) -> Dict:
    """VOC2012 tree with SegmentationClassAug labels (class + 1, 255 boundary) and the 8 split
    files ``VOC2012/splits/{trn,val}/fold{k}.txt``; every class has 2 images per split."""
    base = os.path.join(root, "VOC2012")
    lines: Dict[str, Dict[int, List[str]]] = {"val": {}, "trn": {}}
    listed: Dict[str, List[int]] = {}
    for split, offset in (("val", 0), ("trn", 100)):
        for fold in range(4):
            rows = []
            for c in range(5 * fold, 5 * fold + 5):
                for j in range(2):
                    name = f"2008_{offset + (c + j) % num_images:06d}"
                    rows.append(f"{name}__{c + 1:02d}")
                    listed.setdefault(name, []).append(c)
            lines[split][fold] = rows
            path = os.path.join(base, "splits", split, f"fold{fold}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("\n".join(rows) + "\n")
    for i, (name, classes) in enumerate(sorted(listed.items())):
        _image(os.path.join(base, "JPEGImages", name + ".jpg"), seed=100 + i)
        _label(os.path.join(base, "SegmentationClassAug", name + ".png"),
               _bands(sorted(set(classes)), boundary=True))
    return {"lines": lines}


FSS_SPLITS = {"test": ["zebra", "apple", "bus"], "trn": ["cat", "ant"], "val": ["kite"]}


def write_fss_tree(root: str, hsnet_layout: bool = False) -> Dict:
    """FSS-1000 tree: ``FSS-1000/data/<class>/{1..10}.{jpg,png}`` (or, with ``hsnet_layout``,
    without ``data/``) and ``FSS-1000/splits/{trn,val,test}.txt`` (unsorted, as class names
    in the real files are not sorted either). Masks are 0/255 with some mid-gray pixels."""
    base = os.path.join(root, "FSS-1000")
    image_dir = base if hsnet_layout else os.path.join(base, "data")
    for split, cats in FSS_SPLITS.items():
        os.makedirs(os.path.join(base, "splits"), exist_ok=True)
        with open(os.path.join(base, "splits", f"{split}.txt"), "w") as f:
            f.write("\n".join(cats) + "\n")
        for k, cat in enumerate(cats):
            for i in range(1, 11):
                _image(os.path.join(image_dir, cat, f"{i}.jpg"), seed=1000 + 10 * k + i)
                mask = np.zeros((H, W), np.uint8)
                mask[2:2 + i, 3:20] = 255
                mask[0, :] = 127  # below the 128 threshold
                mask[1, :] = 128  # at the threshold: foreground
                _label(os.path.join(image_dir, cat, f"{i}.png"), mask)
    return {"splits": FSS_SPLITS, "image_dir": image_dir}


def _lvis_counts(num_cats: int) -> Dict[int, int]:
    """Images per category: 1 for multiples of 7 (dropped by every filter), 6 for the other even
    ids (kept at 5 shots), 3 for the rest (kept at 1 shot only)."""
    return {c: 1 if c % 7 == 0 else (6 if c % 2 == 0 else 3) for c in range(1, num_cats + 1)}


def write_lvis_tree(root: str, num_cats: int = 25, num_images: int = 8) -> Dict:
    """LVIS tree: ``LVIS/coco/{train2017,val2017}/*.jpg`` and Matcher-format pickles
    ``LVIS/lvis_{train,val}.pkl`` (category -> image name -> {"annotations": [{"segmentation":
    polygons}, ...]}). Each image of a category holds two rectangles of it (a union to take)."""
    base = os.path.join(root, "LVIS")
    out = {}
    for split, sub in (("val", "val2017"), ("train", "train2017")):
        first = 0 if split == "val" else 500000
        names = [f"{sub}/{first + i:012d}.jpg" for i in range(num_images)]
        for i, name in enumerate(names):
            _image(os.path.join(base, "coco", name), seed=2000 + i + (0 if split == "val" else 50))
        anno = {}
        for c, count in _lvis_counts(num_cats).items():
            anno[c] = {}
            for j in range(count):
                x = (c + j) % 10
                anno[c][names[(c + j) % num_images]] = {"annotations": [
                    {"segmentation": [[x, 2, x + 6, 2, x + 6, 8, x, 8]], "category_id": c},
                    {"segmentation": [[x + 10, 12, x + 16, 12, x + 16, 20, x + 10, 20]],
                     "category_id": c},
                ]}
        with open(os.path.join(base, f"lvis_{split}.pkl"), "wb") as f:
            pickle.dump(anno, f)
        out[split] = anno
    return out
