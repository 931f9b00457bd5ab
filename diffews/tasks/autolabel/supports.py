# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The supports of an autolabel run (``tools/autolabel.py --supports SRC``), one set per class.

SRC is one of:

* a **class-folder tree** ``SRC/<class>/<name>.jpg`` + ``<name>.png`` (the custom-data folder
  layout, ``diffews/data/datasets/custom_layouts.py``): classes are the sorted folder names,
  category ids 1..C in that order, every image of a class folder is one of its supports;
* a **COCO instances json** (images under ``--supports-images``, default the json's folder):
  categories and ids from the json; a class's supports are the images holding a non-crowd
  instance of it, its mask the union of those instances;
* a **folder of saved support-set files** (``save``), one per class: the class is the
  file name without ``.pt``, category ids 1..C in sorted file-name order.

``read_supports`` reads and checks SRC without any model (the preflight); ``support_sets``
encodes one support set per class and saves it as ``<folder>/<class>.pt`` (the main
process; the others, and a resumed run, load the saved files, so every process uses the same
bits).
"""

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...data.datasets.custom_layouts import CustomLayoutError, read_coco_layout, read_folder_layout
from ...data.datasets.custom_labels import custom_label
from ...predictor import SupportSetError
from ...utils.image import check_image_file, read_image
from ...utils.journal import hash_files

logger = logging.getLogger(__name__)

__all__ = ["SupportSource", "read_supports", "support_mask", "support_sets", "set_file",
           "check_set_foreground"]

KINDS = ("folder", "coco", "sets")


@dataclass
class SupportSource:
    """What ``read_supports`` found.

    Attributes:
        kind: "folder", "coco" or "sets".
        path: SRC.
        categories: COCO categories ``[{"id", "name", ...}]``, one per class, in class order.
        records: per class, its support records (image file, mask source) ("sets": empty).
        set_files: per class, its support-set file ("sets" only).
        files: every file the supports are read from (their content is the fingerprint).
    """

    kind: str
    path: str
    categories: List[Dict]
    records: List[List[Dict]] = field(default_factory=list)
    set_files: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)

    @property
    def classes(self) -> List[str]:
        return [c["name"] for c in self.categories]

    def fingerprint(self) -> Dict:
        """The kind, the categories and a content hash of every file read."""
        return {"kind": self.kind, "categories": self.categories,
                "content": hash_files(sorted(self.files), root=os.path.dirname(
                    os.path.abspath(self.path)) if self.kind == "coco" else self.path)}


def _folder(path: str) -> SupportSource:
    classes, records = read_folder_layout(path)
    by_class: List[List[Dict]] = [[] for _ in classes]
    for r in records:
        by_class[r["classes"][0]].append(dict(r, label_format="binary"))
    files = [f for r in records for f in (r["file_name"], r["mask_file"])]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    return SupportSource("folder", path, cats, by_class, files=files)


def _coco(path: str, images: Optional[str]) -> SupportSource:
    import json

    images = images or os.path.dirname(os.path.abspath(path))
    classes, records = read_coco_layout(path, images)
    with open(path, encoding="utf-8") as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    by_class: List[List[Dict]] = [[] for _ in classes]
    for r in records:
        for c in r["classes"]:
            by_class[c].append(dict(r, label_format="coco_instances"))
    for c, recs in enumerate(by_class):
        if not recs:
            raise CustomLayoutError(f"{path}: category {cats[c]['id']} ({classes[c]!r}) has no "
                                    "annotated image; annotate one or remove the category")
    keep = ("id", "name", "supercategory")
    categories = [{k: c[k] for k in keep if k in c} for c in cats]
    files = [path] + sorted({r["file_name"] for r in records})
    return SupportSource("coco", path, categories, by_class, files=files)


def _sets(path: str) -> SupportSource:
    files = sorted(f for f in os.listdir(path) if f.endswith(".pt") and not f.startswith("."))
    if not files:
        raise FileNotFoundError(f"{path}: no support-set files (<class>.pt)")
    full = [os.path.join(path, f) for f in files]
    cats = [{"id": i + 1, "name": f[:-3]} for i, f in enumerate(files)]
    return SupportSource("sets", path, cats, set_files=full, files=full)


def read_supports(src: str, supports_images: Optional[str] = None) -> SupportSource:
    """Read and check SRC without a model: every support image's header, every mask read and
    checked against its image's size, and a class whose every mask is empty refused (naming the
    class and the files; an empty one among others is named in a warning). Errors are one line
    naming the file at fault."""
    if not src:
        raise FileNotFoundError("--supports is empty: name a class-folder tree, a COCO json or a "
                                "folder of support-set files")
    if os.path.isfile(src):
        if not src.lower().endswith(".json"):
            raise ValueError(f"{src}: --supports must be a folder or a COCO .json file")
        source = _coco(src, supports_images)
    elif os.path.isdir(src):
        entries = [e for e in os.listdir(src) if not e.startswith(".")]
        has_sets = any(e.endswith(".pt") for e in entries)
        has_dirs = any(os.path.isdir(os.path.join(src, e)) for e in entries)
        if has_sets and has_dirs:
            raise ValueError(f"{src}: holds both support-set files (.pt) and class folders; keep "
                             "one kind of supports")
        source = _sets(src) if has_sets else _folder(src)
    else:
        raise FileNotFoundError(f"{src}: no such folder or file (--supports)")
    if supports_images and source.kind != "coco":
        raise ValueError(f"--supports-images {supports_images}: only for a COCO json --supports")
    safe = [os.path.basename(set_file("", n)) for n in source.classes]
    if len(set(safe)) != len(safe):
        raise ValueError(f"{src}: class names {source.classes} give the same SupportSet file "
                         "name twice; rename a class")
    for c, (name, recs) in enumerate(zip(source.classes, source.records)):
        empty = []
        for r in recs:
            shape = check_image_file(r["file_name"])
            if r.get("mask_file") and not os.path.isfile(r["mask_file"]):
                raise FileNotFoundError(f"{r['mask_file']}: no such mask file")
            if not support_mask(r, c, shape).any():
                empty.append(r.get("mask_file") or f"{r['file_name']} (in {src})")
        _check_foreground(src, name, len(recs), empty)
    return source


def _check_foreground(src: str, name: str, supports: int, empty: List[str]) -> None:
    """Refuse a class whose every support mask is empty (it would be found everywhere or
    nowhere); name the empty ones of a class that has others."""
    if empty and len(empty) == supports:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"{src}: class {name!r}: every support mask is empty (no foreground "
                         f"pixel: {shown}); draw the object in one or remove the class")
    for what in empty:
        logger.warning("%s: class %r: empty support mask (no foreground pixel); the class's %d "
                       "other supports are used", what, name, supports - len(empty))


def check_set_foreground(source: SupportSource, sets: List) -> None:
    """Refuse a saved support set (SRC of the "sets" kind) whose every support was encoded from
    an empty mask (each ``info`` "mask_fraction" is 0; a set without that record is not
    checked), naming the class and the file."""
    for s, path, name in zip(sets, source.set_files, source.classes):
        fractions = [i.get("mask_fraction") for i in getattr(s, "info", None) or []]
        if fractions and all(isinstance(f, (int, float)) and f == 0 for f in fractions):
            raise SupportSetError(f"{path}: class {name!r}: every support of this set was "
                                  "encoded from an empty mask (mask_fraction 0); encode it again "
                                  "from masks that hold the object, or remove the class")


def support_mask(record: Dict, class_id: int, shape):
    """(H, W) uint8 0/1 mask of class ``class_id`` in a support record, checked against its
    image's (H, W) ``shape``."""
    label = custom_label(record, class_id, record["label_format"], shape, ignore=False)
    if label.shape != tuple(shape):
        where = record.get("mask_file") or record["file_name"]
        raise ValueError(f"{where}: mask is {label.shape[1]}x{label.shape[0]} but its image is "
                         f"{shape[1]}x{shape[0]}")
    return label


def _instances_or_mask(record: Dict, class_id: int, shape):
    """A COCO json support: its instances of the class as COCO annotations (a model that
    rasterises them itself, SINE, sees each instance as few-shot instance segmentation does);
    otherwise the class's mask (``support_mask``)."""
    if record["label_format"] == "coco_instances":
        segs = record["segmentations"].get(class_id, [])
        if segs and (record.get("height", shape[0]), record.get("width", shape[1])) == tuple(shape):
            return [{"segmentation": seg} for seg in segs]
    return support_mask(record, class_id, shape)


def set_file(folder: str, name: str) -> str:
    """``<folder>/<class, file-safe>.pt``: the folder is itself a SRC of the "sets" kind."""
    safe = re.sub(r"[^A-Za-z0-9 ._-]+", "_", name).strip(". ") or "class"
    return os.path.join(folder, f"{safe}.pt")


def _load(path: str, predictor):
    try:
        return predictor.load_support_set(path)
    except SupportSetError as e:
        raise SupportSetError(f"{path}: {e}") from e


def support_sets(predictor, source: SupportSource, folder: str, compute: bool = True) -> List:
    """One support set per class, on the predictor's device.

    "sets": the files of SRC, checked against the predictor's model. Otherwise the saved file
    ``set_file(folder, name)`` when present (a resumed run: the journal's fingerprint already
    says the supports are the same), else encoded and saved (``compute``; False in the processes
    other than the main one, for which a missing file is an error).
    """
    if source.kind == "sets":
        return [_load(p, predictor).to(predictor.device) for p in source.set_files]
    sets, encoded = [], 0
    for c, (records, name) in enumerate(zip(source.records, source.classes)):
        path = set_file(folder, name)
        if os.path.isfile(path):
            s = _load(path, predictor)
        elif not compute:
            raise SupportSetError(f"{path}: missing after the main process prepared it")
        else:
            images = [read_image(r["file_name"]) for r in records]
            masks = [_instances_or_mask(r, c, im.shape[:2]) for r, im in zip(records, images)]
            s = predictor.encode_supports(images, masks, task="fsis")
            for info, r in zip(s.info, records):
                info.update(source=r["file_name"], category=name)
            s.save(path)
            encoded += 1
        sets.append(s.to(predictor.device))
    if compute:
        logger.info("Support sets in %s: %d encoded, %d loaded (%s)", folder, encoded,
                    len(sets) - encoded, ", ".join(f"{n}: {len(s)}" for n, s in
                                                   zip(source.classes, sets)))
    return sets
