# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""LVIS-92i (docs/PROTOCOLS.md section 2c): ``lvis92i_fold{0..9}_{train,test}``.

The test-split rules below (files, class filter, interleaved folds, union mask, 2300 episodes of
``idx % n``) were checked against Matcher's ``matcher/data/lvis.py`` (commit 10c1a91); the episode
drawing is in ``diffews/data/episodes/draw.py``. The train split is our reading (see below):

* ``<root>/LVIS/lvis_{train,val}.pkl`` (Matcher's ``lvis.zip``) each hold a dict
  ``category id -> {image name -> {"annotations": [{"segmentation": polygons or RLE, ...}, ...]}}``
  of plain containers (loaded with a restricted unpickler; anything else is refused). Image names
  are paths relative to ``<root>/LVIS/coco/`` (COCO 2017 images, e.g. ``train2017/0000...jpg``).
* Test classes of fold f for K shots: ``val_ids = [c for c in val.keys() if len(val[c]) > K]``
  (classes with more than K images, dict order), ``n = len(val_ids) // 10`` (92 with the real
  data) and ``[val_ids[f + 10 v] for v in range(n)]`` (interleaved). They are **re-indexed
  0..n-1 within the fold** (Matcher reports that way): the records' ``classes``/``segmentations``
  keys, the metadata ``class_ids`` and the episodes' ``class_id`` are these local indices;
  metadata ``lvis_category_ids[i]`` is the LVIS category id of local class i.
* The query mask is the union of all the class's instance masks in the image.
* Train classes of fold f: the train pkl's classes with more than one image (the ``> shot`` filter
  of Matcher commit 6fa0a6c with shot 1), minus the fold's 1-shot test classes; their ids are
  the LVIS category ids.

Because the class filter depends on K, each test dataset is registered for one K:
``lvis92i_fold{f}_test`` is the **1-shot** filter, ``lvis92i_fold{f}_5shot_test`` the 5-shot one,
and ``lvis92i_test_name(fold, shot)`` registers and names any other K.
"""

import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog

from .roots import dataset_root, require
from .registration import image_id, register_fss, update_metadata
from .split_files import load_pickle

logger = logging.getLogger(__name__)

__all__ = ["lvis92i_test_name", "load_lvis_annotations", "lvis92i_fold_classes", "load_lvis92i",
           "check_lvis92i", "register_all_lvis92i"]

NUM_FOLDS = 10
TEST_EPISODES = 2300
_CACHE: Dict[Tuple[str, float, int], Dict] = {}


def load_lvis_annotations(split: str, root: Optional[str] = None) -> Dict:
    """Matcher's ``lvis_{train,val}.pkl`` (split "train"/"test"), validated and cached per file.

    Returns:
        dict category id -> dict image name -> info with "annotations".
    """
    stem = {"train": "lvis_train.pkl", "test": "lvis_val.pkl"}[split]
    path = require(os.path.join(dataset_root(root), "LVIS", stem), "LVIS-92i annotation pickle")
    key = (os.path.abspath(path), os.path.getmtime(path), os.path.getsize(path))
    if key not in _CACHE:
        data = load_pickle(path)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"{path}: expected a dict category id -> dict image name -> info")
        for cat, images in data.items():
            for name, info in images.items():
                if not isinstance(info, dict) or not isinstance(info.get("annotations"), list):
                    raise ValueError(f"{path}: category {cat!r}, image {name!r}: expected a dict "
                                     "with an 'annotations' list")
                break
        _CACHE.clear()  # keep one file in memory: the train pickle is large
        _CACHE[key] = data
    return _CACHE[key]


def lvis92i_fold_classes(annotations: Dict, fold: int, shot: int) -> List:
    """Fold ``fold``'s test category ids for ``shot`` supports (index = local class id)."""
    if fold not in range(NUM_FOLDS) or shot < 1:
        raise ValueError(f"LVIS-92i: fold must be 0..9 and shot >= 1, got {fold}, {shot}")
    val_ids = [c for c in annotations.keys() if len(annotations[c]) > shot]
    n = len(val_ids) // NUM_FOLDS
    return [val_ids[fold + NUM_FOLDS * v] for v in range(n)]


def _records(annotations: Dict, classes: Dict, image_root: str) -> List[Dict]:
    """Records for ``classes`` (record class id -> category id), sorted by image name."""
    by_name: Dict[str, Dict] = {}
    for class_id, cat in classes.items():
        for name, info in annotations[cat].items():
            record = by_name.setdefault(name, {
                "image_id": image_id(name),
                "file_name": os.path.join(image_root, name),
                "classes": [],
                "segmentations": {},
            })
            for key in ("height", "width"):
                if isinstance(info.get(key), int):
                    record[key] = info[key]
            record["classes"].append(class_id)
            record["segmentations"][class_id] = [a["segmentation"] for a in info["annotations"]]
    return [by_name[n] for n in sorted(by_name)]


def load_lvis92i(fold: int, split: str, shot: int = 1, root: Optional[str] = None,
                 dataset_name: Optional[str] = None) -> List[Dict]:
    """Image records (records.py contract, label format "polygons") of a fold's split.

    Args:
        fold: 0..9.
        split: "test" (the fold's classes for ``shot``, re-indexed 0..n-1) or "train".
        shot: the K whose class filter defines the test classes.
        dataset_name: if given, its metadata ``class_ids``/``class_names``/``lvis_category_ids``
            are set from the pickle.
    """
    if split not in ("train", "test"):
        raise ValueError(f"LVIS-92i: split must be train/test, got {split!r}")
    image_root = require(os.path.join(dataset_root(root), "LVIS", "coco"),
                         "LVIS image folder (COCO 2017 images)", is_dir=True)
    val = load_lvis_annotations("test", root)
    test_cats = lvis92i_fold_classes(val, fold, shot)
    if split == "test":
        classes = dict(enumerate(test_cats))
        annotations = val
    else:
        annotations = load_lvis_annotations("train", root)
        excluded = set(lvis92i_fold_classes(val, fold, 1))
        classes = {c: c for c in annotations if len(annotations[c]) > 1 and c not in excluded}
    records = _records(annotations, classes, image_root)
    if dataset_name:
        update_metadata(dataset_name, class_ids=list(classes),
                        thing_classes=[f"lvis_{c}" for c in classes.values()],
                        lvis_category_ids=list(classes.values()))
    logger.info("LVIS-92i fold %d %s (%d-shot filter): %d classes, %d images", fold, split, shot,
                len(classes), len(records))
    return records


def check_lvis92i(root: Optional[str] = None, sample: int = 20) -> List[str]:
    """Missing paths of the LVIS-92i tree: the image folder, both pickles and ``sample`` images
    of each fold's test split. Empty list = OK."""
    base = os.path.join(dataset_root(root), "LVIS")
    missing = [p for p in (os.path.join(base, "coco"),) if not os.path.isdir(p)]
    missing += [p for p in (os.path.join(base, f) for f in ("lvis_train.pkl", "lvis_val.pkl"))
                if not os.path.isfile(p)]
    if missing:
        return missing
    for fold in range(NUM_FOLDS):
        records = load_lvis92i(fold, "test", 1, root)
        step = max(1, len(records) // max(sample, 1))
        missing += [r["file_name"] for r in records[::step][:sample]
                    if not os.path.isfile(r["file_name"])]
    return sorted(set(missing))


def _register(fold: int, split: str, shot: int) -> str:
    if split == "train":
        name = f"lvis92i_fold{fold}_train"
    else:
        name = f"lvis92i_fold{fold}_test" if shot == 1 else f"lvis92i_fold{fold}_{shot}shot_test"
    register_fss(
        name, lambda: load_lvis92i(fold, split, shot, dataset_name=name),
        benchmark="lvis", fold=fold, split=split, shot_filter=shot, label_format="polygons",
        ignore_boundary=False, num_episodes=TEST_EPISODES if split == "test" else None,
    )
    return name


def lvis92i_test_name(fold: int, shot: int) -> str:
    """Name of the LVIS-92i test dataset of ``fold`` for ``shot`` supports, registering it if
    needed (``lvis92i_fold{f}_test`` for 1 shot, ``lvis92i_fold{f}_{K}shot_test`` otherwise)."""
    name = f"lvis92i_fold{fold}_test" if shot == 1 else f"lvis92i_fold{fold}_{shot}shot_test"
    if name not in DatasetCatalog.list():
        _register(fold, "test", shot)
    return name


def register_all_lvis92i() -> None:
    """Register ``lvis92i_fold{f}_train``, ``lvis92i_fold{f}_test`` (1-shot class filter) and
    ``lvis92i_fold{f}_5shot_test``. ``class_ids`` are set when a dataset is loaded (they need
    the pickle)."""
    for fold in range(NUM_FOLDS):
        _register(fold, "train", 1)
        _register(fold, "test", 1)
        _register(fold, "test", 5)


register_all_lvis92i()
