# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""In-context samples from few-shot datasets (diffews/data/incontext/fss_source.py): the
synthetic benchmark and a custom semantic-label layout, checked against the masks the renderer
or the label files give, with the augmentation made the identity (scale 1, no flip)."""

import numpy as np
import pytest
import torch

import diffews  # noqa: F401  (registers the datasets)
from diffews.data.datasets.custom import register_custom_fss
from diffews.data.datasets.synthetic import render, synthetic_records
from diffews.data.incontext import (AugmentSettings, FSSRecordSource, InContextTrainDataset,
                                    make_source)
from diffews.data.incontext.augment import IMAGENET_MEAN, IMAGENET_STD
from tests._custom_trees import write_semseg_tree

IDENTITY = dict(image_size=64, min_scale=1.0, max_scale=1.0, flip="none")


def _records():
    return {r["image_id"]: r for r in synthetic_records("train")}


def _expected(record):
    """The classes shown in a synthetic image (the labelled one and its distractor, if visible)
    and their masks, from the renderer."""
    classes = [record["synthetic"]["class"]]
    if record["synthetic"]["distractor"] is not None:
        classes.append(record["synthetic"]["distractor"])
    out = {}
    for c in sorted(classes):
        image, label = render(record, c)
        if label.any():
            out[c] = label.astype(bool)
    return image, out


def _check_side(side, records):
    record = records[side["image_id"]]
    image, masks = _expected(record)
    inst = side["instances"]
    assert inst.gt_classes.tolist() == sorted(masks)  # class order
    for c, m in zip(inst.gt_classes.tolist(), inst.gt_masks):
        assert torch.equal(m, torch.from_numpy(masks[c]))
    unit = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    norm = (unit - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None,
                                                                                           None]
    torch.testing.assert_close(side["image"], norm)
    return record


def test_crop_pairs_share_ids_and_segments():
    src = FSSRecordSource("synthetic_fss_train", AugmentSettings(crop_ratio=1.0, **IDENTITY))
    records, rng = _records(), np.random.RandomState(0)
    with_distractor = 0
    for _ in range(12):
        s = src.draw(rng)
        assert s["crop_pair"] and s["task"] == "panoptic"
        assert s["ref_dict"]["image_id"] == s["tar_dict"]["image_id"]
        ref = _check_side(s["ref_dict"], records)
        _check_side(s["tar_dict"], records)
        assert torch.equal(s["ref_dict"]["instances"].ins_ids, s["tar_dict"]["instances"].ins_ids)
        with_distractor += len(s["ref_dict"]["instances"]) == 2
        assert ref["classes"][0] in s["ref_dict"]["instances"].gt_classes.tolist()
    assert with_distractor  # the distractor object is a segment of the reference too


def test_other_images_share_no_id_and_keep_reference_classes():
    src = FSSRecordSource("synthetic_fss_train", AugmentSettings(crop_ratio=0.0, **IDENTITY))
    records, rng = _records(), np.random.RandomState(1)
    for _ in range(12):
        s = src.draw(rng)
        ref, tar = s["ref_dict"], s["tar_dict"]
        assert ref["image_id"] != tar["image_id"] and not s["crop_pair"]
        _check_side(ref, records)
        tar_classes = tar["instances"].gt_classes.tolist()
        assert set(tar_classes) <= set(ref["instances"].gt_classes.tolist())
        assert not set(tar["instances"].ins_ids.tolist()) & set(ref["instances"].ins_ids.tolist())
        record = records[tar["image_id"]]
        for c, m in zip(tar_classes, tar["instances"].gt_masks):
            assert torch.equal(m, torch.from_numpy(render(record, c)[1].astype(bool)))


def test_custom_semseg_layout_gives_one_segment_per_class(tmp_path):
    label = np.zeros((20, 24), np.uint8)
    label[2:9, 3:12] = 1     # class 0 (offset 1)
    label[10:18, 6:20] = 2   # class 1
    label[0, 0] = 255        # ignore: background here
    other = np.zeros((20, 24), np.uint8)
    other[5:15, 5:15] = 2
    write_semseg_tree(str(tmp_path), ["cat", "dog"], [label, label, other])  # cat: 2 images
    train, _ = register_custom_fss("sine_semseg_tiny", "semseg", str(tmp_path))
    # scale 1: the 24 px wide image fits the 28 px working size (x 28 / 24)
    src = make_source(train, AugmentSettings(crop_ratio=1.0, image_size=28, min_scale=1.0,
                                             max_scale=1.0, flip="none"), "panoptic")
    assert isinstance(src, FSSRecordSource)
    rng = np.random.RandomState(0)
    seen = False
    for _ in range(10):
        s = src.draw(rng)
        if s["ref_dict"]["image_id"] != "img_000":
            continue
        seen = True
        inst = s["ref_dict"]["instances"]
        assert inst.gt_classes.tolist() == [0, 1]
        assert inst.image_size == (23, 28)  # 20 x 24 scaled by 28 / 24, rounded
        assert inst.gt_masks.shape == (2, 28, 28) and not inst.gt_masks[:, 23:].any()
        assert inst.ins_ids[0] != inst.ins_ids[1]
        assert torch.equal(inst.ins_ids, s["tar_dict"]["instances"].ins_ids)
        assert inst.gt_masks[0, 3:9, 4:13].all() and not inst.gt_masks[0, 0, 0]
    assert seen


def test_fss_dataset_as_instance_source_is_refused():
    with pytest.raises(ValueError, match="list it under DATASETS.SINE_TRAIN.PANOPTIC"):
        make_source("synthetic_fss_train", AugmentSettings(**IDENTITY), "instance")
    mixture = InContextTrainDataset({"panoptic": [("synthetic_fss_train", 1.0)]},
                                    {"panoptic": 2.0, "instance": 5.0},
                                    AugmentSettings(**IDENTITY), seed=0)
    sample = next(iter(mixture))
    assert sample["source"] == "synthetic_fss_train" and len(sample["ref_dict"]["instances"])
