# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny VOS trees in the official on-disk layouts (datasets/README.md), for tests.

DAVIS: ``DAVIS17/{trainval,test-dev}/{JPEGImages,Annotations}/480p/<seq>/%05d.{jpg,png}`` with
palette PNG annotations and ``ImageSets/<year>/<set>.txt``; YouTube-VOS 2018:
``YouTubeVOS18/valid/{JPEGImages,Annotations}/<vid>/``, ``valid/meta.json`` and every frame in
``all_frames/valid_all_frames/JPEGImages/<vid>/``. Labels are given as (H, W) integer arrays;
frames are small random JPEGs of each sequence's own size.
"""

import json
import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from diffews.data.datasets.vos_results import DAVIS_PALETTE


def palette_png(path: str, label: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(label, dtype=np.uint8))
    img.putpalette(DAVIS_PALETTE.flatten().tolist())  # "L" -> "P", indices kept
    img.save(path)


def jpeg(path: str, h: int, w: int, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def write_davis_sequence(base: str, name: str, labels: Sequence[np.ndarray],
                         annotated: Sequence[int] = None) -> None:
    """Frames ``00000.jpg ...`` of the labels' size, and palette PNGs for the ``annotated`` frame
    indices (default: every frame)."""
    annotated = range(len(labels)) if annotated is None else annotated
    h, w = labels[0].shape
    for t in range(len(labels)):
        jpeg(os.path.join(base, "JPEGImages", "480p", name, f"{t:05d}.jpg"), h, w, seed=t)
    for t in annotated:
        palette_png(os.path.join(base, "Annotations", "480p", name, f"{t:05d}.png"), labels[t])


def write_list(base: str, year: str, split: str, names: Sequence[str]) -> None:
    path = os.path.join(base, "ImageSets", year, f"{split}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(n + "\n" for n in names))


def write_results(results: str, name: str, labels: Dict[int, np.ndarray]) -> None:
    """``<results>/<name>/%05d.png`` for each frame index given."""
    for t, label in labels.items():
        palette_png(os.path.join(results, name, f"{t:05d}.png"), label)


def block(shape, rows, cols, value=1, out=None) -> np.ndarray:
    """``out`` (or zeros of ``shape``) with ``value`` on rows[0]..rows[1], cols[0]..cols[1]
    (inclusive)."""
    out = np.zeros(shape, np.int64) if out is None else out
    out[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = value
    return out


def scene_sequences() -> Dict[str, List[np.ndarray]]:
    """Three videos of different sizes: two objects crossing (one occludes the other), an
    object appearing late and one disappearing, and a 1-px-wide moving line."""
    seqs = {}
    frames = []
    for t in range(6):  # 20 x 24: object 2 passes in front of object 1
        lab = block((20, 24), (5, 12), (2 + 2 * t, 7 + 2 * t), 1)
        frames.append(block(None, (8, 15), (16 - 2 * t, 21 - 2 * t), 2, out=lab))
    seqs["crossing"] = frames
    late = []
    for t in range(5):  # 16 x 20: id 2 appears at frame 2, id 3 leaves after frame 1
        lab = block((16, 20), (2, 6), (2, 6), 1)
        if t >= 2:
            block(None, (9, 13), (12, 17), 2, out=lab)
        if t <= 1:
            block(None, (10, 14), (1, 4), 3, out=lab)
        late.append(lab)
    seqs["late-object"] = late
    seqs["thin"] = [block((30, 18), (3, 25), (4 + t, 4 + t), 1) for t in range(4)]
    return seqs


def write_davis_tree(root: str) -> Dict:
    """DAVIS17/trainval (2017 val: all three scene videos; 2016 val: crossing and thin) and
    DAVIS17/test-dev (one video annotated at frames 0 and 3, where object 2 first appears)."""
    seqs = scene_sequences()
    trainval = os.path.join(root, "DAVIS17", "trainval")
    for name, labels in seqs.items():
        write_davis_sequence(trainval, name, labels)
    write_list(trainval, "2017", "val", sorted(seqs))
    write_list(trainval, "2016", "val", ["crossing", "thin"])
    test_dev = os.path.join(root, "DAVIS17", "test-dev")
    td = [block((12, 14), (1, 4), (1, 4), 1) for _ in range(6)]
    for t in range(3, 6):
        block(None, (7, 10), (8, 12), 2, out=td[t])
    write_davis_sequence(test_dev, "newcomer", td, annotated=[0, 3])
    write_list(test_dev, "2017", "test-dev", ["newcomer"])
    return {"sequences": seqs, "test_dev": td}


def write_ytvos_tree(root: str, num_frames: int = 11) -> Dict:
    """YouTube-VOS 2018 valid with two videos: every frame in valid_all_frames, every 5th frame in
    valid/JPEGImages, annotations where an object first appears (video "b": object 2 at frame 5),
    and meta.json listing each object's frames (every 5th from its first)."""
    base = os.path.join(root, "YouTubeVOS18")
    sizes = {"a": (10, 12), "b": (14, 16)}
    meta = {"videos": {}}
    first = {"a": {1: 0}, "b": {1: 0, 2: 5}}
    for vid, (h, w) in sizes.items():
        for t in range(num_frames):
            jpeg(os.path.join(base, "all_frames", "valid_all_frames", "JPEGImages", vid,
                              f"{t:05d}.jpg"), h, w, seed=t)
            if t % 5 == 0:
                jpeg(os.path.join(base, "valid", "JPEGImages", vid, f"{t:05d}.jpg"), h, w, seed=t)
        for t in sorted(set(first[vid].values())):
            lab = np.zeros((h, w), np.int64)
            for obj, t0 in first[vid].items():
                if t0 == t:
                    block(None, (obj, obj + 2), (obj * 3, obj * 3 + 2), obj, out=lab)
            palette_png(os.path.join(base, "valid", "Annotations", vid, f"{t:05d}.png"), lab)
        meta["videos"][vid] = {"objects": {
            str(obj): {"category": "thing",
                       "frames": [f"{t:05d}" for t in range(t0, num_frames, 5)]}
            for obj, t0 in first[vid].items()}}
    with open(os.path.join(base, "valid", "meta.json"), "w") as f:
        json.dump(meta, f)
    return {"meta": meta, "first": first, "num_frames": num_frames}
