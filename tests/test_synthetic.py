# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The built-in synthetic few-shot benchmark: registration, rendering, episodes."""

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from diffews.data.datasets import synthetic
from diffews.data.datasets.synthetic import (
    SYNTHETIC_TEST_CLASSES,
    SYNTHETIC_TRAIN_CLASSES,
    make_synthetic_episodes,
    register_synthetic,
    render,
)
from diffews.data.records import load_sample


@pytest.fixture(scope="module")
def records():
    register_synthetic(64)
    return {s: DatasetCatalog.get(f"synthetic_fss_{s}") for s in ("train", "test")}


def test_registration_and_metadata(records):
    for split, classes in (("train", SYNTHETIC_TRAIN_CLASSES), ("test", SYNTHETIC_TEST_CLASSES)):
        meta = MetadataCatalog.get(f"synthetic_fss_{split}")
        assert meta.benchmark == "synthetic" and meta.fold == 0 and meta.split == split
        assert meta.class_ids == classes and len(meta.thing_classes) == len(classes)
        assert meta.label_format == "synthetic" and meta.ignore_boundary is False
        assert meta.evaluator_type == "fss" and meta.ignore_label == 255
        recs = records[split]
        assert len(recs) == len(classes) * synthetic.IMAGES_PER_CLASS
        assert len({r["image_id"] for r in recs}) == len(recs)
        for r in recs:
            assert r["classes"][0] in classes and len(r["classes"]) == 1
            assert r["height"] == r["width"] == r["synthetic"]["size"] == 64
            d = r["synthetic"]["distractor"]
            assert d is None or (d in classes and d != r["classes"][0])
    assert MetadataCatalog.get("synthetic_fss_test").num_episodes == synthetic.TEST_EPISODES


def test_disjoint_classes_of_seen_shapes_and_textures():
    assert len(SYNTHETIC_TRAIN_CLASSES) == 16 and len(SYNTHETIC_TEST_CLASSES) == 8
    assert not set(SYNTHETIC_TRAIN_CLASSES) & set(SYNTHETIC_TEST_CLASSES)
    n_tex = len(synthetic.TEXTURES)
    train_shapes = {c // n_tex for c in SYNTHETIC_TRAIN_CLASSES}
    train_textures = {c % n_tex for c in SYNTHETIC_TRAIN_CLASSES}
    for c in SYNTHETIC_TEST_CLASSES:
        assert c // n_tex in train_shapes and c % n_tex in train_textures


def test_render_deterministic_and_labels(records):
    for r in records["test"][::37] + records["train"][::97]:
        img, label = render(r, r["classes"][0])
        img2, label2 = render(dict(r), r["classes"][0])
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(label, label2)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1}
        assert 0.02 < label.mean() < 0.5
        # the label's outline is a colour edge: crossing it changes the colour far more than a
        # step inside the background does
        im = img.astype(int)
        step = np.abs(im[:, 1:] - im[:, :-1]).sum(2)
        crossing = label[:, 1:] != label[:, :-1]
        in_bg = (label[:, 1:] == 0) & (label[:, :-1] == 0)
        if r["synthetic"]["distractor"] is None:
            assert np.median(step[crossing]) > 4 * np.median(step[in_bg])
        # another class absent from the image gives an empty label
        absent = next(c for c in SYNTHETIC_TEST_CLASSES + SYNTHETIC_TRAIN_CLASSES
                      if c not in (r["classes"][0], r["synthetic"]["distractor"]))
        assert render(r, absent)[1].sum() == 0
    # load_sample dispatches here
    r = records["test"][0]
    np.testing.assert_array_equal(load_sample(r, r["classes"][0], "synthetic")[1],
                                  render(r, r["classes"][0])[1])


def test_distractor_in_about_half(records):
    recs = records["train"] + records["test"]
    with_d = [r for r in recs if r["synthetic"]["distractor"] is not None]
    assert 0.4 < len(with_d) / len(recs) < 0.6
    for r in with_d[::25]:
        _, main = render(r, r["classes"][0])
        _, other = render(r, r["synthetic"]["distractor"])
        assert other.sum() > 0 and not (main & other).any()  # two objects, labelled apart
        no_d = dict(r, synthetic=dict(r["synthetic"], distractor=None))
        np.testing.assert_array_equal(render(no_d, r["classes"][0])[1], main)  # drawn underneath


def test_size_is_a_parameter():
    recs = synthetic.synthetic_records("test", size=32)
    img, label = render(recs[0], recs[0]["classes"][0])
    assert img.shape == (32, 32, 3) and label.shape == (32, 32) and label.sum() > 0
    ids64 = [r["image_id"] for r in synthetic.synthetic_records("test")]
    assert [r["image_id"] for r in recs] == ids64


def test_episodes_deterministic_and_valid(records):
    by_id = {r["image_id"]: r for r in records["test"]}
    eps = make_synthetic_episodes("test", shot=5, seed=0)
    assert eps == make_synthetic_episodes("test", shot=5, seed=0)
    assert eps != make_synthetic_episodes("test", shot=5, seed=1)
    assert len(eps) == synthetic.TEST_EPISODES
    assert len(make_synthetic_episodes("train", shot=1, num_episodes=7)) == 7
    assert {e["class_id"] for e in eps} == set(SYNTHETIC_TEST_CLASSES)
    for e in eps:
        assert len(e["supports"]) == 5 and len(set(e["supports"])) == 5
        assert e["query"] not in e["supports"]
        for i in [e["query"]] + e["supports"]:
            assert by_id[i]["classes"] == [e["class_id"]]
    with pytest.raises(ValueError):
        make_synthetic_episodes("val", shot=1)
    with pytest.raises(ValueError):
        make_synthetic_episodes("test", shot=0)
