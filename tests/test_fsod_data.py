# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""FSOD data (TFA protocol): registration, support sampling, test sets, missing-data errors."""

import contextlib
import io
import os
import shutil

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

import diffews  # noqa: F401  (registers the datasets)
from diffews import add_diffews_config
from diffews.data.datasets import coco_fsod, coco_fsod_reader
from diffews.data.datasets.roots import MissingDataError
from tests._fsod_trees import NOVEL, split_path, write_fsod_tree

NOVEL_IDS = [i for i, _ in NOVEL]


@pytest.fixture(autouse=True)
def fresh_registration():
    coco_fsod.register_all_fsod()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    info = write_fsod_tree(str(tmp_path))
    info["root"] = str(tmp_path)
    return info


def tfa_reference(root, shot, seed, np_seed):
    """TFA fsdet/data/meta_coco.py load_coco_json, shots branch, written from its rules: per
    class (novel order) a pycocotools COCO of the class file, images sorted by id, one record per
    annotation; more than K records -> np.random.choice(dicts, K, replace=False) on the global
    RNG, seeded once beforehand (detectron2 default_setup -> seed_all_rng(cfg.SEED))."""
    np.random.seed(np_seed)
    folder = os.path.join(root, "cocosplit", *([f"seed{seed}"] if seed else []))
    out = []
    for idx, (cid, name) in enumerate(NOVEL):
        with contextlib.redirect_stdout(io.StringIO()):
            api = COCO(os.path.join(folder, f"full_box_{shot}shot_{name}_trainval.json"))
        dicts = []
        for img_id in sorted(api.imgs.keys()):
            img = api.imgs[img_id]
            for ann in api.imgToAnns[img_id]:
                dicts.append({"file_name": os.path.join(root, "coco", "trainval2014",
                                                        img["file_name"]),
                              "image_id": img_id, "ann_id": ann["id"], "category_id": idx})
        if len(dicts) > shot:
            dicts = list(np.random.choice(np.array(dicts, dtype=object), shot, replace=False))
        out.extend(dicts)
    return out


def summary(records):
    return [{"file_name": r["file_name"], "image_id": r["image_id"],
             "category_id": r["annotations"][0]["category_id"]} for r in records]


def test_names_and_metadata():
    names = set(DatasetCatalog.list())
    for k in (1, 2, 3, 5, 10, 30):
        assert f"coco_trainval_novel_{k}shot" in names
        assert f"coco_trainval_novel_{k}shot_seed0" not in names  # TFA: seed 0 has no suffix
        assert all(f"coco_trainval_novel_{k}shot_seed{s}" in names for s in range(1, 10))
    for name in ("coco_test_novel", "VOCSegm_val_novel"):
        m = MetadataCatalog.get(name)
        assert m.evaluator_type == "coco" and len(m.thing_classes) == 20
        assert m.thing_dataset_id_to_contiguous_id == {
            (c if name == "coco_test_novel" else i + 1): i for i, c in enumerate(NOVEL_IDS)}
    assert MetadataCatalog.get("coco_test_novel").eval_category_ids == NOVEL_IDS
    assert MetadataCatalog.get("coco_trainval_novel_5shot_seed3").thing_classes[17] == \
        "potted plant"
    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_list(["TEST.FSOD.SHOT", 5, "TEST.FSOD.SEED", 3, "TEST.FSOD.TEST_SET", "voc"])
    assert coco_fsod.fsod_dataset_names(cfg) == ("coco_trainval_novel_5shot_seed3",
                                                 "VOCSegm_val_novel")
    cfg.merge_from_list(["TEST.FSOD.SHOT", 4])
    with pytest.raises(ValueError, match="shot must be one of"):
        coco_fsod.fsod_dataset_names(cfg)


@pytest.mark.parametrize("np_seed", [0, 3])
def test_seed0_support_sampling_follows_tfa(tree, np_seed):
    root = tree["root"]
    for shot in (1, 5):
        ours = coco_fsod_reader.load_fsod_support(shot, 0, root, sample_seed=np_seed)
        ref = tfa_reference(root, shot, 0, np_seed)
        assert summary(ours) == [{k: r[k] for k in ("file_name", "image_id", "category_id")}
                                 for r in ref]
        assert len(ours) == 20 * shot
        # one record per annotation: each drawn record holds exactly the annotation TFA drew
        for rec, r in zip(ours, ref):
            with contextlib.redirect_stdout(io.StringIO()):
                api = COCO(split_path(root, shot, 0, NOVEL[r["category_id"]][1]))
            ann = api.anns[r["ann_id"]]
            (obj,) = rec["annotations"]
            assert obj["bbox"] == ann["bbox"] and obj["segmentation"] == ann["segmentation"]
            assert obj["iscrowd"] == ann["iscrowd"] and obj["bbox_mode"] == 1  # XYWH_ABS
    # the draw really happened (seed-0 files hold more than K for 2 classes in 3)
    with contextlib.redirect_stdout(io.StringIO()):
        n = len(COCO(split_path(root, 1, 0, NOVEL[1][1])).anns)
    assert n > 1
    if np_seed == 0:  # the registered name is the sample_seed 0 draw
        assert summary(DatasetCatalog.get("coco_trainval_novel_5shot")) == summary(
            coco_fsod_reader.load_fsod_support(5, 0, root, sample_seed=0))


def test_other_seeds_hold_exactly_k(tree):
    ours = DatasetCatalog.get("coco_trainval_novel_5shot_seed1")
    ref = tfa_reference(tree["root"], 5, 1, np_seed=123)  # no draw: the seed does not matter
    assert summary(ours) == [{k: r[k] for k in ("file_name", "image_id", "category_id")}
                             for r in ref]
    assert [r["annotations"][0]["category_id"] for r in ours] == sorted(list(range(20)) * 5)


def test_sine_seed0_folder_is_read(tree):
    root = tree["root"]
    before = summary(coco_fsod_reader.load_fsod_support(1, 0, root))
    os.makedirs(os.path.join(root, "cocosplit", "seed0"))
    for (shot, seed, name), path in tree["splits"].items():
        if seed == 0:
            shutil.move(path, os.path.join(root, "cocosplit", "seed0", os.path.basename(path)))
    assert summary(coco_fsod_reader.load_fsod_support(1, 0, root)) == before


def test_test_sets(tree):
    root = tree["root"]
    recs = DatasetCatalog.get("coco_test_novel")
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(tree["test_json"])
    assert [r["image_id"] for r in recs] == sorted(api.imgs)  # every image, even without novel
    for r in recs:
        assert r["file_name"] == os.path.join(root, "coco", "val2014",
                                              api.imgs[r["image_id"]]["file_name"])
        novel = [a for a in api.imgToAnns[r["image_id"]] if a["category_id"] in NOVEL_IDS]
        assert [a["category_id"] for a in r["annotations"]] == [
            NOVEL_IDS.index(a["category_id"]) for a in novel]
        assert [a["segmentation"] for a in r["annotations"]] == [a["segmentation"] for a in novel]
    assert any(not r["annotations"] for r in recs)
    assert any(a["iscrowd"] for r in recs for a in r["annotations"])
    m = MetadataCatalog.get("coco_test_novel")
    assert m.json_file == tree["test_json"] and m.image_root == os.path.join(root, "coco",
                                                                             "val2014")
    voc = DatasetCatalog.get("VOCSegm_val_novel")
    names = [[m.thing_classes[a["category_id"]] for a in r["annotations"]] for r in voc]
    assert names == [["person", "couch"], ["airplane", "tv"], ["cow", "cow"]]


def test_voc_categories_matched_by_name(tmp_path):
    info = write_fsod_tree(str(tmp_path), shots=(1,), seeds=(0,), voc_order="alphabetical")
    recs = coco_fsod_reader.load_fsod_test("VOCSegm_val_novel", str(tmp_path))
    m = MetadataCatalog.get("VOCSegm_val_novel")
    names = [[m.thing_classes[a["category_id"]] for a in r["annotations"]] for r in recs]
    assert names == [["person", "couch"], ["airplane", "tv"], ["cow", "cow"]]
    assert m.thing_dataset_id_to_contiguous_id[1] == NOVEL_IDS.index(5)  # aeroplane first
    assert info["voc_json"] == m.json_file


def _one_line(err, path):
    msg = str(err.value)
    assert path in msg and "datasets/README.md" in msg and "\n" not in msg


def test_missing_split_file_or_class_is_a_one_line_error(tree):
    root = tree["root"]
    path = split_path(root, 5, 1, "dining table")
    os.remove(path)
    with pytest.raises(MissingDataError) as err:
        DatasetCatalog.get("coco_trainval_novel_5shot_seed1")
    _one_line(err, path)
    assert err.value.path == path
    with pytest.raises(MissingDataError) as err:
        coco_fsod_reader.load_fsod_support(10, 0, root)  # a shot that was never written
    _one_line(err, split_path(root, 10, 0, "person"))
    assert coco_fsod.check_fsod(root, shots=(1, 5), seeds=(0, 1)) == [path]
    # a test json without one of the novel classes
    import json

    data = json.load(open(tree["test_json"]))
    data["categories"] = [c for c in data["categories"] if c["id"] != 64]
    json.dump(data, open(tree["test_json"], "w"))
    with pytest.raises(ValueError) as err:
        DatasetCatalog.get("coco_test_novel")
    _one_line(err, tree["test_json"])
    assert "[64]" in str(err.value)
    os.remove(tree["voc_json"])
    with pytest.raises(MissingDataError) as err:
        DatasetCatalog.get("VOCSegm_val_novel")
    _one_line(err, tree["voc_json"])


def test_check_fsod_and_tool(tree, capsys):
    from tools.check_datasets import main

    root = tree["root"]
    assert coco_fsod.check_fsod(root, shots=(1, 5), seeds=(0, 1)) == []
    img = os.path.join(root, "coco", "val2014", "COCO_val2014_000000000102.jpg")
    os.remove(img)
    assert coco_fsod.check_fsod(root, shots=(1, 5), seeds=(0, 1)) == [img]
    assert main(["--benchmark", "fsod", "--root", root]) == 1  # shots 2, 3, 10, 30 are absent
    out = capsys.readouterr().out
    assert "fsod:" in out and split_path(root, 30, 9, "tv") in out and img in out


def test_annotation_mask_matches_pycocotools(tree):
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(tree["test_json"])
    kinds = set()
    for ann in api.anns.values():
        img = api.imgs[ann["image_id"]]
        segm = ann["segmentation"]
        kinds.add("poly" if isinstance(segm, list) else type(segm["counts"]).__name__)
        ours = coco_fsod_reader.annotation_mask(ann, img["height"], img["width"])
        assert ours.dtype == bool and np.array_equal(ours, api.annToMask(ann).astype(bool))
    assert kinds == {"poly", "str", "list"}
