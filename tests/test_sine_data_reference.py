# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's per-image sample processing against the original's (tests/data/sine_data_reference.pt,
written by ``dev/sine_data_reference.py`` with aim-uofa/SINE's own loaders, dataset classes'
``process_img_dict``, ``build_augmentation`` and ``dino_transform``).

The tree's files are restored from the reference, read with our readers, and every record is
processed by ``InContextSource.process`` with ``RandomState(seed)`` (the original: numpy's global
generator after ``np.random.seed(seed)``), keeping the same classes. Augmented size, instance ids,
classes (as ranks among the record's classes), masks must be identical; the image within 2e-3
(the reference stores it in float16).
"""

import os

import numpy as np
import pytest
import torch

from diffews.data.datasets.sine_instances import load_instances
from diffews.data.datasets.sine_objects365 import load_objects365_sam
from diffews.data.datasets.sine_panoptic import load_panoptic
from diffews.data.incontext import AugmentSettings, InContextSource

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "sine_data_reference.pt")
LOADERS = {"sine_coco_panoptic_train": load_panoptic, "sine_ade20k_panoptic_train": load_panoptic,
           "sine_coco_instance_train": load_instances,
           "sine_ade20k_instance_train": load_instances, "sine_paco_lvis_train": load_instances,
           "sine_o365_sam_train": load_objects365_sam}


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    ref = torch.load(REFERENCE, weights_only=True)
    root = tmp_path_factory.mktemp("sine_ref_tree")
    for rel, data in ref["files"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    sources = {}
    for name, loader in LOADERS.items():
        records = loader(name, str(root))
        task = "panoptic" if "panoptic" in name else "instance"
        source = InContextSource(name, AugmentSettings(image_size=ref["image_size"]), task,
                                 records)
        sources[name] = (source, {os.path.relpath(r["file_name"], root): r for r in records})
    return ref, sources


def _classes(record):
    items = record.get("segments_info", record.get("annotations"))
    return sorted({x["category_id"] for x in items})


def test_every_source_and_record_is_covered(replay):
    ref, _ = replay
    assert {c["source"] for c in ref["cases"]} == set(LOADERS)
    assert len(ref["cases"]) == 72 and os.path.getsize(REFERENCE) < 1024 * 1024
    assert any(c["keep_rank"] == [0] for c in ref["cases"])


@pytest.mark.parametrize("source_name", list(LOADERS))
def test_processing_matches_original(replay, source_name):
    ref, sources = replay
    source, records = sources[source_name]
    cases = [c for c in ref["cases"] if c["source"] == source_name]
    flipped_or_cropped = 0
    for case in cases:
        record = records[case["file_name"]]
        classes = _classes(record)
        keep = [classes[r] for r in case["keep_rank"]]
        out = source.process(dict(record), np.random.RandomState(case["seed"]), keep)
        inst = out["instances"]
        where = (source_name, case["file_name"], case["seed"])
        assert list(inst.image_size) == case["image_shape"], where
        assert inst.ins_ids.tolist() == case["ins_ids"], where
        assert [classes.index(c) for c in inst.gt_classes.tolist()] == case["class_ranks"], where
        assert inst.gt_masks.shape == case["masks"].shape, where
        assert torch.equal(inst.gt_masks, case["masks"]), where
        assert (out["image"] - case["image"].float()).abs().max() <= 2e-3, where
        flipped_or_cropped += case["image_shape"] != [24, 32]
    assert flipped_or_cropped  # the draws changed the geometry in some case


def test_a_different_draw_does_not_match(replay):
    """The comparison sees the augmentation: another seed gives other masks or sizes."""
    ref, sources = replay
    case = next(c for c in ref["cases"] if c["source"] == "sine_coco_instance_train"
                and c["ins_ids"])
    source, records = sources["sine_coco_instance_train"]
    record = records[case["file_name"]]
    classes = _classes(record)
    keep = [classes[r] for r in case["keep_rank"]]
    differs = 0
    for seed in range(100, 105):
        out = source.process(dict(record), np.random.RandomState(seed), keep)
        same = (list(out["instances"].image_size) == case["image_shape"]
                and out["instances"].gt_masks.shape == case["masks"].shape
                and torch.equal(out["instances"].gt_masks, case["masks"]))
        differs += not same
    assert differs >= 4


def test_paco_with_coco_mask_rule_does_not_match(replay):
    """PACO's builder rasterises before dropping empty instances; with COCO's rule (polygons
    kept until the end) a 1-pixel part that a downscale leaves empty stays: a mismatch."""
    ref, sources = replay
    _, records = sources["sine_paco_lvis_train"]
    source = InContextSource("sine_paco_lvis_train", AugmentSettings(image_size=ref["image_size"]),
                             "instance", list(records.values()), mask_format="auto")
    mismatches = 0
    for case in (c for c in ref["cases"] if c["source"] == "sine_paco_lvis_train"):
        record = records[case["file_name"]]
        classes = _classes(record)
        out = source.process(dict(record), np.random.RandomState(case["seed"]),
                             [classes[r] for r in case["keep_rank"]])
        mismatches += out["instances"].ins_ids.tolist() != case["ins_ids"]
    assert mismatches >= 1
