# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Bad data during evaluation and training (issue 8, item 5): a missing or corrupt image names the
file and stops by default; DATALOADER.SKIP_BAD_SAMPLES skips, counts and lists bad samples up to
DATALOADER.MAX_BAD_FRACTION. Nothing is written half: checkpoints, episode lists, results and
exported folders are written under a temporary name and renamed."""

import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

import diffews  # noqa: F401  (registers the datasets)
from diffews import DiffewSCheckpointer, add_diffews_config
from diffews.data import build_fss_test_loader, load_sample
from diffews.data.records import BadSampleError
from diffews.data.episodes import EpisodicTrainDataset
from diffews.utils.atomic import atomic_folder, atomic_write_json
from tests._fss_trees import register_all, write_fss_tree, write_pascal_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setenv("DIFFEWS_SPLITS", "tree")
    write_fss_tree(str(tmp_path))
    register_all()
    return tmp_path


def _cfg(*opts):
    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_list(["INPUT.IMAGE_SIZE", 16, "DATALOADER.NUM_WORKERS", 0,
                         "TEST.FSS.NUM_EPISODES", 4, *opts])
    return cfg


def _fss(tree, name):
    return str(tree / "FSS-1000" / "data" / name)


def test_load_sample_names_the_file(tree):
    write_pascal_tree(str(tree))
    record = next(r for r in DatasetCatalog.get("pascal5i_fold0_test"))
    cases = {
        "image": (record["file_name"], b"", r"not a readable image"),
        "label": (record["mask_file"], b"\x89PNG broken", r"not a readable image"),
    }
    for what, (path, data, message) in cases.items():
        keep = open(path, "rb").read()
        open(path, "wb").write(data)
        with pytest.raises(BadSampleError, match=f"{path}: {message}") as e:
            load_sample(record, record["classes"][0], "class_value", True)
        assert e.value.path == path and e.value.record_id == record["image_id"], what
        os.remove(path)
        with pytest.raises(BadSampleError, match=f"{path}: no such file"):
            load_sample(record, record["classes"][0], "class_value", True)
        open(path, "wb").write(keep)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(record["mask_file"])
    with pytest.raises(BadSampleError, match=rf"{record['mask_file']}: label \(5, 7\) and image"):
        load_sample(record, record["classes"][0], "class_value", True)
    fss = next(r for r in DatasetCatalog.get("fss1000_test"))  # PIL's own open (threshold128)
    os.remove(fss["mask_file"])
    with pytest.raises(BadSampleError, match=f"{fss['mask_file']}: no such file"):
        load_sample(fss, fss["classes"][0], "threshold128")


def test_evaluation_stops_or_skips_and_lists(tree, caplog):
    bad = _fss(tree, "apple/1.jpg")  # the query of episode 0 (first image of the first class)
    open(bad, "wb").write(b"not a jpeg")
    loader = build_fss_test_loader(_cfg(), "fss1000_test")
    with pytest.raises(BadSampleError, match=f"{bad}: not a readable image .*episode 0 of "
                       "fss1000_test.*DATALOADER.SKIP_BAD_SAMPLES True"):
        list(loader)
    loader = build_fss_test_loader(_cfg("DATALOADER.SKIP_BAD_SAMPLES", True,
                                        "DATALOADER.MAX_BAD_FRACTION", 0.5), "fss1000_test")
    with caplog.at_level(logging.WARNING, logger="diffews.data.episodes.test"):
        batches = list(loader)
    ids = [x["episode_id"] for b in batches for x in b]
    skipped = [s["episode_id"] for s in loader.skipped]
    assert 0 in skipped and sorted(ids + skipped) == [0, 1, 2, 3]
    assert loader.skipped[0]["file"] == bad and "skipped" in caplog.text and bad in caplog.text
    loader = build_fss_test_loader(_cfg("DATALOADER.SKIP_BAD_SAMPLES", True,
                                        "DATALOADER.MAX_BAD_FRACTION", 0.2), "fss1000_test")
    with pytest.raises(BadSampleError, match=r"1 of 4 episodes have a bad image or label, more "
                       r"than DATALOADER.MAX_BAD_FRACTION 0.2"):
        list(loader)


def test_run_fss_skips_bad_episode_and_records_it(tree, tiny_sd):
    sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
    import run_fss

    bad = _fss(tree, "apple/1.jpg")
    open(bad, "wb").write(b"")
    out = tree / "out"
    args = run_fss.parse_args(["--config-file", CFG, "--benchmark", "fss", "--num-episodes", "2",
                               "--output", str(out), "MODEL.DIFFEWS.PRETRAINED", tiny_sd,
                               "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
                               "DATALOADER.SKIP_BAD_SAMPLES", "True",
                               "DATALOADER.MAX_BAD_FRACTION", "0.5"])
    summary = run_fss.main(args)
    fold = json.load(open(out / "results.json"))["folds"]["0"]
    assert fold["num_episodes"] == 1 == summary["folds"][0]["num_episodes"]
    assert [(s["episode_id"], s["file"]) for s in fold["skipped_episodes"]] == [(0, bad)]


def test_training_stops_or_drops_bad_images(tree, caplog):
    bad = _fss(tree, "cat/3.jpg")
    open(bad, "wb").write(b"")

    def episodes(dataset, n):
        it = iter(dataset)
        return [next(it) for _ in range(n)]

    with pytest.raises(BadSampleError, match=f"{bad}: not a readable image.*SKIP_BAD_SAMPLES"):
        episodes(EpisodicTrainDataset(["fss1000_train"], 16, 2, seed=0), 60)
    dataset = EpisodicTrainDataset(["fss1000_train"], 16, 2, seed=0, skip_bad=True,
                                   max_bad_fraction=0.1)
    with caplog.at_level(logging.WARNING, logger="diffews.data.episodes.train"):
        drawn = episodes(dataset, 60)
    assert dataset.bad == [bad] and "skipping a bad training image (1 of 20 so far)" in caplog.text
    assert all("cat/3" not in i for e in drawn for i in [e["query_id"], *e["support_ids"]])
    for name in ("cat/4.jpg", "ant/1.jpg", "ant/2.jpg"):
        open(_fss(tree, name), "wb").write(b"")
    with pytest.raises(BadSampleError, match=r"3 of 20 training images are bad, more than "
                       r"DATALOADER.MAX_BAD_FRACTION 0.1 allows"):
        episodes(dataset, 400)


def test_checkpoint_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    checkpointer = DiffewSCheckpointer(tiny_model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def killed(obj, f, *args, **kwargs):  # the process dies half-way through the write
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    for name in ("model_0000001", "model_0000002"):
        with pytest.raises(KeyboardInterrupt):
            checkpointer.save(name)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_results_and_exported_folders_are_atomic(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json({"mIoU": 1.0}, str(path))
    with pytest.raises(TypeError):
        atomic_write_json({"mIoU": object()}, str(path))  # fails mid-write
    assert json.loads(path.read_text()) == {"mIoU": 1.0} and os.listdir(tmp_path) == [
        "results.json"]
    folder = tmp_path / "release" / "unet"
    with atomic_folder(str(folder)) as tmp:
        open(os.path.join(tmp, "config.json"), "w").write("{}")
    with pytest.raises(RuntimeError):
        with atomic_folder(str(folder)) as tmp:
            open(os.path.join(tmp, "config.json"), "w").write('{"new": 1}')
            raise RuntimeError("killed while writing the weights")
    assert os.listdir(folder) == ["config.json"] and (folder / "config.json").read_text() == "{}"
    assert os.listdir(folder.parent) == ["unet"]  # no temporary folder left behind
    with atomic_folder(str(folder)) as tmp:
        open(os.path.join(tmp, "weights"), "w").write("w")
    assert sorted(os.listdir(folder)) == ["weights"] and os.listdir(folder.parent) == ["unet"]
