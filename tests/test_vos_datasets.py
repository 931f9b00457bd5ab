# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""VOS dataset readers, result writers, registration and tree checks on synthetic trees written
in the official DAVIS and YouTube-VOS layouts (tests/_vos_trees.py)."""

import os
import shutil
import zipfile

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import diffews  # noqa: F401  (registers the datasets)
from diffews.data.datasets import vos, vos_results
from diffews.data.datasets.roots import MissingDataError
from diffews.evaluation.davis_metrics import VOSEvaluationError
from diffews.evaluation.vos_evaluation import evaluate_davis, VOSEvaluator
from tests._vos_trees import palette_png, scene_sequences, write_davis_tree, write_ytvos_tree

@pytest.fixture
def trees(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return {"davis": write_davis_tree(str(tmp_path)), "ytvos": write_ytvos_tree(str(tmp_path)),
            "root": str(tmp_path)}


def test_registration_names_metadata_and_no_disk_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    vos.register_all_vos()  # reads nothing
    assert not (tmp_path / "empty").exists()
    for name in ("davis17_val", "davis17_test_dev", "davis16_val", "ytvos18_valid"):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "vos" and meta.ignore_label == 255
    assert MetadataCatalog.get("davis16_val").single_object is True
    assert MetadataCatalog.get("davis17_val").has_full_gt is True
    assert MetadataCatalog.get("ytvos18_valid").results_layout == "ytvos"
    with pytest.raises(MissingDataError, match="DAVIS17/trainval/ImageSets/2017/val.txt"):
        DatasetCatalog.get("davis17_val")
    with pytest.raises(VOSEvaluationError, match="no public ground truth"):
        VOSEvaluator("ytvos18_valid")
    assert VOSEvaluator("davis16_val").single_object is True


def test_davis_val_records(trees):
    seqs = scene_sequences()
    records = DatasetCatalog.get("davis17_val")
    assert [r["video"] for r in records] == sorted(seqs)
    by = {r["video"]: r for r in records}
    late = by["late-object"]
    assert late["frames"] == [f"{t:05d}" for t in range(5)]
    assert all(os.path.isfile(p) for p in late["file_names"] + late["annotation_files"])
    # semi-supervised val: only the first frame is given; ids 1 and 3 are in it, id 2 is not
    assert late["given_frames"] == [0] and late["objects"] == {1: 0, 3: 0}
    assert late["save_frames"] == list(range(5)) and late["merge_objects"] is False
    assert by["crossing"]["objects"] == {1: 0, 2: 0}
    assert Image.open(by["thin"]["file_names"][0]).size == (18, 30)  # each video its own size
    label = vos.read_annotation(by["crossing"], 3)
    assert (label == seqs["crossing"][3]).all()  # object 2 occludes object 1


def test_davis16_and_test_dev_records(trees):
    d16 = DatasetCatalog.get("davis16_val")
    assert [r["video"] for r in d16] == ["crossing", "thin"]
    crossing = d16[0]
    assert crossing["merge_objects"] and crossing["objects"] == {1: 0}
    assert set(np.unique(vos.read_annotation(crossing, 0)).tolist()) == {0, 1}
    (td,) = DatasetCatalog.get("davis17_test_dev")
    # test-dev gives every annotation on disk: object 2 first appears at frame 3
    assert td["given_frames"] == [0, 3] and td["objects"] == {1: 0, 2: 3}
    assert td["annotation_files"][1] is None and len(td["frames"]) == 6


def test_ytvos_records_all_frames_and_save_frames(trees):
    records = DatasetCatalog.get("ytvos18_valid")
    by = {r["video"]: r for r in records}
    b = by["b"]
    assert b["frames"] == [f"{t:05d}" for t in range(11)]  # every frame of valid_all_frames
    assert "valid_all_frames" in b["file_names"][1]
    assert b["given_frames"] == [0, 5] and b["objects"] == {1: 0, 2: 5}
    assert b["save_frames"] == [0, 5, 10]  # the frames meta.json lists
    assert by["a"]["objects"] == {1: 0}


def test_void_in_annotation_is_background(trees):
    record = DatasetCatalog.get("davis17_val")[0]
    path = record["annotation_files"][0]
    lab = np.array(Image.open(path))
    lab[0, 0] = 255
    palette_png(path, lab)
    assert np.array(Image.open(path))[0, 0] == 255
    assert vos.read_annotation(record, 0)[0, 0] == 0


def test_palette_and_davis_results_layout(tmp_path, trees):
    pal = vos_results.DAVIS_PALETTE  # PASCAL VOC colour map
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0] and pal[3].tolist() == [128, 128, 0]
    assert pal[8].tolist() == [64, 0, 0] and pal[255].tolist() == [224, 224, 192]
    records = DatasetCatalog.get("davis17_val")
    out = tmp_path / "out"
    for r in records:  # write the ground truth itself as results: a perfect score
        for t in r["save_frames"]:
            assert vos_results.write_result(r, t, vos.read_annotation(r, t), str(out), "davis")
    first = Image.open(out / "crossing" / "00001.png")
    assert first.mode == "P" and first.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert vos_results.missing_results(records, str(out), "davis") == []
    scores = evaluate_davis(os.path.join(trees["root"], "DAVIS17", "trainval"), str(out),
                            progress=False)
    assert scores.global_["J&F-Mean"] == 1.0 and len(scores.rows) == 2 + 3 + 1
    ids = np.array([[0, 255], [7, 200]])
    vos_results.save_label_png(ids, str(tmp_path / "ids.png"))  # palette indices stored as given
    assert (np.array(Image.open(tmp_path / "ids.png")) == ids).all()
    with pytest.raises(ValueError, match="0..255"):
        vos_results.save_label_png(np.full((2, 2), 256), str(tmp_path / "x.png"))


def test_ytvos_writer_keeps_listed_frames_and_zips(tmp_path, trees):
    records = DatasetCatalog.get("ytvos18_valid")
    out = tmp_path / "yt"
    with pytest.raises(FileNotFoundError):
        vos_results.zip_ytvos_submission(str(out), records)
    for r in records:
        h, w = np.array(Image.open(r["file_names"][0])).shape[:2]
        written = [vos_results.write_result(r, t, np.zeros((h, w), np.uint8), str(out), "ytvos")
                   for t in range(len(r["frames"]))]
        assert sum(p is not None for p in written) == 3  # frames 0, 5, 10 only
    path = vos_results.zip_ytvos_submission(str(out), records)
    names = sorted(zipfile.ZipFile(path).namelist())
    assert names == sorted(f"Annotations/{v}/{t:05d}.png" for v in ("a", "b") for t in (0, 5, 10))
    os.remove(out / "Annotations" / "b" / "00010.png")
    with pytest.raises(FileNotFoundError, match="1 result files missing"):
        vos_results.zip_ytvos_submission(str(out), records)


def test_check_vos_and_check_datasets_cli(trees, tmp_path, capsys):
    root = trees["root"]
    assert vos.check_vos(root, "davis") == [] and vos.check_vos(root, "ytvos") == []
    shutil.rmtree(os.path.join(root, "DAVIS17", "trainval", "JPEGImages", "480p", "thin"))
    os.remove(os.path.join(root, "YouTubeVOS18", "valid", "meta.json"))
    missing = vos.check_vos(root, "davis")
    assert missing == [os.path.join(root, "DAVIS17", "trainval", "JPEGImages", "480p", "thin")]
    assert vos.check_vos(root, "ytvos") == [os.path.join(root, "YouTubeVOS18", "valid",
                                                          "meta.json")]
    from tools.check_datasets import main as check_main

    assert check_main(["--benchmark", "davis", "--root", root]) == 1
    assert "thin" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    write_davis_tree(str(fresh))
    assert check_main(["--benchmark", "davis", "--root", str(fresh)]) == 0


def test_loader_errors_name_the_path(trees):
    root = trees["root"]
    seq_ann = os.path.join(root, "DAVIS17", "trainval", "Annotations", "480p", "thin")
    os.remove(os.path.join(seq_ann, "00000.png"))
    with pytest.raises(ValueError, match="first frame 00000 has no annotation"):
        vos.load_davis("2017", "val", root)
    shutil.rmtree(seq_ann)
    with pytest.raises(MissingDataError, match="no annotation PNG for video thin"):
        vos.load_davis("2017", "val", root)
    crossing = os.path.join(root, "DAVIS17", "trainval", "Annotations", "480p", "crossing")
    with open(os.path.join(crossing, "00000.png"), "w") as f:
        f.write("not a png")
    with pytest.raises(ValueError, match="crossing/00000.png: not a readable image"):
        vos.load_davis("2017", "val", root)
