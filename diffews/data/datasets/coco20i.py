# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""COCO-20i (HSNet split): ``coco20i_fold{0..3}_{train,test}``.

Classes are COCO's 80 categories in contiguous order, 0..79. Fold f's test (novel) classes are
**interleaved**, ``{f + 4 v, v = 0..19}`` (HSNet ``data/coco.py``; not PANet's contiguous split);
its train (base) classes are the other 60. Images and masks (docs/METHOD.md section 6.2)::

    <root>/COCO2014/{train2014,val2014}/COCO_<split>2014_<id>.jpg
    <root>/COCO2014/annotations/{train2014,val2014}/COCO_<split>2014_<id>.png   # class + 1, 0 = bg

The class-wise image lists are HSNet's ``splits/coco/{trn,val}/fold{f}.pkl`` (dict class ->
``["val2014/COCO_val2014_....jpg", ...]``; the order matters for the episode RNG). They ship in
``datasets/splits/coco/`` as gzipped JSON (``convert_coco_split_pkl``); ``splits="tree"`` reads
``<root>/COCO2014/splits/`` instead (``.json.gz``, ``.json`` or, with a restricted unpickler,
``.pkl``). The test split draws 1000 episodes (``episodes.py``).
"""

import logging
import os
from typing import Dict, List, Optional

from .roots import dataset_root, find_split_file, require, shipped_splits_dir, splits_dir
from .registration import image_id, missing_sampled_files, register_fss
from .split_files import load_json, load_pickle, save_json

logger = logging.getLogger(__name__)

__all__ = ["COCO_CLASSES", "coco20i_class_ids", "load_coco20i_classwise", "load_coco20i",
           "convert_coco_split_pkl", "check_coco20i", "register_all_coco20i"]

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
NUM_FOLDS = 4
TEST_EPISODES = 1000
_SPLIT_FILE = {"train": "trn", "test": "val"}


def _check(fold: int, split: str) -> None:
    if fold not in range(NUM_FOLDS) or split not in _SPLIT_FILE:
        raise ValueError(f"COCO-20i: fold must be 0..3 and split train/test, got {fold}, {split!r}")


def coco20i_class_ids(fold: int, split: str) -> List[int]:
    """Test: ``[fold + 4 v for v in range(20)]`` (interleaved); train: the other 60, ascending."""
    _check(fold, split)
    test = [fold + NUM_FOLDS * v for v in range(80 // NUM_FOLDS)]
    return test if split == "test" else [c for c in range(80) if c not in test]


def load_coco20i_classwise(fold: int, split: str, root: Optional[str] = None,
                           splits: Optional[str] = None) -> Dict[int, List[str]]:
    """HSNet's ``img_metadata_classwise``: class -> image names (``"val2014/COCO_..jpg"``), in file
    order, for all 80 classes as stored (classes outside the split have empty lists)."""
    _check(fold, split)
    tree = os.path.join(dataset_root(root), "COCO2014", "splits")
    folder = os.path.join(splits_dir("coco", tree, splits), _SPLIT_FILE[split])
    # a user's tree holds HSNet's pickles: name those when nothing is found
    exts = (".json.gz", ".json", ".pkl")
    exts = exts if folder.startswith(shipped_splits_dir()) else exts[::-1]
    path = find_split_file(folder, f"fold{fold}", exts)
    data = load_pickle(path) if path.endswith(".pkl") else load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict class -> list of image names")
    try:
        return {int(k): [str(n) for n in v] for k, v in data.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: expected integer class keys and lists of names ({e})") from e


def load_coco20i(fold: int, split: str, root: Optional[str] = None,
                 splits: Optional[str] = None) -> List[Dict]:
    """Image records of a fold's split (records.py contract), one per distinct image, sorted by
    name as HSNet's ``build_img_metadata``; ``classes`` lists the split's classes it is listed
    under. Raises FileNotFoundError if the image or annotation folder is missing."""
    root = dataset_root(root)
    base = os.path.join(root, "COCO2014")
    classwise = load_coco20i_classwise(fold, split, root, splits)
    class_ids = coco20i_class_ids(fold, split)
    classes_of: Dict[str, List[int]] = {}
    for c in class_ids:
        for name in classwise.get(c, []):
            classes_of.setdefault(name, [])
            if c not in classes_of[name]:
                classes_of[name].append(c)
    for sub in sorted({n.split("/")[0] for n in classes_of}):
        require(os.path.join(base, sub), "COCO2014 image folder", is_dir=True)
        require(os.path.join(base, "annotations", sub), "COCO-20i mask folder (HSNet PNGs)",
                is_dir=True)
    records = []
    for name in sorted(classes_of):
        records.append({
            "image_id": image_id(name),
            "file_name": os.path.join(base, name),
            "mask_file": os.path.join(base, "annotations", os.path.splitext(name)[0] + ".png"),
            "classes": sorted(classes_of[name]),
        })
    logger.info("COCO-20i fold %d %s: %d images, %d classes", fold, split, len(records),
                len(class_ids))
    return records


def convert_coco_split_pkl(src: str, dst: str) -> Dict[int, List[str]]:
    """Convert an HSNet COCO split pickle to (gzipped) JSON with a restricted unpickler, keeping
    the key order and each list's order; returns the data."""
    data = load_pickle(src)
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected a dict class -> list of image names")
    for k, v in data.items():
        if not (isinstance(k, int) and isinstance(v, list)
                and all(isinstance(n, str) for n in v)):
            raise ValueError(f"{src}: key {k!r} is not int -> list of str")
    save_json({str(k): v for k, v in data.items()}, dst)
    return data


def check_coco20i(root: Optional[str] = None, splits: Optional[str] = None,
                  sample: int = 20, folds=range(NUM_FOLDS)) -> List[str]:
    """Missing paths of the COCO-20i tree: folders, split lists and ``sample`` listed images and
    masks per fold and split (evenly spaced). Empty list = OK."""
    root = dataset_root(root)
    base = os.path.join(root, "COCO2014")
    missing = [p for p in [os.path.join(base, d) for d in ("train2014", "val2014")]
               + [os.path.join(base, "annotations", d) for d in ("train2014", "val2014")]
               if not os.path.isdir(p)]
    missing += missing_sampled_files(lambda f, s: load_coco20i(f, s, root, splits), folds, sample)
    return sorted(set(missing))


def _loader(fold: int, split: str):
    return lambda: load_coco20i(fold, split)


def register_all_coco20i() -> None:
    """Register ``coco20i_fold{f}_{train,test}``. Nothing is read until a dataset is loaded; the
    root is ``$DETECTRON2_DATASETS`` at that time."""
    for fold in range(NUM_FOLDS):
        for split in ("train", "test"):
            ids = coco20i_class_ids(fold, split)
            register_fss(
                f"coco20i_fold{fold}_{split}", _loader(fold, split),
                benchmark="coco", fold=fold, split=split, class_ids=ids,
                class_names=[COCO_CLASSES[c] for c in ids], label_format="class_value",
                ignore_boundary=False, num_episodes=TEST_EPISODES if split == "test" else None,
            )


register_all_coco20i()
