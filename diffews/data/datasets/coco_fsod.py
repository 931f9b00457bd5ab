# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation data, TFA protocol (docs/METHOD.md section 7.2, docs/PROTOCOLS.md section 2f).

Registered names (TFA's, ``fsdet/data/builtin.py``), detectron2's standard instance format
(``file_name, height, width, image_id, annotations: [{bbox (XYWH_ABS), bbox_mode, category_id
(contiguous 0..19), segmentation (polygons or RLE), iscrowd}]``), not the FSS contract of
``records.py``:

* ``coco_trainval_novel_{K}shot`` (seed 0) and ``coco_trainval_novel_{K}shot_seed{S}`` (S = 1..9),
  K in 1, 2, 3, 5, 10, 30: the support instances, **one record per annotation** (an image with a
  single instance), read from TFA's ``cocosplit`` files.
* ``coco_test_novel``: COCO's 5k val images, annotations of the 20 novel classes only.
* ``VOCSegm_val_novel``: VOC val converted to COCO json (SINE's cross-domain test).

Which files are read, in which order, and how K supports are drawn from a class file with more:
``coco_fsod_reader.py`` (its names are re-exported here).

Test sets carry ``evaluator_type="coco"``, ``json_file`` and ``thing_dataset_id_to_contiguous_id``
(so detectron2's COCOEvaluator maps the contiguous classes back); ``eval_category_ids`` are the
dataset ids AP is restricted to. Paths follow ``$DETECTRON2_DATASETS`` when a set is loaded.
"""

import os
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_fsod_reader import (
    NOVEL_CLASSES, NOVEL_ID_MAP, SEEDS, SHOTS, SUPPORT_IMAGES, TEST_PATHS,
    check_shot_seed, fsod_test_metadata, load_fsod_support, load_fsod_test,
    load_support_class_file, support_split_file,
)
from .roots import dataset_root, MissingDataError

__all__ = ["TEST_SETS", "fsod_support_name", "fsod_dataset_names", "check_fsod",
           "register_all_fsod"]

TEST_SETS = {"coco": "coco_test_novel", "voc": "VOCSegm_val_novel"}


def fsod_support_name(shot: int, seed: int = 0) -> str:
    """TFA's name: ``coco_trainval_novel_{K}shot`` for seed 0, ``..._seed{S}`` otherwise."""
    check_shot_seed(shot, seed)
    return f"coco_trainval_novel_{shot}shot" + (f"_seed{seed}" if seed else "")


def fsod_dataset_names(cfg) -> Tuple[str, str]:
    """(support split name, test set name) from ``TEST.FSOD.{SHOT, SEED, TEST_SET}``."""
    f = cfg.TEST.FSOD
    if f.TEST_SET not in TEST_SETS:
        raise ValueError(f"TEST.FSOD.TEST_SET must be one of {sorted(TEST_SETS)}, got "
                         f"{f.TEST_SET!r}")
    return fsod_support_name(int(f.SHOT), int(f.SEED)), TEST_SETS[f.TEST_SET]


def check_fsod(root: Optional[str] = None, sample: int = 20, shots: Sequence[int] = SHOTS,
               seeds: Sequence[int] = SEEDS) -> List[str]:
    """Missing paths of the FSOD trees: folders, test jsons, every class file of the given
    shots and seeds, ``sample`` evenly spaced test images per set and every support image of
    the seed-0 files. Empty list = OK. Unparseable files raise ValueError naming them."""
    root = dataset_root(root)
    missing = [p for p in (os.path.join(root, SUPPORT_IMAGES),
                           *[os.path.join(root, v[1]) for v in TEST_PATHS.values()])
               if not os.path.isdir(p)]
    for name in TEST_PATHS:
        try:
            records = load_fsod_test(name, root)
        except MissingDataError as e:
            missing.append(e.path)
            continue
        step = max(1, len(records) // max(sample, 1))
        missing += [r["file_name"] for r in records[::step][:sample]
                    if not os.path.isfile(r["file_name"])]
    image_root = os.path.join(root, SUPPORT_IMAGES)
    for seed in seeds:
        for shot in shots:
            for idx, cls in enumerate(NOVEL_CLASSES):
                path = support_split_file(root, shot, seed, cls)
                if not os.path.isfile(path):
                    missing.append(path)
                elif seed == 0:
                    missing += [r["file_name"] for r in
                                load_support_class_file(path, idx, image_root)
                                if not os.path.isfile(r["file_name"])]
    return sorted(set(missing))


def _register(name: str, loader, **metadata) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(thing_classes=list(NOVEL_CLASSES), **metadata)


def register_all_fsod() -> None:
    """Register the support splits (every K and seed) and both test sets. Nothing is read;
    ``json_file`` is set from the root at registration and refreshed when a set is loaded."""
    for shot in SHOTS:
        for seed in SEEDS:
            _register(fsod_support_name(shot, seed),
                      lambda k=shot, s=seed: load_fsod_support(k, s),
                      thing_dataset_id_to_contiguous_id=dict(NOVEL_ID_MAP), shot=shot,
                      seed=seed, benchmark="fsod", split="support")
    for name in TEST_PATHS:
        _register(name, lambda n=name: load_fsod_test(n), evaluator_type="coco",
                  benchmark="fsod", split="test", **fsod_test_metadata(name))


register_all_fsod()
