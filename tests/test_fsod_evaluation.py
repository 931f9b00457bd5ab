# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""FSOD evaluation: perfect predictions give AP 100; our numbers equal pycocotools COCOeval run
directly on the written results json, restricted to the novel classes as TFA does."""

import contextlib
import copy
import io
import json
import math
import os
import resource
import signal

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import diffews  # noqa: F401  (registers the datasets)
from diffews.data.datasets import coco_fsod
from diffews.evaluation import FSODEvaluator, aggregate_seeds, write_coco_results
from diffews.evaluation.instance_evaluation import format_seed_table
from diffews.predictor.instances import masks_to_instances
from tests._fsod_trees import NOVEL, write_fsod_tree

NOVEL_IDS = [i for i, _ in NOVEL]
TESTS = {"coco": ("coco_test_novel", "test_json", "test_gt"),
         "voc": ("VOCSegm_val_novel", "voc_json", "voc_gt")}


@pytest.fixture(autouse=True)
def fresh_registration():
    coco_fsod.register_all_fsod()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    info = write_fsod_tree(str(tmp_path / "data"), shots=(1,), seeds=(0,))
    info["out"] = str(tmp_path / "out")
    return info


def gt_api(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def contiguous(test, cat):
    return NOVEL_IDS.index(cat) if test == "coco" else cat - 1  # SINE's VOC numbering


def instances(h, w, masks, boxes_xywh, scores, classes):
    out = Instances((h, w))
    out.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))
    b = np.array(boxes_xywh, np.float32).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    out.pred_boxes = Boxes(torch.from_numpy(b))
    out.scores = torch.tensor(scores, dtype=torch.float32)
    out.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return out


def run(evaluator, api, per_image):
    evaluator.reset()
    for img_id in sorted(api.imgs):
        evaluator.process([{"image_id": img_id}], [{"instances": per_image(img_id)}])
    return evaluator.evaluate()


@pytest.mark.parametrize("test", ["coco", "voc"])
def test_perfect_predictions_give_ap_100(tree, test):
    name, json_key, _ = TESTS[test]
    api = gt_api(tree[json_key])
    wanted = NOVEL_IDS if test == "coco" else list(range(1, 21))

    def perfect(img_id):
        anns = [a for a in api.imgToAnns[img_id] if a["category_id"] in wanted and not a["iscrowd"]]
        return instances(api.imgs[img_id]["height"], api.imgs[img_id]["width"],
                         [api.annToMask(a).astype(bool) for a in anns], [a["bbox"] for a in anns],
                         [1.0] * len(anns), [contiguous(test, a["category_id"]) for a in anns])

    res = run(FSODEvaluator(name, tree["out"], distributed=False), api, perfect)
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == res[task]["AP50"] == res[task]["AP75"] == 100.0
    assert os.path.isfile(os.path.join(tree["out"], "coco_instances_results.json"))

    # the same through the post-processing: one mask per class, split into its components
    # (same-class instances of the tree do not touch, so components are the instances)
    def via(mode):
        def predict(img_id):
            img = api.imgs[img_id]
            masks = np.zeros((20, img["height"], img["width"]), bool)
            for a in api.imgToAnns[img_id]:
                if a["category_id"] in wanted and not a["iscrowd"]:
                    masks[contiguous(test, a["category_id"])] |= api.annToMask(a).astype(bool)
            return masks_to_instances(masks, mode=mode, min_area=1)
        return predict

    res = run(FSODEvaluator(name, None, distributed=False), api, via("components"))
    assert res["bbox"]["AP"] == res["segm"]["AP"] == 100.0
    # one instance per class merges the two persons (COCO) and the two cows (VOC)
    res = run(FSODEvaluator(name, None, distributed=False), api, via("mask"))
    assert res["bbox"]["AP"] < 100 and res["segm"]["AP"] < 100


def noisy_predictions(api, test, seed=0):
    """Shifted / eroded GT masks, wrong classes, base-class-free false positives, random scores."""
    rng = np.random.RandomState(seed)
    wanted = NOVEL_IDS if test == "coco" else list(range(1, 21))

    def predict(img_id):
        img = api.imgs[img_id]
        h, w = img["height"], img["width"]
        masks, boxes, scores, classes = [], [], [], []
        for a in api.imgToAnns[img_id]:
            m = api.annToMask(a).astype(bool)
            for _ in range(2):
                dy, dx = rng.randint(-3, 4, 2)
                p = np.roll(np.roll(m, dy, 0), dx, 1)
                if rng.rand() < 0.3:
                    p[rng.rand(h, w) < 0.3] = False
                if not p.any():
                    continue
                ys, xs = np.nonzero(p)
                masks.append(p)
                boxes.append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
                scores.append(float(rng.rand()))
                cat = a["category_id"] if a["category_id"] in wanted else wanted[rng.randint(20)]
                classes.append(contiguous(test, cat) if rng.rand() < 0.8 else rng.randint(20))
        return instances(h, w, masks, boxes, scores, classes)

    return predict


@pytest.mark.parametrize("test", ["coco", "voc"])
def test_equals_pycocotools_on_written_json(tree, test):
    name, json_key, _ = TESTS[test]
    api = gt_api(tree[json_key])
    evaluator = FSODEvaluator(name, tree["out"], distributed=False)
    res = run(evaluator, api, noisy_predictions(api, test))
    results = json.load(open(os.path.join(tree["out"], "coco_instances_results.json")))
    assert results and {r["category_id"] for r in results} <= set(
        NOVEL_IDS if test == "coco" else range(1, 21))
    assert not [f for f in os.listdir(tree["out"]) if ".tmp" in f]
    gt = gt_api(tree[json_key])  # the whole json, base classes included
    for task in ("bbox", "segm"):
        dets = copy.deepcopy(results)
        if task == "segm":  # detectron2's convention: mask areas for small/medium/large
            for d in dets:
                d.pop("bbox")
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(dets), task)
            if test == "coco":
                ev.params.catIds = NOVEL_IDS  # TFA's _novel_classes restriction
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        expected = [100 * s if s >= 0 else float("nan") for s in ev.stats[:6]]
        ours = [res[task][m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
        assert 0 < ours[0] < 100
        if task == "segm":  # TFA's old evaluator kept the boxes: only APs/APm/APl may differ
            with contextlib.redirect_stdout(io.StringIO()):
                old = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "segm")
                old.params.catIds = ev.params.catIds
                old.evaluate()
                old.accumulate()
                old.summarize()
            np.testing.assert_allclose(100 * old.stats[:3], ours[:3], rtol=0, atol=1e-9)
        if test == "coco":  # the per-class entries follow detectron2's AP-<class> naming
            assert set(res[task]) >= {f"AP-{n}" for _, n in NOVEL}


def test_aggregate_seeds_uses_population_std():
    per_seed = {s: {"segm": {"AP": v, "AP50": 2 * v}, "bbox": {"AP": v + 1}}
                for s, v in enumerate([10.0, 12.0, 14.0, 20.0])}
    agg = aggregate_seeds(per_seed)
    # TFA aggregate_seeds.py: np.std (ddof 0) -> sqrt(mean((x - 14)^2)) = sqrt(14) for 10,12,14,20
    assert agg["segm"]["AP"]["mean"] == 14.0
    assert math.isclose(agg["segm"]["AP"]["std"], math.sqrt(14.0))
    assert math.isclose(agg["segm"]["AP"]["ci95"], 1.96 * math.sqrt(14.0) / 2)
    assert math.isclose(agg["segm"]["AP50"]["std"], 2 * math.sqrt(14.0))
    assert agg["bbox"]["AP"]["n"] == 4 and "AP50" not in agg["bbox"]
    table = format_seed_table(agg)
    assert "14.00 ± 3.74" in table and "4 seeds" in table


@contextlib.contextmanager
def _file_size_limit(limit):
    """Writes past ``limit`` bytes fail with OSError (EFBIG), as on a full disk; undone after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_write_coco_results_is_atomic(tmp_path):
    """A write that fails midway (serialisation, or the disk filling up) leaves the previous
    results file as it was and no temporary file: a plain ``open(path, "w")`` write truncates it."""
    folder = tmp_path / "sub"
    path = str(folder / "coco_instances_results.json")
    det = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    write_coco_results([det], path)
    assert json.load(open(path))[0]["score"] == 0.5
    assert os.listdir(folder) == ["coco_instances_results.json"]
    previous = open(path, "rb").read()
    many = [dict(det, score=0.25)] * 5000  # about 350 KB of json
    with pytest.raises(TypeError):  # json cannot encode the last detection
        write_coco_results(many + [dict(det, score=object())], path)
    assert open(path, "rb").read() == previous
    assert os.listdir(folder) == ["coco_instances_results.json"]
    with _file_size_limit(64 * 1024), pytest.raises(OSError):
        write_coco_results(many, path)
    assert open(path, "rb").read() == previous
    assert os.listdir(folder) == ["coco_instances_results.json"]
    write_coco_results(many, path)  # and a write that succeeds replaces it whole
    assert len(json.load(open(path))) == 5000 and os.listdir(folder) == [os.path.basename(path)]


def test_missing_test_json_is_a_one_line_error(tree):
    os.remove(tree["test_json"])
    with pytest.raises(FileNotFoundError) as err:
        FSODEvaluator("coco_test_novel", distributed=False)
    msg = str(err.value)
    assert tree["test_json"] in msg and "datasets/README.md" in msg and "\n" not in msg
