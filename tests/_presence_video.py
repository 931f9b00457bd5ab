# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Synthetic videos in which an object leaves the frame and comes back, drawn with the synthetic
benchmark's shapes, textures and backgrounds (diffews/data/datasets/synthetic.py), written as a
DAVIS 2017 val tree (every frame annotated, so J&F is scored): for the presence measurements of
tools/BENCHMARKS.md and tests.

Each video: object 1 (a held-out class) moves right, leaves through the right edge, is absent for
a few frames and re-enters from the left; object 2 (another held-out class) drifts slowly and
stays. Backgrounds and object jitter come from ``seed``.
"""

import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from diffews.data.datasets import synthetic as syn
from tests._vos_trees import palette_png, write_list


def _frames(size: int, n: int, classes: Sequence[int], seed: int):
    rng = np.random.RandomState(seed)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    bg = syn._background(rng, size, yy, xx)
    p1, p2 = syn._object_params(rng), syn._object_params(rng)
    p1["radius"], p2["radius"] = 0.16, 0.15
    y1, y2 = rng.uniform(0.25, 0.4), rng.uniform(0.65, 0.75)
    images, labels = [], []
    for t in range(n):
        # object 1: x from 0.3 moving +0.1/frame; past the right edge it jumps 1.8 back (far
        # left, out of the frame) and re-enters from the left five frames later
        x1 = 0.3 + 0.1 * t
        x1 = x1 if x1 < 1.0 + 0.16 else x1 - 1.8
        x2 = 0.35 + 0.02 * t
        img = bg.copy()
        label = np.zeros((size, size), np.uint8)
        for obj, (c, p, cy, cx) in enumerate([(classes[1], p2, y2, x2), (classes[0], p1, y1, x1)]):
            shape, texture = divmod(int(c), len(syn.TEXTURES))
            m = syn._shape_mask(syn.SHAPES[shape], yy, xx, np.array([cy, cx]), p["radius"],
                                p["angle"])
            img = np.where(m[..., None], syn._texture(texture, yy, xx, p), img)
            label[m] = 2 if obj == 0 else 1
        images.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        labels.append(label)
    return images, labels


def write_leave_and_return_tree(root: str, num_videos: int = 4, size: int = 64,
                                num_frames: int = 20, seed: int = 0) -> Dict[str, List[int]]:
    """``root/DAVIS17/trainval`` with videos ``leave<i>`` (2017 val list); returns, per video,
    the frame indices where object 1 is absent."""
    base = os.path.join(root, "DAVIS17", "trainval")
    test = syn.SYNTHETIC_TEST_CLASSES
    absent = {}
    for i in range(num_videos):
        classes = (test[(2 * i) % len(test)], test[(2 * i + 1) % len(test)])
        images, labels = _frames(size, num_frames, classes, seed + i)
        name = f"leave{i}"
        for t, (img, lab) in enumerate(zip(images, labels)):
            path = os.path.join(base, "JPEGImages", "480p", name, f"{t:05d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(img).save(path, quality=95)
            palette_png(os.path.join(base, "Annotations", "480p", name, f"{t:05d}.png"), lab)
        absent[name] = [t for t, lab in enumerate(labels) if not (lab == 1).any()]
    write_list(base, "2017", "val", sorted(absent))
    write_list(base, "2016", "val", sorted(absent))
    return absent


if __name__ == "__main__":
    import sys

    print(write_leave_and_return_tree(sys.argv[1]))
