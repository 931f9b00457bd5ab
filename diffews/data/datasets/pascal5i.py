# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""PASCAL-5i (HSNet split): ``pascal5i_fold{0..3}_{train,test}``.

The 20 VOC classes, 0..19. Fold f's test (novel) classes are **contiguous**, ``5 f .. 5 f + 4``
(HSNet ``data/pascal.py``); its train classes are the other 15. Files (docs/METHOD.md section 6.2)::

    <root>/VOC2012/JPEGImages/<name>.jpg
    <root>/VOC2012/SegmentationClassAug/<name>.png     # class + 1, 0 = bg, 255 = boundary (ignored)

Split lists are HSNet's ``splits/pascal/{trn,val}/fold{k}.txt``, lines ``<name>__<class, 1-based>``
read with ``f.read().split('\\n')[:-1]``. The test split of fold f is ``val/fold{f}.txt``; the
train split of fold f is ``trn/fold{k}.txt`` of the three other folds, concatenated in fold order.
They ship in ``datasets/splits/pascal/`` (``splits="tree"``: ``<root>/VOC2012/splits/``).
"""

import logging
import os
from typing import Dict, List, Optional, Tuple

from .roots import dataset_root, require, splits_dir
from .registration import missing_sampled_files, register_fss
from .split_files import read_lines

logger = logging.getLogger(__name__)

__all__ = ["PASCAL_CLASSES", "pascal5i_class_ids", "load_pascal5i_metadata", "pascal5i_classwise",
           "load_pascal5i", "check_pascal5i", "register_all_pascal5i"]

PASCAL_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]
NUM_FOLDS = 4
TEST_EPISODES = 1000


def pascal5i_class_ids(fold: int, split: str) -> List[int]:
    """Test: ``[5 fold + i for i in range(5)]`` (contiguous); train: the other 15, ascending."""
    if fold not in range(NUM_FOLDS) or split not in ("train", "test"):
        raise ValueError(
            f"PASCAL-5i: fold must be 0..3 and split train/test, got {fold}, {split!r}")
    test = [5 * fold + i for i in range(5)]
    return test if split == "test" else [c for c in range(20) if c not in test]


def load_pascal5i_metadata(fold: int, split: str, root: Optional[str] = None,
                           splits: Optional[str] = None) -> List[Tuple[str, int]]:
    """HSNet's ``img_metadata``: ``[(name, class 0-based), ...]`` in file order (test: the fold's
    ``val`` file; train: the ``trn`` files of the other folds)."""
    pascal5i_class_ids(fold, split)  # validates
    tree = os.path.join(dataset_root(root), "VOC2012", "splits")
    folder = splits_dir("pascal", tree, splits)
    files = ([os.path.join(folder, "val", f"fold{fold}.txt")] if split == "test" else
             [os.path.join(folder, "trn", f"fold{k}.txt") for k in range(NUM_FOLDS) if k != fold])
    metadata = []
    for path in files:
        for line in read_lines(path):
            name, sep, cls = line.rpartition("__")
            if not sep or not cls.isdigit() or not 1 <= int(cls) <= 20:
                raise ValueError(f"{path}: line {line!r} is not '<name>__<class 01..20>'")
            metadata.append((name, int(cls) - 1))
    return metadata


def pascal5i_classwise(metadata: List[Tuple[str, int]]) -> Dict[int, List[str]]:
    """HSNet's ``img_metadata_classwise``: class 0..19 -> names, in metadata order."""
    classwise: Dict[int, List[str]] = {c: [] for c in range(20)}
    for name, cls in metadata:
        classwise[cls].append(name)
    return classwise


def load_pascal5i(fold: int, split: str, root: Optional[str] = None,
                  splits: Optional[str] = None) -> List[Dict]:
    """Image records (records.py contract), one per distinct image in first-listed order;
    ``classes`` lists the classes the image is listed under. Raises FileNotFoundError if the
    image or label folder is missing."""
    base = os.path.join(dataset_root(root), "VOC2012")
    metadata = load_pascal5i_metadata(fold, split, root, splits)
    image_dir = require(os.path.join(base, "JPEGImages"), "VOC2012 image folder", is_dir=True)
    label_dir = require(os.path.join(base, "SegmentationClassAug"),
                        "SegmentationClassAug label folder", is_dir=True)
    by_name: Dict[str, Dict] = {}
    for name, cls in metadata:
        record = by_name.setdefault(name, {
            "image_id": name,
            "file_name": os.path.join(image_dir, name + ".jpg"),
            "mask_file": os.path.join(label_dir, name + ".png"),
            "classes": [],
        })
        if cls not in record["classes"]:
            record["classes"].append(cls)
    logger.info("PASCAL-5i fold %d %s: %d images, %d (image, class) pairs", fold, split,
                len(by_name), len(metadata))
    return list(by_name.values())


def check_pascal5i(root: Optional[str] = None, splits: Optional[str] = None,
                   sample: int = 20, folds=range(NUM_FOLDS)) -> List[str]:
    """Missing paths of the PASCAL-5i tree (folders, split lists, ``sample`` listed images and
    labels per fold and split). Empty list = OK."""
    base = os.path.join(dataset_root(root), "VOC2012")
    missing = [p for p in (os.path.join(base, d) for d in ("JPEGImages", "SegmentationClassAug"))
               if not os.path.isdir(p)]
    missing += missing_sampled_files(lambda f, s: load_pascal5i(f, s, root, splits), folds, sample)
    return sorted(set(missing))


def register_all_pascal5i() -> None:
    """Register ``pascal5i_fold{f}_{train,test}`` (lazy: the root is read at load time)."""
    for fold in range(NUM_FOLDS):
        for split in ("train", "test"):
            ids = pascal5i_class_ids(fold, split)
            register_fss(
                f"pascal5i_fold{fold}_{split}",
                lambda fold=fold, split=split: load_pascal5i(fold, split),
                benchmark="pascal", fold=fold, split=split, class_ids=ids,
                class_names=[PASCAL_CLASSES[c] for c in ids], label_format="class_value",
                ignore_boundary=True, num_episodes=TEST_EPISODES if split == "test" else None,
            )


register_all_pascal5i()
