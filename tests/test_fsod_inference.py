# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation inference (diffews/tasks/fsod/, inference_fsod/run_fsod.py) on the
synthetic TFA tree: results files and AP equal to pycocotools on the written json, support sets
saved once and reused (hook counts), stale sets recomputed, seeds aggregated, 2 processes = 1,
one-line errors, and the instance modes with oracle predictions."""

import contextlib
import io
import json
import logging
import math
import os
import shutil
import socket
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.modeling import build_model
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import SIZE, make_cfg
from diffews.cli import load_config_checked
from diffews import DiffewSPredictor, SupportSet
from diffews.data.datasets import coco_fsod_reader
from diffews.evaluation import FSODEvaluator
from diffews.modeling import save_release_unet
from diffews.predictor import instances
from diffews.predictor.instances import MODES
from diffews.utils.image import read_image, resize_mask
from tests._fsod_trees import NOVEL, split_path, write_fsod_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fsod"))
import run_fsod  # noqa: E402

from diffews.tasks import fsod  # noqa: E402
from diffews.tasks.fsod import job as fsod_job  # noqa: E402
from diffews.tasks.fsod import supports as fsod_supports  # noqa: E402

CFG = os.path.join(ROOT, "configs", "fsod", "coco", "diffews_sd21_fsod_coco_1shot.yaml")
NOVEL_IDS = [i for i, _ in NOVEL]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BATCH = 20  # one query pass per test image; the reuse test sets 8 (passes of 8, 8 and 4)


@pytest.fixture(scope="module")
def env(tiny_sd, tmp_path_factory):
    base = tmp_path_factory.mktemp("fsod")
    release = base / "release"
    save_release_unet(build_model(make_cfg(tiny_sd)).unet, str(release / "unet"))
    tree = write_fsod_tree(str(base / "data"), shots=(1,), seeds=(0, 1))
    opts = ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release),
            "INPUT.IMAGE_SIZE", str(SIZE), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
            "TEST.FSOD.BATCH_SIZE", str(BATCH)]
    return {"base": base, "root": str(base / "data"), "tree": tree, "opts": opts}


def _argv(env, out, *extra, test="coco", seed=("--seed", "0")):
    return ["--config-file", CFG, "--test", test, "--shot", "1", *seed, "--output", str(out),
            "--root", env["root"], *extra, *env["opts"]]


@pytest.fixture(scope="module")
def run_a(env):
    """One CLI run (COCO test, 1-shot, seed 0): supports computed fresh, then the test images."""
    out = env["base"] / "run_a"
    assert run_fsod.cli(_argv(env, out)) == 0
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def pycocotools_metrics(gt_json, results, cat_ids):
    """TFA's evaluation (coco_evaluation.py _evaluate_predictions_on_coco): COCOeval of the whole
    ground truth file against the results, params.catIds = the novel classes; stats[:6] x 100."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        out = {}
        for task in ("bbox", "segm"):
            dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
            ev = COCOeval(gt, dt, task)
            ev.params.catIds = list(cat_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[task] = {m: 100 * float(s) if s >= 0 else float("nan")
                         for m, s in zip(METRICS, ev.stats[:6])}
    return out


def assert_metrics_equal(ours, ref):
    for task in ("bbox", "segm"):
        for m in METRICS:
            a, b = ours[task][m], ref[task][m]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9), (task, m)


def test_end_to_end_files_and_ap_equal_pycocotools(env, run_a):
    results = _load(run_a / "results.json")
    detections = _load(run_a / "coco_instances_results.json")
    gt = _load(env["tree"]["test_json"])
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    assert detections and {d["image_id"] for d in detections} == set(sizes)
    per_image = {}
    for d in detections:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
        assert d["category_id"] in NOVEL_IDS and 0.0 <= d["score"] <= 1.0
        rle = d["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(sizes[d["image_id"]])
        assert mask_util.area(rle) > 0  # the box is that of its mask
        np.testing.assert_allclose(d["bbox"], mask_util.toBbox(rle), atol=1e-4)
    assert max(per_image.values()) <= 100
    assert_metrics_equal(results, pycocotools_metrics(env["tree"]["test_json"], detections,
                                                      NOVEL_IDS))
    folder = run_a / "support_sets" / "coco_trainval_novel_1shot"
    assert sorted(os.listdir(folder)) == sorted(n.replace(" ", "_") + ".pt" for _, n in NOVEL)


class _Counter:
    """Forward pre-hooks: UNet passes by input channels (8 = support, 4 = query), VAE encodes."""

    def __init__(self, model):
        self.n = {"support": 0, "query": 0, "vae_calls": 0, "vae_images": 0}
        self.hooks = [model.unet.register_forward_pre_hook(self.on_unet),
                      model.vae.encoder.register_forward_pre_hook(self.on_vae)]

    def on_unet(self, module, args):
        self.n["support" if args[0].shape[1] == 8 else "query"] += 1

    def on_vae(self, module, args):
        self.n["vae_calls"] += 1
        self.n["vae_images"] += args[0].shape[0]

    def reset(self):
        self.n = dict.fromkeys(self.n, 0)

    def remove(self):
        for h in self.hooks:
            h.remove()


def _cfg(env, *extra):
    cfg = load_config_checked(CFG, env["opts"] + list(extra))
    cfg.freeze()
    return cfg


def test_saved_supports_reused_stale_recomputed_and_encoded_once(env, run_a, tmp_path):
    cfg = _cfg(env)
    folder = str(tmp_path / "cache")
    shutil.copytree(run_a / "support_sets" / "coco_trainval_novel_1shot", folder)
    predictor = DiffewSPredictor.from_config(cfg)
    predictor.model.support_cache = None  # count every VAE encode (no pixel-keyed latent cache)
    by_class = fsod.support_records(cfg, env["root"])
    dog = [n for _, n in NOVEL].index("dog")
    dog_path = fsod.support_set_path(folder, dog)
    r = by_class[dog][0]
    # a set saved by another model (other weights) at the dog's path
    weight = predictor.model.unet.conv_in_ref.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)
        stale = DiffewSPredictor(predictor.model, SIZE).encode_supports([r["file_name"]], [
            coco_fsod_reader.annotation_mask(r["annotations"][0], r["height"], r["width"])])
        weight.copy_(kept)
    stale.save(dog_path)
    assert stale.signature["weights"] != predictor.signature["weights"]

    counter, messages = _Counter(predictor.model), []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("diffews.tasks.fsod").addHandler(handler)
    try:
        sets = fsod_supports.prepare_support_sets(predictor, by_class, folder)
        # only the stale class is encoded again: 1 support pass, its image and mask encoded
        assert counter.n == {"support": 1, "query": 0, "vae_calls": 2, "vae_images": 2}
        assert any(dog_path in m and "recomputing" in m for m in messages)
        saved = SupportSet.load(dog_path)
        assert saved.signature == predictor.signature
        fresh = SupportSet.load(str(run_a / "support_sets" / "coco_trainval_novel_1shot" /
                                    "dog.pt"))
        for k in fresh.layers:
            torch.testing.assert_close(saved.keys[k], fresh.keys[k])

        counter.reset()
        test_records = coco_fsod_reader.load_fsod_test("coco_test_novel", env["root"])[:2]
        out = tmp_path / "run_b"
        evaluator = FSODEvaluator("coco_test_novel", output_dir=str(out), root=env["root"])
        fsod.fsod_inference(predictor, sets, test_records, evaluator, cfg)
        # per test image: 1 VAE encode, 1 query pass of the 20 sets, no support pass
        assert counter.n == {"support": 0, "query": 2, "vae_calls": 2, "vae_images": 2}
        counter.reset()
        evaluator = FSODEvaluator("coco_test_novel", root=env["root"])
        fsod.fsod_inference(predictor, sets, test_records[:1], evaluator,
                            _cfg(env, "TEST.FSOD.BATCH_SIZE", "8"))
        # batches of 8 sets: query passes of 8, 8 and 4 for the one image
        assert counter.n == {"support": 0, "query": 3, "vae_calls": 1, "vae_images": 1}
    finally:
        counter.remove()
        logging.getLogger("diffews.tasks.fsod").removeHandler(handler)
    # saved sets predict what the freshly computed ones predicted, bit for bit
    ids = {r["image_id"] for r in test_records}
    theirs = [d for d in _load(run_a / "coco_instances_results.json") if d["image_id"] in ids]
    assert theirs and _load(out / "coco_instances_results.json") == theirs


@pytest.fixture(scope="module")
def run_seeds(env, run_a):
    """COCO-to-VOC, seeds 0 and 1; the seed-0 supports are the COCO run's (shared cache)."""
    out = env["base"] / "run_seeds"
    cache = str(run_a / "support_sets")
    argv = _argv(env, out, "TEST.FSOD.SUPPORT_DIR", cache, test="voc", seed=("--seeds", "0-1"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert run_fsod.cli(argv) == 0
    return out, cache, stdout.getvalue()


def test_seeds_are_aggregated(run_seeds):
    out, cache, table = run_seeds
    per_seed = {s: _load(out / f"seed{s}" / "results.json") for s in (0, 1)}
    for s in (0, 1):
        assert (out / f"seed{s}" / "coco_instances_results.json").is_file()
    assert os.path.isfile(os.path.join(cache, "coco_trainval_novel_1shot_seed1", "tv.pt"))
    summary = _load(out / "results_seeds.json")
    assert {int(k) for k in summary["seeds"]} == {0, 1}
    for task in ("bbox", "segm"):
        assert "±" in table and task in table
        for m in METRICS:
            vals = [per_seed[s][task][m] for s in (0, 1)]
            if any(math.isnan(v) for v in vals):
                continue
            agg = summary["aggregate"][task][m]
            # TFA tools/aggregate_seeds.py: np.mean and np.std (population)
            assert agg["mean"] == pytest.approx(sum(vals) / 2)
            assert agg["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2)
            assert f"{agg['mean']:.2f} ± {agg['std']:.2f}" in table


def _rank_worker(rank, world, url, argv, out):
    # gloo on CPU whatever the machine has (detectron2's launch picks NCCL when a GPU exists)
    from detectron2.utils import comm

    from diffews.predictor import DiffewSPredictor as P

    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    comm.create_local_process_group(world)
    calls = {"supports": 0, "images": 0}
    encode_supports, encode_images = P.encode_supports, P.encode_images

    def count_supports(self, *a, **k):
        calls["supports"] += 1
        return encode_supports(self, *a, **k)

    def count_images(self, images, *a, **k):
        calls["images"] += len(images)
        return encode_images(self, images, *a, **k)

    P.encode_supports, P.encode_images = count_supports, count_images
    run_fsod.main(run_fsod.parse_args(argv))
    with open(os.path.join(out, f"calls{rank}.json"), "w") as f:
        json.dump(calls, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(env, run_a, run_seeds):
    """COCO-to-VOC seed 0 in 2 processes against the 1-process run. Its support folder lacks
    two classes: the main process encodes them while the other waits, then loads all 20."""
    out = env["base"] / "run_2proc"
    folder = out / "support_sets" / "coco_trainval_novel_1shot"
    shutil.copytree(run_a / "support_sets" / "coco_trainval_novel_1shot", folder)
    os.remove(folder / "cat.pt")
    os.remove(folder / "dog.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = _argv(env, out, test="voc")
    mp.start_processes(_rank_worker, args=(2, f"tcp://127.0.0.1:{port}", argv, str(out)),
                       nprocs=2, start_method="spawn")
    calls = [_load(out / f"calls{r}.json") for r in (0, 1)]
    # the main process encodes the 2 missing sets, the other loads; 3 test images split 2 + 1
    assert [c["supports"] for c in calls] == [2, 0]
    assert [c["images"] for c in calls] == [2, 1]
    assert (folder / "cat.pt").is_file() and (folder / "dog.pt").is_file()
    single = run_seeds[0] / "seed0"
    assert_metrics_equal(_load(out / "results.json"), _load(single / "results.json"))
    assert _load(out / "coco_instances_results.json") == \
        _load(single / "coco_instances_results.json")


def test_missing_split_file_class_or_image_is_one_line_error(env, tmp_path, capsys):
    root = str(tmp_path / "data")
    write_fsod_tree(root, shots=(1,), seeds=(1,))
    base = ["--config-file", CFG, "--shot", "1", "--seed", "1", "--output",
            str(tmp_path / "out"), "--root", root, *env["opts"]]

    def error():
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1
        return lines[0]

    missing = split_path(root, 1, 1, "dog")
    os.rename(missing, missing + ".bak")
    assert run_fsod.cli(base) == 1
    assert missing in error()
    os.rename(missing + ".bak", missing)
    # a class file without any instance of its class
    cat = split_path(root, 1, 1, "cat")
    data = _load(cat)
    data["annotations"] = []
    with open(cat, "w") as f:
        json.dump(data, f)
    assert run_fsod.cli(base) == 1
    line = error()
    assert cat in line and "no instance of class 'cat'" in line
    os.remove(tmp_path / "data" / "coco" / "trainval2014" / sorted(
        os.listdir(tmp_path / "data" / "coco" / "trainval2014"))[0])
    assert run_fsod.cli(base) == 1
    assert "trainval2014" in error()
    assert run_fsod.cli(base + ["TEST.FSOD.INSTANCE_MODE", "boxes"]) == 2
    assert "TEST.FSOD.INSTANCE_MODE" in error()


def test_parse_seeds():
    assert run_fsod.parse_seeds("0-9") == list(range(10))
    assert run_fsod.parse_seeds("3,1,1") == [1, 3]
    assert run_fsod.parse_seeds("2-12") is None and run_fsod.parse_seeds("a") is None


class _OraclePredictor:
    """predict_many returns, per class, the union of its ground-truth instances (what a perfect
    few-shot semantic segmenter outputs): white where the mask is, score 1; predict_instances
    splits them with DiffewS's readout (``predictor/instances.py``) in ``mode``."""

    def __init__(self, gt_json, image_root, mode="mask+components"):
        self.mode = mode
        with contextlib.redirect_stdout(io.StringIO()):
            self.api = COCO(gt_json)
        self.ids = {}
        for img in self.api.dataset["images"]:
            key = read_image(os.path.join(image_root, img["file_name"])).tobytes()
            self.ids[key] = img["id"]

    def encode_images(self, images):
        return [self.ids[images[0].tobytes()]]

    def predict_many(self, image_id, sets, batch_size):
        img = self.api.imgs[image_id]
        out = []
        for cid in NOVEL_IDS:
            mask = np.zeros((img["height"], img["width"]), bool)
            for a in self.api.imgToAnns[image_id]:
                if a["category_id"] == cid and not a["iscrowd"]:
                    mask |= self.api.annToMask(a).astype(bool)
            working = resize_mask(mask.astype(np.uint8), SIZE) * 255
            out.append({"mask": mask, "pred_image": np.repeat(working[..., None], 3, axis=2),
                        "score": 1.0})
        return out

    def predict_instances(self, image, sets, batch_size, presence_threshold=None):
        results = self.predict_many(self.encode_images([image])[0], sets, batch_size)
        return instances.predictions_to_instances(results, image.shape[:2], mode=self.mode,
                                                  min_area=0)


def test_instance_modes_with_oracle_predictions(env, tmp_path):
    """Through fsod_inference and the evaluator: "components" recovers every instance of the
    tree (its same-class instances never touch), AP 100; "mask" merges the two persons of image
    100 and the two chairs of image 102, so it must lose AP."""
    test_records = coco_fsod_reader.load_fsod_test("coco_test_novel", env["root"])
    ap = {}
    for mode in MODES:
        oracle = _OraclePredictor(env["tree"]["test_json"],
                                  os.path.join(env["root"], "coco", "val2014"), mode)
        cfg = _cfg(env, "TEST.FSOD.INSTANCE_MODE", mode, "TEST.FSOD.MIN_AREA", "0")
        out = tmp_path / mode
        evaluator = FSODEvaluator("coco_test_novel", output_dir=str(out), root=env["root"])
        res = fsod.fsod_inference(oracle, [None] * 20, test_records, evaluator, cfg)
        ref = pycocotools_metrics(env["tree"]["test_json"],
                                  _load(out / "coco_instances_results.json"), NOVEL_IDS)
        assert_metrics_equal(res, ref)
        ap[mode] = {t: res[t]["AP"] for t in ("bbox", "segm")}
    assert ap["components"] == {"bbox": 100.0, "segm": 100.0}
    assert ap["mask"]["segm"] < 90 and ap["mask"]["bbox"] < 90


def test_absent_class_gives_no_instance_and_class_confidence(env):
    """A class judged absent (empty mask, present False) gives no instance; CLASS_SCORE picks 1,
    the score, the presence (clipped to [0, 1]) or their product."""
    white = np.full((SIZE, SIZE, 3), 255, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:9] = True
    present = {"mask": mask, "pred_image": white, "score": 0.5, "presence": 0.8, "present": True}
    absent = {"mask": np.zeros_like(mask), "pred_image": white, "score": 0.0, "presence": 0.1,
              "present": False}
    for mode, expected in [("none", 1.0), ("contrast", 0.5), ("presence", 0.8),
                           ("contrast*presence", 0.4)]:
        inst = instances.predictions_to_instances([absent, present], (20, 30), mode="mask",
                                                  min_area=0, class_score=mode)
        assert inst.pred_classes.tolist() == [1]  # only the present class
        assert inst.scores.tolist() == pytest.approx([expected])  # mean probability 1 x conf
    assert instances.class_confidence({**present, "presence": 3.0}, "presence") == 1.0


def test_max_dets_is_the_evaluators_not_topk(env, tmp_path, monkeypatch):
    """TEST.FSOD.TOPK (instances kept) and TEST.FSOD.MAX_DETS (the AP definition) are apart."""
    from diffews.evaluation import instance_evaluation

    seen = {}

    class Capture:
        def __init__(self, *args, max_dets_per_image=None, **kwargs):
            seen["max_dets"] = max_dets_per_image
            raise RuntimeError("captured")

    monkeypatch.setattr(instance_evaluation, "FSODEvaluator", Capture)
    monkeypatch.setattr(fsod_job, "prepare_support_sets", lambda *a, **k: [None] * 20)
    cfg = _cfg(env, "TEST.FSOD.TOPK", "7", "TEST.FSOD.MAX_DETS", "100")
    with pytest.raises(RuntimeError, match="captured"):
        fsod.evaluate_fsod(cfg, None, str(tmp_path), env["root"])
    assert seen["max_dets"] == 100
    bad = _cfg(env, "TEST.FSOD.MAX_DETS", "0")
    with pytest.raises(Exception, match="TEST.FSOD.MAX_DETS must be >= 1"):
        fsod.check_fsod_config(bad)
