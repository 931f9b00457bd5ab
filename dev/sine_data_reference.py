# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reference data for SINE's per-image sample processing, produced by the ORIGINAL code (dev only).

    python dev/sine_data_reference.py /path/to/SINE [--out tests/data/sine_data_reference.pt]

``/path/to/SINE`` is a work tree of aim-uofa/SINE (commit 9ff576c). The tiny trees of
``tests/_sine_trees.py`` (COCO / ADE20K panoptic, COCO / ADE20K instances, PACO-LVIS,
Objects365 with SAM mask json) are written to a temporary folder and read with the loaders the
original trains with (detectron2's ``load_coco_panoptic_json`` for both panoptic sets, as
detectron2's ``coco_2017_train_panoptic`` and Mask2Former's ``ade20k_panoptic_train`` build the
same dicts; SINE's ``sine/data/load_data/coco.py`` for COCO, ADE20K instances and PACO (PACO's
own loader needs the ``lvis`` package and adds only attribute fields); SINE's
``load_data/object365.py`` for Objects365). Then each record goes through the original
dataset class's ``process_img_dict`` (``COCOPanoDataset``, ``COCOInsDataset``,
``O365Dataset``, ``PACODataset``) with the original's ``build_augmentation`` and
``HybridDataset.dino_transform`` after ``np.random.seed(seed)``: the image tensor (stored in
float16 to keep the file small), the
augmented size, instance ids, classes (as ranks among the record's classes: the two codes
number classes differently) and masks are saved, together with the tree's files themselves,
so that ``tests/test_sine_data_reference.py`` replays the same records through
``diffews.data.incontext`` with ``RandomState(seed)``.

The original's ``sine/data/datasets/`` and dinov2's ``dinov2/data/datasets/`` packages are not
in the SINE repository (ignored by its ``.gitignore``); they are stubbed as empty modules, and
``panopticapi.utils.rgb2id`` (``R + 256 G + 256^2 B``) is provided if panopticapi is absent.
"""

import argparse
import os
import sys
import tempfile
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = 32
SEEDS = (0, 1)
# source -> (tree writer, original dataset class, loader kind)
SOURCES = {
    "sine_coco_panoptic_train": ("write_coco_panoptic", "COCOPanoDataset", "panoptic"),
    "sine_ade20k_panoptic_train": ("write_ade20k_panoptic", "COCOPanoDataset", "panoptic"),
    "sine_coco_instance_train": ("write_coco_instances", "COCOInsDataset", "coco"),
    "sine_ade20k_instance_train": ("write_ade20k_instances", "O365Dataset", "coco"),
    "sine_paco_lvis_train": ("write_paco", "PACODataset", "coco"),
    "sine_o365_sam_train": ("write_o365_sam", "O365Dataset", "o365"),
}
PATHS = {  # source -> (json, image folder[, PNG folder]) in the tree
    "sine_coco_panoptic_train": ("coco/annotations/panoptic_train2017.json", "coco/train2017",
                                 "coco/panoptic_train2017"),
    "sine_ade20k_panoptic_train": ("ADEChallengeData2016/ade20k_panoptic_train.json",
                                   "ADEChallengeData2016/images/training",
                                   "ADEChallengeData2016/ade20k_panoptic_train"),
    "sine_coco_instance_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "sine_ade20k_instance_train": ("ADEChallengeData2016/ade20k_instance_train.json",
                                   "ADEChallengeData2016/images/training"),
    "sine_paco_lvis_train": ("paco/paco_lvis_v1_train.json", "coco"),
    "sine_o365_sam_train": ("Objects365/annotations/sam_obj365_train_1742k.json",
                            "Objects365"),
}


def stub_missing_modules() -> None:
    sys.modules.setdefault("sine.data.datasets", types.ModuleType("sine.data.datasets"))
    dinov2_datasets = types.ModuleType("dinov2.data.datasets")
    dinov2_datasets.ImageNet = dinov2_datasets.ImageNet22k = None
    sys.modules.setdefault("dinov2.data.datasets", dinov2_datasets)
    try:
        import panopticapi.utils  # noqa: F401
    except ImportError:
        utils = types.ModuleType("panopticapi.utils")
        utils.rgb2id = lambda c: (c[..., 0].astype(np.int32) + 256 * c[..., 1].astype(np.int32)
                                  + 256 * 256 * c[..., 2].astype(np.int32))
        sys.modules["panopticapi"] = types.ModuleType("panopticapi")
        sys.modules["panopticapi.utils"] = utils


def original_records(name: str, root: str):
    """The tree's records as the original's loaders build them."""
    import json

    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    kind = SOURCES[name][2]
    paths = [os.path.join(root, p) for p in PATHS[name]]
    if kind == "panoptic":
        with open(paths[0]) as f:
            cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
        meta = {"thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)
                                                      if c["isthing"]},
                "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)
                                                      if not c["isthing"]}}
        return load_coco_panoptic_json(paths[0], paths[1], paths[2], meta)
    if kind == "coco":
        from sine.data.load_data.coco import load_coco_json
        return load_coco_json(paths[0], paths[1], dataset_name=f"reference_{name}")
    from sine.data.load_data.object365 import get_o365_metadata, load_object365_json
    return load_object365_json(paths[0], paths[1], get_o365_metadata())


def record_classes(record):
    items = record.get("segments_info", record.get("annotations", []))
    return sorted({int(x["category_id"]) for x in items})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sine_root", help="work tree of aim-uofa/SINE (9ff576c)")
    parser.add_argument("--out", default="tests/data/sine_data_reference.pt")
    parser.add_argument("--commit", default="unknown", help="the checkout's commit")
    args = parser.parse_args()
    root_sine = os.path.abspath(args.sine_root)
    if not os.path.isfile(os.path.join(root_sine, "sine", "data", "coco.py")):
        sys.exit(f"{root_sine}: no sine/data/coco.py (give a work tree of aim-uofa/SINE)")
    sys.path.insert(0, root_sine)
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    stub_missing_modules()
    import _sine_trees as trees
    import sine.data.dataset as hybrid

    augmentation = hybrid.build_augmentation(argparse.Namespace(
        random_flip="horizontal", min_scale=0.1, max_scale=2.0, image_size=IMAGE_SIZE), True)
    tree = tempfile.mkdtemp(prefix="sine_data_ref_")
    cases = []
    for name, (writer, cls_name, _) in SOURCES.items():
        getattr(trees, writer)(tree)
        dataset = object.__new__(getattr(hybrid, cls_name))
        dataset.is_train, dataset.img_format, dataset.image_size = True, "RGB", IMAGE_SIZE
        dataset.tfm_gens_crop_pair = dataset.tfm_gens_sel_pair = augmentation
        dataset.dino_transform = hybrid.HybridDataset.dino_transform
        for record in original_records(name, tree):
            classes = record_classes(record)
            if not classes:
                continue
            for seed, keep_rank in [(s, list(range(len(classes)))) for s in SEEDS] + [(7, [0])]:
                np.random.seed(seed)
                out = dataset.process_img_dict(record, True, [classes[r] for r in keep_rank])
                inst = out["instances"]
                cases.append({
                    "source": name, "file_name": os.path.relpath(record["file_name"], tree),
                    "seed": seed, "keep_rank": keep_rank, "image": out["image"].half(),
                    "image_shape": list(inst.image_size),
                    "ins_ids": inst.ins_ids.tolist() if inst.has("ins_ids") else [],
                    "class_ranks": [classes.index(c) for c in inst.gt_classes.tolist()],
                    "masks": torch.as_tensor(inst.gt_masks).bool().clone()})
        print(f"{name}: {sum(c['source'] == name for c in cases)} processed images")
    files = {}
    for folder, _, names in os.walk(tree):
        for n in names:
            path = os.path.join(folder, n)
            with open(path, "rb") as f:
                files[os.path.relpath(path, tree)] = f.read()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"original_commit": args.commit, "image_size": IMAGE_SIZE, "files": files,
                "cases": cases}, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB, {len(cases)} cases, "
          f"{len(files)} tree files)")


if __name__ == "__main__":
    main()
