#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Dev-only (tools/BENCHMARKS.md "Presence"): tools/autolabel.py on synthetic held-out images,
scored against their truth.

  python dev/presence_autolabel.py OUT --sd SD --weights W [--per-class 6] [-- KEY VALUE ...]

Writes OUT/tree/: supports/<class>/0.jpg + 0.png (one support per held-out class of the
synthetic benchmark: the first image of the class), images/ (the next ``--per-class`` images of
each class, every one holding its class's object and, in half of them, a distractor of another
held-out class) and gt.json (COCO: each visible object's mask under its class). Runs
tools/autolabel.py (the quick start's config, the given SD folder and weights, extra overrides
after ``--``) into OUT/run/ and prints segm AP / AP50 (pycocotools) and the annotations per
image against the 1.5 true objects per image.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def write_tree(root: str, per_class: int):
    from pycocotools import mask as mask_util

    from diffews.data.datasets.synthetic import (SYNTHETIC_CLASS_NAMES, SYNTHETIC_TEST_CLASSES,
                                                 render, synthetic_records)

    records = synthetic_records("test")
    images, anns = [], []
    for c in SYNTHETIC_TEST_CLASSES:
        mine = [r for r in records if r["classes"] == [c]]
        name = SYNTHETIC_CLASS_NAMES[c]
        image, label = render(mine[0], c)
        os.makedirs(os.path.join(root, "supports", name), exist_ok=True)
        Image.fromarray(image).save(os.path.join(root, "supports", name, "0.jpg"), quality=95)
        Image.fromarray(label * 255).save(os.path.join(root, "supports", name, "0.png"))
        for r in mine[1:1 + per_class]:
            fname = f"{r['image_id']}.png"
            image, _ = render(r, c)
            os.makedirs(os.path.join(root, "images"), exist_ok=True)
            Image.fromarray(image).save(os.path.join(root, "images", fname))
            images.append({"file_name": fname, "height": image.shape[0],
                           "width": image.shape[1]})
            for k in [c] + ([r["synthetic"]["distractor"]]
                            if r["synthetic"]["distractor"] is not None else []):
                m = render(r, k)[1].astype(bool)
                if not m.any():
                    continue
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ys, xs = np.nonzero(m)
                anns.append({"file_name": fname, "category_id": SYNTHETIC_TEST_CLASSES.index(k)
                             + 1, "segmentation": rle, "area": int(m.sum()), "iscrowd": 0,
                             "bbox": [int(xs.min()), int(ys.min()), int(xs.ptp() + 1),
                                      int(ys.ptp() + 1)]})
    images.sort(key=lambda x: x["file_name"])
    for i, img in enumerate(images):
        img["id"] = i + 1
    ids = {img["file_name"]: img["id"] for img in images}
    for i, a in enumerate(anns):
        a.update(id=i + 1, image_id=ids[a.pop("file_name")])
    cats = [{"id": i + 1, "name": SYNTHETIC_CLASS_NAMES[c]}
            for i, c in enumerate(SYNTHETIC_TEST_CLASSES)]
    with open(os.path.join(root, "gt.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return len(images), len(anns)


def score(gt_path: str, pred_path: str):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_path)
    pred = json.load(open(pred_path))
    by_name = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    pred_ids = {img["id"]: by_name[os.path.basename(img["file_name"])] for img in pred["images"]}
    names = {c["id"]: c["name"] for c in pred["categories"]}
    gt_cat = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    dets = [{"image_id": pred_ids[a["image_id"]], "category_id": gt_cat[names[a["category_id"]]],
             "segmentation": a["segmentation"], "score": a["score"]} for a in pred["annotations"]]
    if not dets:
        return 0.0, 0.0, 0.0
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return 100 * ev.stats[0], 100 * ev.stats[1], len(dets) / len(gt.dataset["images"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--sd", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("opts", nargs="*")
    args = p.parse_args()
    tree = os.path.join(args.out, "tree")
    if not os.path.isfile(os.path.join(tree, "gt.json")):
        n_img, n_obj = write_tree(tree, args.per_class)
        print(f"tree: {n_img} images, {n_obj} objects")
    run = os.path.join(args.out, "run")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "autolabel.py"), "--config-file",
                    CONFIG, "--supports", os.path.join(tree, "supports"), "--images",
                    os.path.join(tree, "images"), "--output", run, "--overwrite",
                    "MODEL.DIFFEWS.PRETRAINED", args.sd, "MODEL.WEIGHTS", args.weights,
                    "MODEL.DEVICE", "cpu", *args.opts], check=True)
    ap, ap50, per_image = score(os.path.join(tree, "gt.json"),
                                os.path.join(run, "annotations.json"))
    gt = json.load(open(os.path.join(tree, "gt.json")))
    truth = len(gt["annotations"]) / len(gt["images"])
    print(f"autolabel segm AP {ap:.2f}  AP50 {ap50:.2f}  annotations per image {per_image:.2f} "
          f"(true objects per image {truth:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
