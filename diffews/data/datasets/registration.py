# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Registering the few-shot benchmarks in detectron2: ``register_fss`` (idempotent, with the
metadata of ``records.py``), ``update_metadata``, record ids and the sampled file check of the
``check_*`` functions."""

import os
from typing import Callable, Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .roots import MissingDataError

__all__ = ["image_id", "update_metadata", "register_fss", "missing_sampled_files"]


def image_id(name: str) -> str:
    """Record ID of an image path: the file name without directory and extension."""
    return os.path.splitext(os.path.basename(name))[0]


def update_metadata(name: str, **kwargs) -> None:
    """Set metadata keys, replacing earlier values (detectron2 refuses to change a set key; the
    keys set here depend on the files read, which may change between loads)."""
    meta = MetadataCatalog.get(name)
    for key, value in kwargs.items():
        if key in meta.__dict__ and meta.__dict__[key] != value:
            delattr(meta, key)
    meta.set(**kwargs)


def register_fss(name: str, loader: Callable[[], List[Dict]], **metadata) -> None:
    """Register ``name`` (replacing an earlier registration) with the records contract metadata.

    ``class_names`` are stored under detectron2's name ``thing_classes`` (detectron2 renames
    ``class_names`` with a warning; ``metadata.class_names`` still reads them).
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    if "class_names" in metadata:
        metadata["thing_classes"] = metadata.pop("class_names")
    MetadataCatalog.get(name).set(evaluator_type="fss", ignore_label=255, **metadata)


def missing_sampled_files(load: Callable[[int, str], List[Dict]], folds, sample: int) -> List[str]:
    """For ``check_*`` functions: the split lists that fail to load, and the listed image and label
    files that do not exist among ``sample`` evenly spaced records per fold and split."""
    missing: List[str] = []
    for split in ("test", "train"):
        for fold in folds:
            try:
                records = load(fold, split)
            except MissingDataError as e:
                missing.append(e.path)
                continue
            step = max(1, len(records) // max(sample, 1))
            for r in records[::step][:sample]:
                missing += [p for p in (r["file_name"], r["mask_file"]) if not os.path.isfile(p)]
    return missing
