# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Custom few-shot datasets (coco / semseg / folder layouts), the weighted multi-dataset training
sampler and the in-context training sets, on small synthetic trees in the real formats.

References are written from the documented rules (custom.py / custom_layouts.py docstrings, COCO's
crowd-as-ignore rule), with the tree writers' own knowledge of what they wrote."""

import itertools
import json
import logging
import math
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util

import diffews  # noqa: F401  (registers the datasets)
from conftest import make_cfg
from diffews.data.datasets.custom_layouts import CustomLayoutError
from diffews.data.datasets.custom import (
    custom_test_dataset, per_class_iou_by_name, register_custom_fss
)
from diffews.data.episodes import get_episodes
from diffews.data.records import load_sample
from diffews.data.episodes import EpisodicTrainDataset
from tests._custom_trees import (
    H, W, write_ade20k_tree, write_coco_tree, write_folder_tree, write_semseg_tree,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def datasets_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2root"))  # label-scan cache


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# ---- registration, one test per layout ----
def test_folder_layout_records_split_and_left_out_class(tmp_path, caplog):
    tree = write_folder_tree(str(tmp_path / "parts"), {"bolt": 4, "nut": 3, "gear": 1, "cog": 2},
                             zero_one="nut")
    names = register_custom_fss("parts", "folder", str(tmp_path / "parts"),
                                split={"test": ["nut", "gear"]}, shot=2)
    assert names == ["parts_train", "parts_test"]
    # classes = sorted folder names: bolt 0, cog 1, gear 2, nut 3
    with caplog.at_level(logging.WARNING):
        test = DatasetCatalog.get("parts_test")
    assert MetadataCatalog.get("parts_test").class_ids == [3]  # gear (1 image < 3) left out
    assert "gear (1)" in caplog.text
    assert MetadataCatalog.get("parts_test").thing_classes == ["nut"]
    assert [r["image_id"] for r in test] == ["nut/0", "nut/1", "nut/2"]
    train = DatasetCatalog.get("parts_train")
    assert MetadataCatalog.get("parts_train").class_ids == [0, 1]  # bolt, cog (>= 2 images)
    assert {r["image_id"] for r in train} == set(tree["images"]["bolt"] + tree["images"]["cog"])
    # 0/1 masks (nut) and 0/255 masks (bolt) both read as the written rectangle
    for record in test + train:
        cls = record["classes"][0]
        _, label = load_sample(record, cls, MetadataCatalog.get("parts_test").label_format)
        np.testing.assert_array_equal(label, tree["masks"][record["image_id"]])
    # a split by index: every class but 0 (bolt) is a test class
    register_custom_fss("parts2", "folder", str(tmp_path / "parts"), split=[1, 2, 3])
    DatasetCatalog.get("parts2_test")
    assert MetadataCatalog.get("parts2_test").class_ids == [1, 3]


def test_semseg_layout_offset_ignore_and_min_pixels(tmp_path):
    road, car, tree_ = _rect(0, 10, 0, 24), _rect(12, 18, 2, 12), _rect(12, 20, 14, 24)
    labels = []
    lab = np.zeros((H, W), np.uint8)
    lab[road], lab[car] = 1, 2
    lab[11, :] = 255  # boundary
    labels.append(lab)
    lab = np.zeros((H, W), np.uint8)
    lab[road], lab[tree_] = 1, 3
    lab[0, 0:3] = 2  # a 3-pixel speck of car: below MIN_PIXELS 5
    labels.append(lab)
    lab = np.zeros((H, W), np.uint8)
    lab[car] = 2
    labels.append(lab)
    root = str(tmp_path / "street")
    write_semseg_tree(root, ["road", "car", "tree"], labels)
    register_custom_fss("street", "semseg", root, min_pixels=5)
    records = {r["image_id"]: r for r in DatasetCatalog.get("street_test")}
    # value v -> class v - 1 (LABEL_OFFSET 1), 0 = background, 255 = ignore
    assert {k: r["classes"] for k, r in records.items()} == {
        "img_000": [0, 1], "img_001": [0], "img_002": [1]}
    meta = MetadataCatalog.get("street_test")
    assert meta.class_ids == [0, 1] and meta.thing_classes == ["road", "car"]  # tree: 1 image
    _, query = load_sample(records["img_000"], 1, meta.label_format, meta.ignore_boundary)
    expected = car.astype(np.uint8)
    expected[11, :] = 255
    np.testing.assert_array_equal(query, expected)
    _, support = load_sample(records["img_000"], 1, meta.label_format, False)
    np.testing.assert_array_equal(support, car.astype(np.uint8))
    # labels numbering classes from 0 (detectron2's ADE20K): LABEL_OFFSET 0, 0 is "road"
    root0 = str(tmp_path / "street0")
    write_semseg_tree(root0, ["road", "car", "tree"], [np.where(lab == 0, 0, 1) for lab in labels])
    register_custom_fss("street0", "semseg", root0, label_offset=0)
    assert all(r["classes"] == [0, 1] for r in DatasetCatalog.get("street0_train"))


def test_coco_layout_union_crowd_and_category_order(tmp_path):
    zebra1, zebra2 = _rect(0, 5, 0, 6), _rect(10, 15, 10, 20)
    apple, crowd = _rect(2, 8, 12, 20), _rect(0, 20, 10, 24)  # the crowd covers the apple
    kite = _rect(5, 12, 3, 9)
    images = [
        {"name": "a", "instances": [(3, zebra1, False), (3, zebra2, False), (1, apple, False),
                                    (1, crowd, True)]},
        {"name": "b", "instances": [(7, kite, True), (1, apple, False)]},  # kite: crowd only
        {"name": "c", "instances": [(3, zebra1, False), (7, kite, False)]},
        {"name": "d", "instances": [(1, zebra2, False), (7, kite, False)]},
    ]
    tree = write_coco_tree(str(tmp_path / "coco"), {3: "zebra", 1: "apple", 7: "kite"}, images)
    # a polygon instance too (COCO's own rasteriser gives its reference mask)
    poly = [[1.0, 14.0, 8.0, 14.0, 8.0, 19.0, 1.0, 19.0]]
    tree["data"]["annotations"].append({"id": 99, "image_id": 102, "category_id": 7,
                                        "segmentation": poly, "iscrowd": 0})
    with open(tree["json"], "w") as f:
        json.dump(tree["data"], f)
    register_custom_fss("mycoco", "coco", tree["image_dir"], coco_json=tree["json"])
    records = {r["image_id"]: r for r in DatasetCatalog.get("mycoco_test")}
    meta = MetadataCatalog.get("mycoco_test")
    # categories sorted by id: apple (1) -> 0, zebra (3) -> 1, kite (7) -> 2
    assert meta.thing_classes == ["apple", "zebra", "kite"] and meta.class_ids == [0, 1, 2]
    assert {k: r["classes"] for k, r in records.items()} == {
        "a": [0, 1], "b": [0], "c": [1, 2], "d": [0, 2]}
    _, zebra = load_sample(records["a"], 1, meta.label_format, meta.ignore_boundary)
    np.testing.assert_array_equal(zebra, (zebra1 | zebra2).astype(np.uint8))  # union
    _, query = load_sample(records["a"], 0, meta.label_format, True)
    expected = apple.astype(np.uint8)
    expected[crowd & ~apple] = 255  # crowd = ignore in the query label, never foreground
    np.testing.assert_array_equal(query, expected)
    _, support = load_sample(records["a"], 0, meta.label_format, False)
    np.testing.assert_array_equal(support, apple.astype(np.uint8))
    _, kite_c = load_sample(records["c"], 2, meta.label_format, True)
    polygon = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, H, W))).astype(bool)
    np.testing.assert_array_equal(kite_c, (kite | polygon).astype(np.uint8))


# ---- episodes ----
def reference_episodes(classwise, class_ids, shot, n, seed):
    """The documented rule with numpy's global RNG: class = choice(classes); query =
    choice(class images, sorted IDs); supports: choice until `shot` distinct non-query ones."""
    np.random.seed(seed)
    out = []
    for _ in range(n):
        c = np.random.choice(class_ids, 1, replace=False)[0]
        q = np.random.choice(classwise[c], 1, replace=False)[0]
        supports = []
        while len(supports) < shot:
            s = np.random.choice(classwise[c], 1, replace=False)[0]
            if s != q and s not in supports:
                supports.append(s)
        out.append((int(c), str(q), [str(s) for s in supports]))
    return out


def test_test_episodes_follow_the_rule(tmp_path):
    counts = {"ant": 5, "bee": 3, "cow": 6, "doe": 2}
    tree = write_folder_tree(str(tmp_path / "zoo"), counts)
    for shot, seed in ((1, 0), (2, 7)):
        name = custom_test_dataset("folder", str(tmp_path / "zoo"), shot=shot, name="zoo")
        assert name == "zoo_test"
        names = sorted(counts)
        eligible = [i for i, c in enumerate(names) if counts[c] >= shot + 1]
        classwise = {i: sorted(tree["images"][names[i]]) for i in eligible}
        got = get_episodes(name, shot, seed=seed, num_episodes=60)
        want = reference_episodes(classwise, eligible, shot, 60, seed)
        assert [(e["class_id"], e["query"], e["supports"]) for e in got] == want
        assert len({e["class_id"] for e in got}) == len(eligible)
    assert len(get_episodes(name, 2)) == 1000  # the default count
    with pytest.raises(ValueError, match="registered for 2-shot"):
        get_episodes(name, 1)


# ---- bad layouts ----
def _one_line(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message and path in message, message


def test_bad_layouts_are_one_line_errors_naming_the_file(tmp_path):
    folder = str(tmp_path / "f")
    write_folder_tree(folder, {"cat": 3})
    stray = os.path.join(folder, "cat", "9.png")
    open(stray, "wb").write(open(os.path.join(folder, "cat", "0.png"), "rb").read())
    with pytest.raises(CustomLayoutError, match="mask without an image") as e:
        custom_test_dataset("folder", folder, name="bad1")
    _one_line(e, stray)

    semseg = str(tmp_path / "s")
    write_semseg_tree(semseg, ["a"], [np.ones((H, W), np.uint8)] * 3)
    os.remove(os.path.join(semseg, "images", "img_001.jpg"))
    with pytest.raises(CustomLayoutError, match="mask without an image") as e:
        custom_test_dataset("semseg", semseg, name="bad2")
    _one_line(e, os.path.join(semseg, "labels", "img_001.png"))

    coco = write_coco_tree(str(tmp_path / "c"), {1: "a"}, [
        {"name": f"i{k}", "instances": [(1, _rect(0, 4, 0, 4), False)]} for k in range(3)])
    coco["data"]["annotations"][1]["category_id"] = 5
    with open(coco["json"], "w") as f:
        json.dump(coco["data"], f)
    with pytest.raises(CustomLayoutError, match="category_id 5") as e:
        custom_test_dataset("coco", coco["image_dir"], coco_json=coco["json"], name="bad3")
    _one_line(e, coco["json"])

    few = str(tmp_path / "few")
    write_folder_tree(few, {"cat": 2, "dog": 2})
    with pytest.raises(CustomLayoutError, match="no test class has the 3 images") as e:
        custom_test_dataset("folder", few, shot=2, name="bad4")
    _one_line(e, few)


# ---- the weighted mixture sampler and training on it ----
def _two_folder_datasets(tmp_path):
    write_folder_tree(str(tmp_path / "A"), {"a_cat": 3, "a_dog": 4})
    write_folder_tree(str(tmp_path / "B"), {"b_owl": 3, "b_yak": 3, "b_emu": 5})
    return (register_custom_fss("mixa", "folder", str(tmp_path / "A"))[0],
            register_custom_fss("mixb", "folder", str(tmp_path / "B"))[0])


@pytest.mark.parametrize("weights,p_a", [((3.0, 1.0), 0.75), ((), 0.5)])
def test_mixture_sampler_ratio(tmp_path, weights, p_a):
    names = _two_folder_datasets(tmp_path)
    dataset = EpisodicTrainDataset(names, image_size=8, max_shot=2, seed=3, weights=weights)
    n, from_a = 2000, 0
    stream = iter(dataset)
    for _ in range(n):
        episode = next(stream)
        folders = {i.split("/")[0] for i in [episode["query_id"], *episode["support_ids"]]}
        assert len(folders) == 1  # query and supports: one dataset, one class
        from_a += folders.pop().startswith("a_")
    sigma = math.sqrt(n * p_a * (1 - p_a))
    print(f"mixture weights {weights or 'uniform'}: {from_a}/{n} = {from_a / n:.4f} from A "
          f"(expected {p_a}, binomial sd {sigma / n:.4f})")
    assert abs(from_a - n * p_a) < 4 * sigma


def test_bad_train_weights(tmp_path):
    names = _two_folder_datasets(tmp_path)
    for weights in ((1.0,), (1.0, -1.0), (0.0, 0.0)):
        with pytest.raises(ValueError, match="DATASETS.TRAIN_WEIGHTS"):
            EpisodicTrainDataset(names, 8, 2, 0, weights)


def test_training_iterations_on_a_weighted_mixture(tiny_sd, tmp_path):
    from diffews.engine import DiffewSTrainer

    names = _two_folder_datasets(tmp_path)
    cfg = make_cfg(tiny_sd, "DATASETS.TRAIN", names, "DATASETS.TRAIN_WEIGHTS", (3.0, 1.0),
                   "DATASETS.TEST", (), "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 1,
                   "SOLVER.ACCUMULATION_STEPS", 1, "SOLVER.BASE_LR", 1e-3,
                   "SOLVER.CHECKPOINT_PERIOD", 100, "TEST.EVAL_PERIOD", 0, "VIS_PERIOD", 0,
                   "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out"))
    trainer = DiffewSTrainer(cfg)
    # the loader training iterates draws its datasets 3:1 (DATASETS.TRAIN_WEIGHTS): a fresh pass
    # over it (same seed) counts where 600 episodes come from; a uniform draw (weights dropped on
    # the way from the config) gives 1/2, 14 binomial sds away from 3/4
    n, from_a, p_a = 600, 0, 0.75
    for batch in itertools.islice(iter(trainer._trainer.data_loader), n):
        (episode,) = batch
        folders = {i.split("/")[0] for i in [episode["query_id"], *episode["support_ids"]]}
        assert len(folders) == 1
        from_a += folders.pop().startswith("a_")
    assert abs(from_a - n * p_a) < 4 * math.sqrt(n * p_a * (1 - p_a)), f"{from_a}/{n} from A"
    before = {k: v.clone() for k, v in trainer.model.unet.state_dict().items()}
    trainer.train()
    assert trainer.iter == 2
    loss = trainer.storage.history("total_loss").values()
    assert len(loss) == 2 and all(math.isfinite(v) for v, _ in loss)
    after = trainer.model.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_finetune_config_from_released_weights_on_a_coco_json(tiny_sd, tiny_model, tmp_path):
    from diffews.config import build_config
    from diffews.engine import DiffewSTrainer
    from diffews.modeling import save_release_unet

    masks = [_rect(0, 8, 0, 8), _rect(6, 18, 4, 20), _rect(2, 12, 10, 22)]
    coco = write_coco_tree(str(tmp_path / "mine"), {1: "cup", 2: "pen"}, [
        {"name": f"i{k}", "instances": [(1 + k % 2, masks[k % 3], False)]} for k in range(6)])
    release = tmp_path / "release"
    save_release_unet(tiny_model.unet, str(release / "unet"))
    cfg = build_config(
        os.path.join(ROOT, "configs/custom/diffews_sd21_custom_coco_finetune.yaml"),
        [
            "MODEL.DIFFEWS.PRETRAINED",
            tiny_sd,
            "MODEL.WEIGHTS",
            str(release),
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.CUSTOM.my_coco.ROOT",
            coco["image_dir"],
            "DATASETS.CUSTOM.my_coco.COCO_JSON",
            coco["json"],
            "DATASETS.CUSTOM.my_coco.TEST_CLASSES",
            "['pen']",
            "INPUT.IMAGE_SIZE",
            "64",
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.ACCUMULATION_STEPS",
            "1",
            "SOLVER.AMP.ENABLED",
            "False",
            "TEST.FSS.NUM_EPISODES",
            "2",
            "VIS_PERIOD",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
    )
    trainer = DiffewSTrainer(cfg)
    trainer.resume_or_load(resume=False)  # the released UNet folder
    for k, v in tiny_model.unet.state_dict().items():
        torch.testing.assert_close(trainer.model.unet.state_dict()[k], v)
    trainer.train()  # ends with the evaluation of DATASETS.TEST (2 episodes)
    assert (tmp_path / "out" / "model_final.pth").exists()
    assert MetadataCatalog.get("my_coco_train").thing_classes == ["cup"]
    assert MetadataCatalog.get("my_coco_test").thing_classes == ["pen"]
    with open(tmp_path / "out" / "fss_results.json") as f:
        assert json.load(f)["metrics"]["num_episodes"] == 2


# ---- evaluation end to end ----
class _Oracle(torch.nn.Module):
    """Predicts the ground truth: every class must score 100."""

    def forward(self, inputs):
        return [{"pred_mask": torch.as_tensor(x["sem_seg"]) == 1} for x in inputs]


def test_evaluation_end_to_end(tiny_sd, tiny_model, tmp_path):
    from detectron2.evaluation import inference_on_dataset

    from diffews.checkpoint import load_inference_weights
    from diffews.data import build_fss_test_loader
    from diffews.evaluation import FSSEvaluator

    write_folder_tree(str(tmp_path / "birds"), {"crow": 3, "wren": 4, "kiwi": 1})
    name = custom_test_dataset("folder", str(tmp_path / "birds"), shot=2)
    assert name == "custom_birds_test"
    cfg = make_cfg(tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", True, "TEST.FSS.SHOT", 2,
                   "TEST.FSS.NUM_EPISODES", 4, "DATALOADER.NUM_WORKERS", 0)
    loader = build_fss_test_loader(cfg, name)
    assert load_inference_weights(tiny_model, cfg) == ""  # untrained on purpose
    res = inference_on_dataset(tiny_model, loader, FSSEvaluator(name, distributed=False))["fss"]
    assert res["num_episodes"] == 4 and 0.0 <= res["mIoU"] <= 100.0
    assert set(per_class_iou_by_name(name, res)) == {"crow", "wren"}  # kiwi: too few images
    oracle = inference_on_dataset(_Oracle(), loader, FSSEvaluator(name, distributed=False))["fss"]
    assert per_class_iou_by_name(name, oracle) == {"crow": 100.0, "wren": 100.0}


def test_config_key_registers_datasets(tmp_path):
    from diffews.config import build_config

    write_folder_tree(str(tmp_path / "cfgdata"), {"x": 3, "y": 3})
    path = tmp_path / "c.yaml"
    path.write_text(f'_BASE_: "{ROOT}/configs/Base-DiffewS.yaml"\nDATASETS:\n  CUSTOM:\n'
                    f'    mine: {{LAYOUT: "folder", ROOT: "{tmp_path}/cfgdata", '
                    'TEST_CLASSES: ["y"]}\n  TRAIN: ("mine_train",)\nTEST:\n  FSS:\n    SHOT: 2\n')
    build_config(str(path))
    DatasetCatalog.get("mine_test")
    meta = MetadataCatalog.get("mine_test")
    assert meta.class_ids == [1] and meta.shot_filter == 2
    DatasetCatalog.get("mine_train")
    assert MetadataCatalog.get("mine_train").class_ids == [0]
    path.write_text(path.read_text().replace("TEST_CLASSES", "TEST_CLASS"))
    with pytest.raises(ValueError, match=r"DATASETS.CUSTOM.mine.TEST_CLASS: unknown key"):
        build_config(str(path))


# ---- in-context training sets ----
def test_incontext_training_sets(tmp_path, monkeypatch):
    from detectron2.data.datasets.builtin import register_all_ade20k

    from diffews.data.datasets import incontext
    from tests._fss_trees import register_all, write_coco_tree as write_coco20i
    from tests._fss_trees import write_pascal_tree

    root = str(tmp_path / "d2root")
    monkeypatch.setenv("DIFFEWS_SPLITS", "tree")
    coco = {f: write_coco20i(root, fold=f)["trn"] for f in (1, 0)}
    pascal = write_pascal_tree(root)
    register_all()
    want = {}
    for f in (0, 1):
        for c, names in coco[f].items():
            for n in names:
                want.setdefault(os.path.splitext(os.path.basename(n))[0], set()).add(c)
    got = {r["image_id"]: set(r["classes"]) for r in DatasetCatalog.get("coco_incontext_train")}
    assert got == want and set().union(*got.values()) == set(range(80))
    want = {}
    for rows in pascal["lines"]["trn"].values():
        for row in rows:
            name, c = row.rsplit("__", 1)
            want.setdefault(name, set()).add(int(c) - 1)
    got = {r["image_id"]: set(r["classes"]) for r in DatasetCatalog.get("pascal_incontext_train")}
    assert got == want and set().union(*got.values()) == set(range(20))

    labels = [np.full((H, W), 255, np.uint8) for _ in range(3)]
    labels[0][:10], labels[0][10:] = 0, 149  # wall, flag
    labels[1][:, :12] = 2  # sky: 240 pixels
    labels[2][0, 0] = 5  # a 1-pixel speck of ceiling only
    ade = write_ade20k_tree(root, labels)
    # detectron2 registers ADE20K under $DETECTRON2_DATASETS read at import: point it here
    d2_root = os.path.dirname(os.path.dirname(os.path.dirname(
        MetadataCatalog.get("ade20k_sem_seg_train").image_root)))

    def register_ade20k(at):
        for split in ("train", "val"):
            DatasetCatalog.remove(f"ade20k_sem_seg_{split}")
            MetadataCatalog.remove(f"ade20k_sem_seg_{split}")
        register_all_ade20k(at)

    register_ade20k(root)
    try:
        records = incontext.load_ade20k_incontext(min_pixels=100)
        register_ade20k(str(tmp_path / "empty"))
        with pytest.raises(FileNotFoundError, match="prepare_ade20k_sem_seg.py"):
            incontext.load_ade20k_incontext()
    finally:
        register_ade20k(d2_root)
    assert {r["image_id"]: r["classes"] for r in records} == {
        ade["ids"][0]: [0, 149], ade["ids"][1]: [2]}
    meta = MetadataCatalog.get("ade20k_incontext_train")
    assert len(meta.class_ids) == 150 and meta.thing_classes[2] == "sky"
    _, query = load_sample(records[1], 2, meta.label_format, meta.ignore_boundary)
    np.testing.assert_array_equal(query, np.where(labels[1] == 2, 1, 255))


# ---- the in-context evaluation script ----
def test_run_incontext_table(tiny_sd, tiny_model, tmp_path):
    from diffews.modeling import save_release_unet

    from diffews.tasks.fss import incontext

    sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
    import run_incontext

    fake = {(b, k): {"folds": {0: {}, 1: {}}, "mean": {"mIoU": 50.0 + k, "FB-IoU": 70.0}}
            for b in ("coco", "pascal") for k in (1, 5)}
    headers, rows = incontext.table(fake, [1, 5])
    assert rows[0] == ["COCO-20i", 2, "51.0", "55.0", "71.3", "72.2", "70.0", "70.0"]
    assert rows[1][4:6] == ["-", "-"]  # no paper number for PASCAL-5i

    release = tmp_path / "release"
    save_release_unet(tiny_model.unet, str(release / "unet"))
    cfg = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
    args = run_incontext.parse_args([
        "--config-file", cfg, "--benchmarks", "synthetic", "--shots", "1,2",
        "--num-episodes", "1", "--output", str(tmp_path / "out"),
        "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release)])
    out = run_incontext.main(args)
    assert [r[0] for r in out["rows"]] == ["synthetic"] and len(out["rows"][0]) == 8
    assert os.path.isfile(tmp_path / "out" / "incontext_results.json")
    assert os.path.isfile(tmp_path / "out" / "synthetic_2shot" / "results.json")
