# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reading your own few-shot data in three layouts (registered by ``custom.py``).

Each reader returns ``(class_names, records)``: the dataset's classes (class id = index in the
list) and one image record per image (``records.py`` contract) whose ``classes`` lists every class
present in it. Records are sorted by ``image_id``, so episodes drawn from them are reproducible.

* **coco**: a COCO instances json plus an image folder. Classes are the json's ``categories``
  sorted by ``id``. The mask of a class in an image is the union of its instances. Crowd
  annotations (``iscrowd: 1``) are handled as COCO does: they are not objects (detectron2's
  ``DatasetMapper`` drops them for training; ``COCOeval`` makes them ignore regions), so in the
  query label a crowd region of the episode class not covered by a non-crowd instance is ignore
  (255), in supports and training targets it is background, and an image whose only instances of
  a class are crowds is not listed under that class. Label format "coco_instances".
* **semseg**: images plus label PNGs (ADE20K / VOC style) and a class-name list. Pixel value ``v``
  is class ``v - label_offset`` when ``label_offset <= v < label_offset + C``, background when
  ``v < label_offset`` (VOC's 0 = background, ADE20K's 0 = "other": ``label_offset 1``; labels
  that number classes from 0, like detectron2's ``annotations_detectron2``: ``label_offset 0``) and
  ignore when ``v == ignore_label`` (255 in the query label; background in supports). An image is
  listed under a class with at least ``min_pixels`` pixels of it. Label format "class_index".
* **folder**: ``<root>/<class>/<name>.jpg`` (or .jpeg/.bmp/.tif/.tiff/.webp) with the mask
  ``<name>.png`` beside it (FSS-1000 style). Classes are the sorted class folder names. A mask
  whose maximum is 1 is a 0/1 mask; any other mask is foreground where >= 128 (FSS-1000's rule).
  Label format "binary".

Bad layouts raise a one-line ``CustomLayoutError`` naming the file at fault. The label of a class
is read from a record when a sample is loaded: ``custom_labels.py`` (re-exported here).
"""

import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ...utils.image import read_label
from .roots import dataset_root, require
from .split_files import load_json, save_json
from .custom_labels import IGNORE

logger = logging.getLogger(__name__)

__all__ = ["CustomLayoutError", "IMAGE_EXTS", "read_coco_layout", "read_semseg_layout",
           "read_folder_layout", "scan_semseg_labels", "read_class_names"]

IMAGE_EXTS = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SEMSEG_IMAGE_EXTS = IMAGE_EXTS + (".png",)


class CustomLayoutError(ValueError):
    """A custom dataset does not follow its layout; the message names the file at fault."""


def read_class_names(class_names, what: str = "class names") -> List[str]:
    """A list of names, or a text file with one name a line (blank lines skipped)."""
    if isinstance(class_names, str):
        require(class_names, f"{what} file (one class name a line)")
        with open(class_names, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        source = class_names
    else:
        names, source = [str(n) for n in class_names], what
    if not names:
        raise CustomLayoutError(f"{source}: no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CustomLayoutError(f"{source}: class names repeat: {dup}")
    return names


# ---------------------------------------------------------------------------------------------
# coco


def read_coco_layout(coco_json: str, image_dir: str) -> Tuple[List[str], List[Dict]]:
    """Records of a COCO instances json (see the module docstring for the crowd rule).

    Returns:
        class names (categories sorted by id) and records with "segmentations" and "crowd"
        (class id -> list of COCO segmentations: polygons, RLE or uncompressed RLE), "height",
        "width" and "classes" (classes with a non-crowd instance).
    """
    data = load_json(require(coco_json, "COCO instances json"))
    require(image_dir, "image folder of the COCO json", is_dir=True)
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise CustomLayoutError(f"{coco_json}: expected a COCO instances json with 'images', "
                                "'annotations' and 'categories' lists")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if not cats or len(set(ids)) != len(ids):
        raise CustomLayoutError(f"{coco_json}: 'categories' is empty or repeats an id")
    class_of = {cat_id: i for i, cat_id in enumerate(ids)}
    records: Dict = {}
    for img in data["images"]:
        path = os.path.join(image_dir, img["file_name"])
        if not os.path.isfile(path):
            raise CustomLayoutError(f"{coco_json}: image {img['id']} ({img['file_name']}) has no "
                                    f"file {path}")
        records[img["id"]] = {
            "image_id": os.path.splitext(img["file_name"])[0].replace(os.sep, "/"),
            "file_name": path, "segmentations": {}, "crowd": {}, "classes": [],
        }
        if isinstance(img.get("height"), int) and isinstance(img.get("width"), int):
            records[img["id"]].update(height=img["height"], width=img["width"])
    for ann in data["annotations"]:
        if ann.get("category_id") not in class_of:
            raise CustomLayoutError(
                f"{coco_json}: annotation {ann.get('id')} has category_id "
                f"{ann.get('category_id')!r}, which is not in 'categories' ({ids[:10]}...)")
        if ann.get("image_id") not in records:
            raise CustomLayoutError(f"{coco_json}: annotation {ann.get('id')} has image_id "
                                    f"{ann.get('image_id')!r}, which is not in 'images'")
        segm = ann.get("segmentation")
        if not segm:
            raise CustomLayoutError(f"{coco_json}: annotation {ann.get('id')} has no "
                                    "'segmentation' (box-only annotations cannot train masks)")
        record, cls = records[ann["image_id"]], class_of[ann["category_id"]]
        key = "crowd" if ann.get("iscrowd", 0) else "segmentations"
        record[key].setdefault(cls, []).append(segm)
    out = []
    for record in records.values():
        record["classes"] = sorted(record["segmentations"])
        out.append(record)
    _check_unique_ids(out, coco_json)
    return [str(c["name"]) for c in cats], sorted(out, key=lambda r: r["image_id"])


# ---------------------------------------------------------------------------------------------
# semseg


def _files(folder: str, exts: Sequence[str]) -> Dict[str, str]:
    """relative path without extension -> path, for files under ``folder`` (recursive)."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in exts:
                continue
            path = os.path.join(dirpath, f)
            key = os.path.relpath(os.path.join(dirpath, stem), folder).replace(os.sep, "/")
            if key in out:
                raise CustomLayoutError(f"{path}: two images named {key} ({out[key]})")
            out[key] = path
    return out


def cache_dir() -> str:
    """Where label scans are cached: ``$DETECTRON2_DATASETS/.diffews_cache``."""
    return os.path.join(dataset_root(), ".diffews_cache")


def scan_semseg_labels(label_files: Sequence[str], num_classes: int, label_offset: int,
                       ignore_label: int, min_pixels: int, cache: bool = True
                       ) -> List[Tuple[List[int], int, int]]:
    """Classes present in each label PNG.

    Args:
        label_files: label PNG paths.
        num_classes: C; values ``label_offset .. label_offset + C - 1`` are classes.
        label_offset, ignore_label: see the module docstring.
        min_pixels: a class counts in an image with at least this many pixels.
        cache: keep the result in ``cache_dir()`` keyed by the files' paths, sizes and times
            (ADE20K's 20k labels take a minute to scan); an unwritable folder only disables it.
    Returns:
        per file ``(classes, height, width)``.
    Raises:
        CustomLayoutError: a value is neither background, a class nor ``ignore_label``.
    """
    key = hashlib.sha1(repr((num_classes, label_offset, ignore_label, min_pixels)).encode())
    for path in label_files:
        st = os.stat(path)
        key.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache_file = os.path.join(cache_dir(), f"semseg_scan_{key.hexdigest()[:16]}.json.gz")
    if cache and os.path.isfile(cache_file):
        return [tuple(x) for x in load_json(cache_file)]
    out = []
    top = label_offset + num_classes
    for path in tqdm(label_files, desc="scanning labels", disable=len(label_files) < 500):
        raw = read_label(path)
        values, counts = np.unique(raw, return_counts=True)
        bad = [int(v) for v in values if v >= top and v != ignore_label]
        if bad:
            raise CustomLayoutError(
                f"{path}: label value {bad[0]} is neither a class ({label_offset}..{top - 1}: "
                f"{num_classes} class names, label offset {label_offset}), background "
                f"(< {label_offset}) nor the ignore label {ignore_label}")
        classes = [int(v) - label_offset for v, n in zip(values, counts)
                   if label_offset <= v < top and n >= min_pixels]
        out.append((classes, int(raw.shape[0]), int(raw.shape[1])))
    if cache:
        try:
            save_json(out, cache_file)
        except OSError as e:
            logger.warning("could not cache the label scan in %s (%s)", cache_file, e)
    return out


def read_semseg_layout(image_dir: str, label_dir: str, class_names: List[str],
                       label_offset: int = 1, ignore_label: int = IGNORE, min_pixels: int = 1
                       ) -> Tuple[List[str], List[Dict]]:
    """Records of an image folder plus a label-PNG folder, matched by relative path without
    extension (as detectron2's ``load_sem_seg``). A label without an image is an error; images
    without a label are left out with a warning."""
    images = _files(require(image_dir, "image folder", is_dir=True), SEMSEG_IMAGE_EXTS)
    labels = _files(require(label_dir, "label folder", is_dir=True), (".png",))
    if not labels:
        raise CustomLayoutError(f"{label_dir}: no label .png files")
    for key, path in labels.items():
        if key not in images:
            raise CustomLayoutError(f"{path}: mask without an image ({key}.jpg or another "
                                    f"image extension in {image_dir})")
    unlabeled = sorted(set(images) - set(labels))
    if unlabeled:
        logger.warning("%s: %d image(s) without a label in %s are left out (e.g. %s)",
                       image_dir, len(unlabeled), label_dir, unlabeled[0])
    keys = sorted(labels)
    scans = scan_semseg_labels([labels[k] for k in keys], len(class_names), label_offset,
                               ignore_label, min_pixels)
    records = [{
        "image_id": key, "file_name": images[key], "mask_file": labels[key],
        "label_offset": int(label_offset), "ignore_label": int(ignore_label),
        "height": h, "width": w, "classes": classes,
    } for key, (classes, h, w) in zip(keys, scans)]
    return list(class_names), records


# ---------------------------------------------------------------------------------------------
# folder


def read_folder_layout(root: str) -> Tuple[List[str], List[Dict]]:
    """Records of ``<root>/<class>/<name>.<image ext>`` + ``<name>.png`` (FSS-1000 style).
    A mask without an image or an image without a mask is an error naming the file."""
    require(root, "dataset folder (<root>/<class>/<name>.jpg + <name>.png)", is_dir=True)
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise CustomLayoutError(f"{root}: no class folders (<root>/<class>/<name>.jpg + "
                                "<name>.png)")
    records = []
    for cls, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(os.listdir(folder))
        images = {os.path.splitext(f)[0]: f for f in files
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTS}
        masks = {os.path.splitext(f)[0] for f in files if os.path.splitext(f)[1] == ".png"}
        for stem in sorted(masks - set(images)):
            raise CustomLayoutError(f"{os.path.join(folder, stem + '.png')}: mask without an "
                                    f"image ({stem}.jpg or {'/'.join(IMAGE_EXTS[1:])}; images "
                                    "are not .png in the folder layout)")
        for stem in sorted(set(images) - masks):
            raise CustomLayoutError(f"{os.path.join(folder, images[stem])}: image without a "
                                    f"mask ({stem}.png)")
        for stem in sorted(images):
            records.append({"image_id": f"{name}/{stem}",
                            "file_name": os.path.join(folder, images[stem]),
                            "mask_file": os.path.join(folder, stem + ".png"), "classes": [cls]})
    return classes, records


def _check_unique_ids(records: List[Dict], source: str) -> None:
    seen: Dict[str, str] = {}
    for r in records:
        if r["image_id"] in seen:
            raise CustomLayoutError(f"{source}: two images share the ID {r['image_id']} "
                                    f"({seen[r['image_id']]}, {r['file_name']})")
        seen[r["image_id"]] = r["file_name"]


def resolve_path(path: Optional[str], root: str, default: str) -> str:
    """``path`` (absolute, or relative to ``root``), else ``<root>/<default>``."""
    if not path:
        return os.path.join(root, default)
    return path if os.path.isabs(path) else os.path.join(root, path)
