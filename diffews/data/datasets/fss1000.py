# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""FSS-1000: ``fss1000_train`` (the 520 ``trn.txt`` classes) and ``fss1000_test`` (the 240
``test.txt`` classes, every image of them: 2400 episodes, one per image).

Class ids follow HSNet ``data/fss.py``: the split's class names are **sorted** and numbered from an
offset, 0 for trn, 520 for val and 760 for test (so the test classes are 760..999). Files::

    <root>/FSS-1000/data/<class>/{1..10}.jpg         # image
    <root>/FSS-1000/data/<class>/{1..10}.png         # mask beside it, grayscale, >= 128 = object

This is the layout of docs/METHOD.md section 6.2; HSNet's own layout, the class folders directly under
``FSS-1000/`` (no ``data/``), is accepted when ``FSS-1000/data`` does not exist. Split lists
(``{trn,val,test}.txt``, one class folder a line) ship in ``datasets/splits/fss/``
(``splits="tree"``: ``<root>/FSS-1000/splits/``). Record IDs are ``<class>/<name>`` (e.g.
``bus/3``) because the file names repeat across classes.
"""

import glob
import logging
import os
from typing import Dict, List, Optional, Tuple

from .roots import dataset_root, MissingDataError, require, splits_dir
from .split_files import read_lines
from .registration import register_fss, update_metadata

logger = logging.getLogger(__name__)

__all__ = ["FSS_OFFSETS", "fss1000_categories", "fss1000_image_dir", "fss1000_image_list",
           "load_fss1000", "check_fss1000", "register_all_fss1000"]

# split -> (split file stem, first class id)
FSS_OFFSETS = {"train": ("trn", 0), "val": ("val", 520), "test": ("test", 760)}


def _split(split: str) -> Tuple[str, int]:
    if split not in FSS_OFFSETS:
        raise ValueError(f"FSS-1000: split must be one of {sorted(FSS_OFFSETS)}, got {split!r}")
    return FSS_OFFSETS[split]


def fss1000_categories(split: str, root: Optional[str] = None,
                       splits: Optional[str] = None) -> List[str]:
    """The split's class folder names, sorted (HSNet: ``sorted(f.read().split('\\n')[:-1])``);
    class id = offset + index in this list."""
    stem, _ = _split(split)
    tree = os.path.join(dataset_root(root), "FSS-1000", "splits")
    return sorted(read_lines(os.path.join(splits_dir("fss", tree, splits), f"{stem}.txt")))


def fss1000_image_dir(root: Optional[str] = None) -> str:
    """``<root>/FSS-1000/data`` (docs/METHOD.md layout), else ``<root>/FSS-1000`` (HSNet layout)."""
    base = os.path.join(dataset_root(root), "FSS-1000")
    data = os.path.join(base, "data")
    if os.path.isdir(data):
        return data
    require(base, "FSS-1000 folder", is_dir=True)
    logger.info("%s does not exist: reading class folders directly under %s (HSNet layout)",
                data, base)
    return base


def fss1000_image_list(split: str, root: Optional[str] = None,
                       splits: Optional[str] = None) -> List[Tuple[str, int, str]]:
    """HSNet's ``img_metadata`` with class ids: ``[(image_id, class_id, jpg path), ...]``.

    For each sorted class, ``sorted(glob("<class>/*"))`` keeping files whose
    ``basename.split('.')[1] == 'jpg'`` (string order: 1.jpg, 10.jpg, 2.jpg, ...). A missing class
    folder raises FileNotFoundError (HSNet would silently skip it).
    """
    _, offset = _split(split)
    categories = fss1000_categories(split, root, splits)
    image_dir = fss1000_image_dir(root)
    out = []
    for index, category in enumerate(categories):
        folder = require(os.path.join(image_dir, category), f"FSS-1000 class folder ({split})",
                         is_dir=True)
        for path in sorted(glob.glob(f"{folder}/*")):
            parts = os.path.basename(path).split(".")
            if len(parts) > 1 and parts[1] == "jpg":
                out.append((f"{category}/{parts[0]}", offset + index, path))
    return out


def load_fss1000(split: str, root: Optional[str] = None, splits: Optional[str] = None,
                 dataset_name: Optional[str] = None) -> List[Dict]:
    """Image records (records.py contract) of the split's classes, in HSNet's image order; the
    mask is the ``.png`` beside each ``.jpg``. With ``dataset_name``, its metadata ``class_ids``
    and ``class_names`` are updated from the split file read."""
    images = fss1000_image_list(split, root, splits)
    records = [{
        "image_id": image_id,
        "file_name": path,
        "mask_file": os.path.join(os.path.dirname(path), image_id.split("/")[-1] + ".png"),
        "classes": [class_id],
    } for image_id, class_id, path in images]
    if dataset_name:
        categories = fss1000_categories(split, root, splits)
        offset = _split(split)[1]
        update_metadata(dataset_name, class_ids=list(range(offset, offset + len(categories))),
                        thing_classes=categories,
                        num_episodes=len(records) if split == "test" else None)
    logger.info("FSS-1000 %s: %d images", split, len(records))
    return records


def check_fss1000(root: Optional[str] = None, splits: Optional[str] = None,
                  sample: int = 50) -> List[str]:
    """Missing paths of the FSS-1000 tree: split lists, every class folder of trn and test and
    the mask of ``sample`` evenly spaced images per split. Empty list = OK."""
    missing = []
    for split in ("test", "train"):
        try:
            categories = fss1000_categories(split, root, splits)
            image_dir = fss1000_image_dir(root)
        except MissingDataError as e:
            missing.append(e.path)
            continue
        folders = [os.path.join(image_dir, c) for c in categories]
        if any(not os.path.isdir(f) for f in folders):
            missing += [f for f in folders if not os.path.isdir(f)]
            continue
        records = load_fss1000(split, root, splits)
        step = max(1, len(records) // max(sample, 1))
        missing += [r["mask_file"] for r in records[::step][:sample]
                    if not os.path.isfile(r["mask_file"])]
    return sorted(set(missing))


def register_all_fss1000() -> None:
    """Register ``fss1000_train`` and ``fss1000_test`` (lazy: the root is read at load time).
    ``class_ids`` are the published 0..519 / 760..999 and are refreshed from the split file on
    load; ``class_names`` (the folder names) are set on load."""
    for split, count in (("train", 520), ("test", 240)):
        name = f"fss1000_{split}"
        offset = FSS_OFFSETS[split][1]
        register_fss(
            name, lambda split=split, name=name: load_fss1000(split, dataset_name=name),
            benchmark="fss", fold=0, split=split, class_ids=list(range(offset, offset + count)),
            label_format="threshold128", ignore_boundary=False,
            num_episodes=None,  # test: one episode per image (2400), set on load
        )


register_all_fss1000()
