# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation: the support sets of a split, encoded once and saved
(``job.py``, step 1)."""

import hashlib
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from ...data.datasets.coco_fsod_reader import (
    NOVEL_CLASSES, load_fsod_support, support_split_file
)
from ...data.datasets.coco_fsod import fsod_dataset_names
from ...data.datasets.roots import README, dataset_root
from ...predictor import SupportSetError
from ...utils.image import check_image_file
from ..distributed import main_process_first

logger = logging.getLogger("diffews.tasks.fsod")

__all__ = ["support_records", "record_key", "support_cache_dir", "support_set_path",
           "class_support_sets", "prepare_support_sets"]


def support_records(cfg, root: Optional[str] = None, check_images: bool = True
                    ) -> List[List[Dict]]:
    """The support records of the split of ``TEST.FSOD`` (SHOT, SEED, SAMPLE_SEED), grouped by
    class in novel order. A class without any instance is an error naming its split file;
    ``check_images`` checks every support image file (headers only)."""
    f = cfg.TEST.FSOD
    shot, seed = int(f.SHOT), int(f.SEED)
    records = load_fsod_support(shot, seed, root=root, sample_seed=int(f.SAMPLE_SEED))
    by_class: List[List[Dict]] = [[] for _ in NOVEL_CLASSES]
    for r in records:
        by_class[r["annotations"][0]["category_id"]].append(r)
    for c, recs in enumerate(by_class):
        if not recs:
            path = support_split_file(dataset_root(root), shot, seed, NOVEL_CLASSES[c])
            raise ValueError(f"{path}: no instance of class '{NOVEL_CLASSES[c]}' (a {shot}-shot "
                             f"split file holds {shot} annotations of its class), see {README}")
        if check_images:
            for r in recs:
                check_image_file(r["file_name"])
    return by_class


def record_key(record: Dict) -> str:
    """A short fingerprint of one support instance (image file name and id, its annotation)."""
    ann = record["annotations"][0]
    text = json.dumps({"image": os.path.basename(record["file_name"]),
                       "image_id": record["image_id"], "category_id": ann["category_id"],
                       "bbox": ann.get("bbox"), "segmentation": ann.get("segmentation")},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def support_cache_dir(cfg, output_dir: str) -> str:
    """``<SUPPORT_DIR or output_dir/support_sets>/<split name>[_sample<SAMPLE_SEED>]``."""
    f = cfg.TEST.FSOD
    split, _ = fsod_dataset_names(cfg)
    if int(f.SAMPLE_SEED):
        split += f"_sample{int(f.SAMPLE_SEED)}"
    return os.path.join(f.SUPPORT_DIR or os.path.join(output_dir, "support_sets"), split)


def support_set_path(folder: str, class_index: int) -> str:
    """``<folder>/<class name, spaces as _>.pt``."""
    return os.path.join(folder, NOVEL_CLASSES[class_index].replace(" ", "_") + ".pt")


def _usable(path: str, predictor, keys: List[str]):
    """The saved set at ``path`` if it was encoded by this model from these instances, else
    None (absent, unreadable, another model or other instances: logged)."""
    if not os.path.isfile(path):
        return None
    try:
        s = predictor.load_support_set(path)
    except SupportSetError as e:
        logger.warning("%s: %s; recomputing and overwriting it", path, e)
        return None
    if [i.get("record") for i in s.info] != keys:
        logger.warning("%s: holds other support instances than the split (another "
                       "TEST.FSOD.SAMPLE_SEED or changed split files); recomputing and "
                       "overwriting it", path)
        return None
    return s


def class_support_sets(predictor, by_class: Sequence[List[Dict]], folder: str,
                       compute: bool = True) -> List:
    """One support set per class: the saved one when usable, else encoded and saved.

    Args:
        predictor: a ``Predictor``.
        by_class: ``support_records`` output (20 lists of records).
        folder: where the sets are saved (``support_cache_dir``).
        compute: False to only load (processes other than the main one); a missing or unusable
            file is then an error.
    """
    sets, computed = [], 0
    for c, records in enumerate(by_class):
        path = support_set_path(folder, c)
        keys = [record_key(r) for r in records]
        s = _usable(path, predictor, keys)
        if s is None:
            if not compute:
                raise SupportSetError(f"{path}: missing or unusable after the main process "
                                      "prepared it")
            # each support is one instance: its COCO annotation (a model that rasterises
            # polygons at its own input size, as SINE's original does, reads them)
            s = predictor.encode_supports([r["file_name"] for r in records],
                                          [dict(r["annotations"][0]) for r in records],
                                          task="fsis")
            for info, r, key in zip(s.info, records, keys):
                info.update(record=key, image_id=r["image_id"], category=NOVEL_CLASSES[c])
            s.save(path)
            computed += 1
        sets.append(s.to(predictor.device))  # loaded sets are on the CPU
    if compute:
        logger.info("Support sets in %s: %d encoded, %d reused", folder, computed,
                    len(sets) - computed)
    return sets


def prepare_support_sets(predictor, by_class: Sequence[List[Dict]], folder: str) -> List:
    """``class_support_sets`` in the main process; the other processes wait for it, then load
    the saved files (a failure in the main process is raised in every process)."""
    return main_process_first(lambda: class_support_sets(predictor, by_class, folder),
                              lambda: class_support_sets(predictor, by_class, folder, False),
                              "the support sets")
