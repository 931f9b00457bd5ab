# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Dataset registration: names, metadata, class/fold definitions, records, missing-data errors."""

import os
import pickle

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import diffews  # noqa: F401  (registers the datasets)
from diffews.data import load_sample
from diffews.data.datasets import coco20i, fss1000, lvis92i, pascal5i, split_files
from tests._fss_trees import FSS_SPLITS, register_all, write_coco_tree, write_fss_tree
from tests._fss_trees import write_lvis_tree, write_pascal_tree


@pytest.fixture(autouse=True)
def fresh_registration():
    """Loading a tree updates metadata (e.g. FSS class ids); start every test from scratch."""
    register_all()


@pytest.fixture
def tree_env(tmp_path, monkeypatch):
    """An empty datasets root whose split lists are read from the tree (DIFFEWS_SPLITS=tree)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setenv("DIFFEWS_SPLITS", "tree")
    return tmp_path


def test_names_and_metadata():
    names = set(DatasetCatalog.list())
    for f in range(4):
        for s in ("train", "test"):
            assert f"coco20i_fold{f}_{s}" in names and f"pascal5i_fold{f}_{s}" in names
    for f in range(10):
        assert {f"lvis92i_fold{f}_train", f"lvis92i_fold{f}_test",
                f"lvis92i_fold{f}_5shot_test"} <= names
    assert {"fss1000_train", "fss1000_test"} <= names
    m = MetadataCatalog.get("coco20i_fold2_test")
    assert (m.benchmark, m.fold, m.split, m.label_format, m.ignore_boundary, m.num_episodes,
            m.evaluator_type, m.ignore_label) == ("coco", 2, "test", "class_value", False, 1000,
                                                  "fss", 255)
    assert m.thing_classes[0] == "car"  # class 2
    p = MetadataCatalog.get("pascal5i_fold1_test")
    assert p.ignore_boundary is True and p.class_ids == [5, 6, 7, 8, 9]
    assert p.thing_classes == ["bus", "car", "cat", "chair", "cow"]
    assert MetadataCatalog.get("fss1000_test").class_ids == list(range(760, 1000))
    assert MetadataCatalog.get("fss1000_train").class_ids == list(range(520))
    lv = MetadataCatalog.get("lvis92i_fold3_5shot_test")
    assert (lv.shot_filter, lv.label_format, lv.num_episodes) == (5, "polygons", 2300)


def test_fold_class_definitions():
    for f in range(4):
        test = coco20i.coco20i_class_ids(f, "test")
        assert test == list(range(f, 80, 4))  # interleaved
        assert sorted(test + coco20i.coco20i_class_ids(f, "train")) == list(range(80))
        assert pascal5i.pascal5i_class_ids(f, "test") == list(range(5 * f, 5 * f + 5))
        assert len(pascal5i.pascal5i_class_ids(f, "train")) == 15
    with pytest.raises(ValueError, match="fold"):
        coco20i.coco20i_class_ids(4, "test")


def test_shipped_coco_splits_match_folds(tmp_path, monkeypatch):
    """Shipped JSON lists: 80 keys, the val file of fold f lists exactly f's 20 test classes."""
    monkeypatch.delenv("DIFFEWS_SPLITS", raising=False)
    for f in range(4):
        cw = coco20i.load_coco20i_classwise(f, "test", str(tmp_path))
        assert list(cw) == list(range(80))
        assert [c for c in cw if cw[c]] == coco20i.coco20i_class_ids(f, "test")
    cw = coco20i.load_coco20i_classwise(0, "test", str(tmp_path))
    assert cw[0][0] == "val2014/COCO_val2014_000000429717.jpg"
    # records from the shipped lists need only the two folders to exist
    for d in ("val2014", "annotations/val2014"):
        os.makedirs(tmp_path / "COCO2014" / d)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    records = DatasetCatalog.get("coco20i_fold0_test")
    assert len(records) == len({n for c in cw for n in cw[c]}) == 26052
    r = records[0]
    assert r["image_id"] == "COCO_val2014_000000000042"
    assert r["file_name"] == str(tmp_path / "COCO2014/val2014/COCO_val2014_000000000042.jpg")
    assert r["mask_file"] == str(
        tmp_path / "COCO2014/annotations/val2014/COCO_val2014_000000000042.png")


def test_coco_tree_records(tree_env):
    info = write_coco_tree(str(tree_env), fold=1)
    records = DatasetCatalog.get("coco20i_fold1_test")
    names = sorted({n for v in info["val"].values() for n in v})
    assert [r["image_id"] for r in records] == [
        os.path.splitext(os.path.basename(n))[0] for n in names]
    for r in records:
        expect = sorted(c for c, v in info["val"].items() if f"val2014/{r['image_id']}.jpg" in v)
        assert r["classes"] == expect and all(c % 4 == 1 for c in r["classes"])
        image, label = load_sample(r, r["classes"][0], "class_value")
        assert image.shape == label.shape + (3,) and label.max() == 1
    train = DatasetCatalog.get("coco20i_fold1_train")
    assert all(c % 4 != 1 for r in train for c in r["classes"])
    assert coco20i.check_coco20i(str(tree_env), folds=[1]) == []
    missing = coco20i.check_coco20i(str(tree_env))  # the other folds' split lists are missing
    assert str(tree_env / "COCO2014/splits/val/fold0.pkl") in missing and len(missing) == 6


def test_pascal_tree_records(tree_env):
    write_pascal_tree(str(tree_env))
    records = DatasetCatalog.get("pascal5i_fold2_test")
    assert records and all(set(r["classes"]) <= {10, 11, 12, 13, 14} for r in records)
    r = records[0]
    image, label = load_sample(r, r["classes"][0], "class_value", ignore_boundary=True)
    assert set(np.unique(label)) == {0, 1, 255}
    train = DatasetCatalog.get("pascal5i_fold2_train")
    assert {c for r in train for c in r["classes"]} == set(range(20)) - set(range(10, 15))
    assert pascal5i.check_pascal5i(str(tree_env)) == []
    os.remove(tree_env / "VOC2012/SegmentationClassAug" / (r["image_id"] + ".png"))
    assert pascal5i.check_pascal5i(str(tree_env)) == [r["mask_file"]]


@pytest.mark.parametrize("hsnet_layout", [False, True])
def test_fss_tree_records(tree_env, hsnet_layout):
    write_fss_tree(str(tree_env), hsnet_layout=hsnet_layout)
    records = DatasetCatalog.get("fss1000_test")
    cats = sorted(FSS_SPLITS["test"])  # apple, bus, zebra -> 760, 761, 762
    assert len(records) == 10 * len(cats)
    # string order within a class: 1, 10, 2, ...
    assert [r["image_id"] for r in records[:3]] == ["apple/1", "apple/10", "apple/2"]
    assert {r["image_id"].split("/")[0]: r["classes"][0] for r in records} == {
        c: 760 + i for i, c in enumerate(cats)}
    meta = MetadataCatalog.get("fss1000_test")
    assert meta.class_ids == [760, 761, 762] and meta.thing_classes == cats
    assert meta.num_episodes == 30
    _, label = load_sample(records[0], 760, "threshold128")
    assert label[0].max() == 0 and label[1].min() == 1  # 127 -> bg, 128 -> fg
    assert [r["classes"][0] for r in DatasetCatalog.get("fss1000_train")][::10] == [0, 1]
    assert fss1000.check_fss1000(str(tree_env)) == []


def test_lvis_tree_records_and_filter(tree_env):
    info = write_lvis_tree(str(tree_env))
    val = info["val"]
    ids1 = [c for c in val if len(val[c]) > 1]
    ids5 = [c for c in val if len(val[c]) > 5]
    for fold in range(10):
        assert lvis92i.lvis92i_fold_classes(val, fold, 1) == [ids1[fold + 10 * v]
                                                             for v in range(len(ids1) // 10)]
    assert len(ids1) // 10 == 2 and len(ids5) // 10 == 1
    records = DatasetCatalog.get("lvis92i_fold3_test")
    meta = MetadataCatalog.get("lvis92i_fold3_test")
    assert meta.class_ids == [0, 1] and meta.lvis_category_ids == [ids1[3], ids1[13]]
    for r in records:
        for local in r["classes"]:
            cat = meta.lvis_category_ids[local]
            assert f"val2017/{r['image_id']}.jpg" in val[cat]
            _, label = load_sample(r, local, "polygons")
            assert label[:10].any() and label[10:].any()  # the union of both instances
    assert MetadataCatalog.get(lvis92i.lvis92i_test_name(3, 5)).get("shot_filter") == 5
    DatasetCatalog.get("lvis92i_fold3_5shot_test")
    assert MetadataCatalog.get("lvis92i_fold3_5shot_test").lvis_category_ids == [ids5[3]]
    train = DatasetCatalog.get("lvis92i_fold3_train")
    train_classes = {c for r in train for c in r["classes"]}
    assert train_classes.isdisjoint({ids1[3], ids1[13]})
    assert all(len(info["train"][c]) > 1 for c in train_classes)
    assert lvis92i.lvis92i_test_name(0, 3) == "lvis92i_fold0_3shot_test"
    assert "lvis92i_fold0_3shot_test" in DatasetCatalog.list()
    assert lvis92i.check_lvis92i(str(tree_env)) == []


@pytest.mark.parametrize("name,missing", [
    ("coco20i_fold0_test", "COCO2014/val2014"),
    ("pascal5i_fold0_test", "VOC2012/JPEGImages"),
    ("fss1000_test", "FSS-1000"),
    ("lvis92i_fold0_test", "LVIS/coco"),
])
def test_missing_tree_errors(tmp_path, monkeypatch, name, missing):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.delenv("DIFFEWS_SPLITS", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    assert str(tmp_path / missing) in str(e.value) and "datasets/README.md" in str(e.value)


def test_incomplete_tree_reports_missing_files(tree_env):
    write_fss_tree(str(tree_env))
    os.remove(tree_env / "FSS-1000/data/bus/1.png")
    import shutil

    shutil.rmtree(tree_env / "FSS-1000/data/kite")  # val only: not checked
    shutil.rmtree(tree_env / "FSS-1000/data/cat")
    missing = fss1000.check_fss1000(str(tree_env), sample=30)
    assert missing == sorted([str(tree_env / "FSS-1000/data/bus/1.png"),
                              str(tree_env / "FSS-1000/data/cat")])
    with pytest.raises(FileNotFoundError, match="FSS-1000/data/cat"):
        DatasetCatalog.get("fss1000_train")


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({0: [Evil()]}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing to load global"):
        split_files.load_pickle(str(path))
    path.write_bytes(pickle.dumps({0: ["a", 1, 2.5, (1, 2), {3}], "k": {"x": None}}))
    assert split_files.load_pickle(str(path)) == {0: ["a", 1, 2.5, (1, 2), {3}], "k": {"x": None}}


def test_registration_reads_no_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "does_not_exist"))
    coco20i.register_all_coco20i()
    pascal5i.register_all_pascal5i()
    fss1000.register_all_fss1000()
    lvis92i.register_all_lvis92i()
    assert not (tmp_path / "does_not_exist").exists()
    assert MetadataCatalog.get("coco20i_fold0_test").class_ids == list(range(0, 80, 4))
