# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Your own few-shot datasets, registered by one call or one config key.

Layouts ("coco", "semseg", "folder") and their label rules: ``custom_layouts.py``. One call::

    from diffews.data.datasets.custom import register_custom_fss
    register_custom_fss("parts", "folder", "datasets/parts", split={"test": ["bolt", "nut"]})
    # -> ["parts_train", "parts_test"]

or one config entry per dataset under ``DATASETS.CUSTOM`` (registered by
``diffews.config.build_config``; ``register_custom_from_config(cfg)`` for hand-built configs)::

    DATASETS:
      CUSTOM:
        parts: {LAYOUT: "folder", ROOT: "datasets/parts", TEST_CLASSES: ["bolt", "nut"]}
      TRAIN: ("parts_train",)
      TEST: ("parts_test",)

**What is registered.** ``<name>_train`` holds the train (base) classes that have at least 2
images (a query and a support; training draws supports with repeats, ``data/episodes/train.py``);
``<name>_test`` the test (novel) classes with at least ``shot + 1`` images (a query and ``shot``
distinct supports). Without a split every class is in both. Classes with too few images are left
out with a warning naming them; a split left with no class is an error naming the dataset's file.
A split is a list of test classes (the rest train) or ``{"train": [...], "test": [...]}``; a
class is its name or its index (COCO: categories sorted by id; semseg: the class-name list's
order; folder: sorted folder names). Class ids are those indices in both splits, so per-class
IoU is reported under the same names whatever the split.

**Test episodes** (``episodes.py``, benchmark "custom"): ``num_episodes`` (default 1000, the
COCO-20i protocol count; ``TEST.FSS.NUM_EPISODES`` overrides) from ``RandomState(seed)``: the class
uniform over the test classes, the query uniform over the class's images (``image_id`` order),
the supports by COCO-20i's loop (uniform over the class's images, kept if not the query), kept
distinct. Not cached: they are drawn from the records in milliseconds.
"""

import logging
import os
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .registration import register_fss, update_metadata
from .custom_labels import IGNORE
from .custom_layouts import (
    CustomLayoutError, read_class_names, read_coco_layout, read_folder_layout, read_semseg_layout,
    resolve_path
)

logger = logging.getLogger(__name__)

__all__ = ["LAYOUTS", "register_custom_fss", "custom_test_dataset", "register_custom_from_config",
           "per_class_iou_by_name"]

LAYOUTS = ("coco", "semseg", "folder")
TEST_EPISODES = 1000
_LABEL_FORMAT = {"coco": "coco_instances", "semseg": "class_index", "folder": "binary"}
# query label has ignore pixels: COCO crowd regions, semseg ignore_label
_IGNORE = {"coco": True, "semseg": True, "folder": False}
_COCO_CACHE: Dict = {}
_WARNED: set = set()
# DATASETS.CUSTOM.<name> key -> register_custom_fss argument
CONFIG_KEYS = {"LAYOUT": "layout", "ROOT": "root", "COCO_JSON": "coco_json",
               "CLASS_NAMES": "class_names", "IMAGE_DIR": "image_dir", "LABEL_DIR": "label_dir",
               "TRAIN_CLASSES": None, "TEST_CLASSES": None, "SHOT": "shot",
               "LABEL_OFFSET": "label_offset", "IGNORE_LABEL": "ignore_label",
               "MIN_PIXELS": "min_pixels", "NUM_EPISODES": "num_episodes"}


def _read(spec: Dict):
    """``(class_names, records)`` of a dataset spec; a COCO json is parsed once per version."""
    layout, root = spec["layout"], spec["root"]
    if layout == "folder":
        return read_folder_layout(root)
    if layout == "semseg":
        names = spec["class_names"] or resolve_path(None, root, "class_names.txt")
        return read_semseg_layout(resolve_path(spec["image_dir"], root, "images"),
                                  resolve_path(spec["label_dir"], root, "labels"),
                                  read_class_names(names), spec["label_offset"],
                                  spec["ignore_label"], spec["min_pixels"])
    coco_json, image_dir = spec["coco_json"], resolve_path(spec["image_dir"], root, ".")
    st = os.stat(coco_json) if os.path.isfile(coco_json) else None
    key = (os.path.abspath(coco_json), st and (st.st_mtime_ns, st.st_size), image_dir)
    if key not in _COCO_CACHE:
        _COCO_CACHE.clear()  # one json in memory
        _COCO_CACHE[key] = read_coco_layout(coco_json, image_dir)
    return _COCO_CACHE[key]


def _resolve_classes(items: Sequence, names: List[str], source: str) -> List[int]:
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise CustomLayoutError(f"{source}: split class {item!r} is not a class of the "
                                        f"dataset ({len(names)} classes: {names[:8]}...)")
            out.append(names.index(item))
        elif isinstance(item, int) and 0 <= item < len(names):
            out.append(int(item))
        else:
            raise CustomLayoutError(f"{source}: split class {item!r} must be a class name or an "
                                    f"index 0..{len(names) - 1}")
    return sorted(set(out))


def split_classes(split, names: List[str], source: str) -> Dict[str, List[int]]:
    """``{"train": [...], "test": [...]}`` class indices of a split (see the module docstring)."""
    every = list(range(len(names)))
    if split is None:
        return {"train": every, "test": every}
    if isinstance(split, dict):
        unknown = set(split) - {"train", "test"}
        if unknown or not split:
            raise CustomLayoutError(f"{source}: split keys must be 'train' and/or 'test', got "
                                    f"{sorted(split)}")
        chosen = {k: _resolve_classes(v, names, source) for k, v in split.items() if v is not None}
    else:
        chosen = {"test": _resolve_classes(split, names, source)}
    for k, other in (("train", "test"), ("test", "train")):
        if k not in chosen:
            chosen[k] = [c for c in every if c not in chosen[other]]
    return chosen


def _source(spec: Dict) -> str:
    return spec["coco_json"] or spec["root"]


def load_custom(spec: Dict, split: str, dataset_name: Optional[str] = None) -> List[Dict]:
    """Records of one split of a custom dataset, ``classes`` restricted to the split's classes
    with enough images (2 for train, ``shot + 1`` for test); sets the dataset's metadata
    ``class_ids`` and ``class_names``.

    Raises:
        CustomLayoutError: a bad layout, or no class of the split has enough images.
    """
    names, records = _read(spec)
    source = _source(spec)
    wanted = split_classes(spec["split"], names, source)[split]
    need = 2 if split == "train" else spec["shot"] + 1
    count = Counter(c for r in records for c in r["classes"])
    kept = [c for c in wanted if count[c] >= need]
    dropped = [c for c in wanted if count[c] < need]
    what = "a query and a support" if split == "train" else f"a query and {spec['shot']} supports"
    if dropped:
        message = (f"{dataset_name or source}: {len(dropped)} {split} class(es) with fewer than "
                   f"{need} images ({what}) left out: "
                   + ", ".join(f"{names[c]} ({count[c]})" for c in dropped))
        if message not in _WARNED:  # the test loader and its episodes both load the records
            _WARNED.add(message)
            logger.warning(message)
    if not kept:
        most = max((count[c] for c in wanted), default=0)
        raise CustomLayoutError(
            f"{source}: no {split} class has the {need} images an episode needs ({what}); "
            f"{len(wanted)} {split} class(es), at most {most} image(s) each")
    keep = set(kept)
    out = []
    for r in records:
        classes = [c for c in r["classes"] if c in keep]
        if classes:
            out.append({**r, "classes": classes})
    if dataset_name:
        update_metadata(dataset_name, class_ids=kept, thing_classes=[names[c] for c in kept],
                        all_class_names=list(names))
    summary = f"{dataset_name or source}: {len(kept)} classes, {len(out)} images"
    if summary not in _WARNED:  # once, however often the records are loaded
        _WARNED.add(summary)
        logger.info(summary)
    return out


def register_custom_fss(name: str, layout: str, root: str, coco_json: Optional[str] = None,
                        class_names: Union[None, str, Sequence[str]] = None,
                        image_dir: Optional[str] = None, label_dir: Optional[str] = None,
                        split=None, shot: int = 1, label_offset: int = 1,
                        ignore_label: int = IGNORE, min_pixels: int = 1,
                        num_episodes: int = TEST_EPISODES) -> List[str]:
    """Register ``<name>_train`` and ``<name>_test`` (nothing is read until they are loaded).

    Args:
        name: dataset name prefix.
        layout: "coco", "semseg" or "folder" (``custom_layouts.py``).
        root: the dataset folder (folder: the class folders; semseg: holds ``images/``,
            ``labels/`` and ``class_names.txt`` unless given; coco: the image folder).
        coco_json: coco: the instances json (required).
        class_names: semseg: list or text file (one name a line), class index = line index
            (default ``<root>/class_names.txt``).
        image_dir, label_dir: semseg (default ``images``, ``labels``) or coco (image_dir,
            default ``root``) folders, absolute or relative to ``root``.
        split: None (every class in both), a list of test classes, or
            ``{"train": [...], "test": [...]}`` (names or indices).
        shot: supports per test episode; test classes need ``shot + 1`` images.
        label_offset, ignore_label, min_pixels: semseg label rule (``custom_layouts.py``).
        num_episodes: test episodes (``TEST.FSS.NUM_EPISODES`` overrides).
    Returns:
        ``[<name>_train, <name>_test]``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"custom dataset {name!r}: layout must be one of {LAYOUTS}, got "
                         f"{layout!r}")
    if not root:
        raise ValueError(f"custom dataset {name!r}: a dataset root folder is needed")
    if layout == "coco" and not coco_json:
        raise ValueError(f"custom dataset {name!r}: the coco layout needs coco_json (the COCO "
                         "instances json)")
    if layout != "coco" and coco_json:
        raise ValueError(f"custom dataset {name!r}: coco_json is for the coco layout only")
    if layout != "semseg" and (class_names or label_dir):
        raise ValueError(f"custom dataset {name!r}: class_names and label_dir are for the semseg "
                         "layout (coco reads the json's categories, folder the folder names); "
                         "pick classes with split")
    if layout == "folder" and image_dir:
        raise ValueError(f"custom dataset {name!r}: image_dir is not used by the folder layout")
    if shot < 1 or num_episodes < 0 or min_pixels < 1:
        raise ValueError(f"custom dataset {name!r}: shot and min_pixels must be >= 1 and "
                         f"num_episodes >= 0, got {shot}, {min_pixels}, {num_episodes}")
    spec = {"layout": layout, "root": root, "coco_json": coco_json,
            "class_names": list(class_names) if isinstance(class_names, (list, tuple))
            else class_names, "image_dir": image_dir, "label_dir": label_dir, "split": split,
            "shot": int(shot), "label_offset": int(label_offset),
            "ignore_label": int(ignore_label), "min_pixels": int(min_pixels)}
    names = []
    for part in ("train", "test"):
        dataset = f"{name}_{part}"
        register_fss(
            dataset, lambda part=part, dataset=dataset: load_custom(spec, part, dataset),
            benchmark="custom", fold=0, split=part, class_ids=[], layout=layout,
            label_format=_LABEL_FORMAT[layout], ignore_boundary=_IGNORE[layout],
            num_episodes=(num_episodes or TEST_EPISODES) if part == "test" else None,
            shot_filter=int(shot) if part == "test" else None, custom_source=_source(spec),
        )
        names.append(dataset)
    return names


def custom_name(root: str) -> str:
    """Default dataset name of a folder: ``custom_<folder name>`` (non-word characters -> _)."""
    base = os.path.basename(os.path.normpath(os.path.abspath(root)))
    return "custom_" + (re.sub(r"\W+", "_", base).strip("_") or "data")


def custom_test_dataset(layout: str, dataset_root: str, coco_json: Optional[str] = None,
                        class_names: Union[None, str, Sequence[str]] = None, shot: int = 1,
                        name: Optional[str] = None, split=None, **options) -> str:
    """Register a custom dataset for ``shot``-shot evaluation and return its test dataset name
    (``run_fss.py --layout ... --dataset-root DIR``). The records are loaded now, so a bad layout
    fails before a model is built.

    Args:
        layout, dataset_root, coco_json, class_names, shot, split: see ``register_custom_fss``
            (``dataset_root`` is its ``root``); every class is a test class unless ``split``.
        name: dataset name prefix (default ``custom_<folder name>``).
        options: further ``register_custom_fss`` arguments (image_dir, label_dir, label_offset,
            ignore_label, min_pixels, num_episodes).
    Returns:
        the registered test dataset name, ``<name>_test``.
    """
    name = name or custom_name(dataset_root)
    test = register_custom_fss(name, layout, dataset_root, coco_json=coco_json,
                               class_names=class_names, split=split, shot=shot, **options)[1]
    DatasetCatalog.get(test)
    return test


def register_custom_from_config(cfg) -> List[str]:
    """Register every ``DATASETS.CUSTOM`` entry (keys: ``CONFIG_KEYS``; ``SHOT`` 0 = the
    config's ``TEST.FSS.SHOT``); returns the registered dataset names."""
    out = []
    for name, entry in cfg.DATASETS.CUSTOM.items():
        if not hasattr(entry, "items"):
            raise ValueError(f"DATASETS.CUSTOM.{name}: expected a mapping of {sorted(CONFIG_KEYS)}")
        unknown = sorted(set(entry) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"DATASETS.CUSTOM.{name}.{unknown[0]}: unknown key; expected one of "
                             f"{sorted(CONFIG_KEYS)}")
        kwargs = {arg: entry[key] for key, arg in CONFIG_KEYS.items() if arg and key in entry}
        if not kwargs.get("shot"):
            kwargs["shot"] = cfg.TEST.FSS.SHOT
        train, test = entry.get("TRAIN_CLASSES"), entry.get("TEST_CLASSES")
        if train or test:
            kwargs["split"] = {k: list(v) for k, v in (("train", train), ("test", test)) if v}
        if "layout" not in kwargs or "root" not in kwargs:
            raise ValueError(f"DATASETS.CUSTOM.{name}: LAYOUT and ROOT are required")
        out += register_custom_fss(name, **kwargs)
    return out


def per_class_iou_by_name(dataset_name: str, fss_result: Dict) -> Dict[str, float]:
    """``{"IoU-<class id>": v}`` of an ``FSSEvaluator`` result -> ``{class name: v}``, with the
    names of the dataset's metadata (``class_names``, aligned with ``class_ids``)."""
    meta = MetadataCatalog.get(dataset_name)
    names = dict(zip(meta.class_ids, meta.get("thing_classes") or []))
    out = {}
    for key, value in fss_result.items():
        if key.startswith("IoU-"):
            cid = int(key[len("IoU-"):])
            out[names.get(cid, str(cid))] = value
    return out
