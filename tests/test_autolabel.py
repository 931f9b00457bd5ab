# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/autolabel.py on a tiny labelling job (tests/_autolabel_trees.py) with the tiny model:
the COCO json against the predictor and the instance evaluator, kill -9 and resume, 2 processes,
a corrupt image, a changed command, the journal itself."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from _autolabel_trees import write_autolabel_tree
from conftest import SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import autolabel  # noqa: E402

CFG = os.path.join(ROOT, "configs", "Base-DiffewS.yaml")
CLASSES = ("apple", "bird")


@pytest.fixture(scope="module")
def job(tiny_sd, tmp_path_factory):
    base = tmp_path_factory.mktemp("autolabel")
    tree = write_autolabel_tree(str(base / "tree"), classes=CLASSES, shots=2, per_class=3)
    opts = ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", str(SIZE),
            "MODEL.DEVICE", "cpu", "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
            "DATALOADER.NUM_WORKERS", "0"]
    return {"base": base, "tree": tree, "opts": opts}


def argv(job, out, *extra, supports=None):
    return ["--config-file", CFG, "--supports", supports or job["tree"]["supports"], "--images",
            job["tree"]["images"], "--output", str(out), "--max-bad-fraction", "0.5", *extra,
            *job["opts"]]


@pytest.fixture(scope="module")
def run_a(job):
    out = job["base"] / "run_a"
    assert autolabel.cli(argv(job, out, "--save-masks")) == 0
    return out


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _load(path):
    with open(path) as f:
        return json.load(f)


def _reference_instances(tiny_sd, job):
    """Each image against each class through the public predictor API, then the instance rules
    (docs/METHOD.md section 7.2 / predictor/instances.py with TEST.FSOD's defaults),
    independently of the autolabel code: {file name: Instances}."""
    from detectron2.config import get_cfg

    from diffews import DiffewSPredictor, add_diffews_config
    from diffews.predictor.instances import masks_to_instances
    from diffews.utils.image import read_image, read_label, resize_mask

    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_file(CFG)
    cfg.merge_from_list(job["opts"])
    predictor = DiffewSPredictor.from_config(cfg)
    sets = []
    for name in CLASSES:
        folder = os.path.join(job["tree"]["supports"], name)
        stems = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".jpg"))
        sets.append(predictor.encode_supports(
            [os.path.join(folder, s + ".jpg") for s in stems],
            [read_label(os.path.join(folder, s + ".png")) >= 128 for s in stems]))
    f = cfg.TEST.FSOD
    out = {}
    for name in job["tree"]["names"]:
        image = read_image(os.path.join(job["tree"]["images"], name))
        results = predictor.predict_many(image, sets, batch_size=int(cfg.TEST.FSOD.BATCH_SIZE))
        # probability: the decoded prediction's RGB mean / 255, resized as the mask is
        probs = [resize_mask(r["pred_image"].astype(np.float32).mean(-1) / 255.0,
                             image.shape[:2]) for r in results]
        out[name] = masks_to_instances(np.stack([r["mask"] for r in results]), np.stack(probs),
                                       mode=f.INSTANCE_MODE, min_area=int(f.MIN_AREA),
                                       topk=int(f.TOPK))
    return out, (predictor, sets, cfg)


def _cocoeval(gt_json, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        out = {}
        for task in ("bbox", "segm"):
            ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[task] = 100 * float(ev.stats[0])
    return out


def test_coco_json_matches_predictor_and_instance_evaluator(tiny_sd, job, run_a):
    from detectron2.data import MetadataCatalog

    from diffews.evaluation import FSODEvaluator

    data = _load(run_a / "annotations.json")
    gt = _load(job["tree"]["gt"])
    assert data["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in data["images"]] == \
        [(i["id"], i["file_name"], i["height"], i["width"]) for i in gt["images"]]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    reference, (predictor, sets, cfg) = _reference_instances(tiny_sd, job)
    ids = {i["file_name"]: i["id"] for i in data["images"]}
    for name, inst in reference.items():
        anns = [a for a in data["annotations"] if a["image_id"] == ids[name]]
        assert len(anns) == len(inst) > 0
        for a, m, s, c in zip(anns, inst.pred_masks.numpy(), inst.scores.tolist(),
                              inst.pred_classes.tolist()):
            decoded = mask_util.decode(a["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, m)
            assert a["category_id"] == c + 1 and a["score"] == pytest.approx(s, abs=1e-6)
            assert a["area"] == int(m.sum()) and a["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
    # the repository's instance evaluator, fed the reference predictions, reports the AP that
    # pycocotools computes from annotations.json against the tree's ground truth
    name = "autolabel_test_gt"
    MetadataCatalog.get(name).set(json_file=job["tree"]["gt"], eval_category_ids=[1, 2],
                                  thing_classes=list(CLASSES),
                                  thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    ev = FSODEvaluator(name, distributed=False)
    ev.reset()
    for file_name, inst in reference.items():
        ev.process([{"image_id": ids[file_name]}], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):
        reported = ev.evaluate()
    ours = _cocoeval(job["tree"]["gt"], data["annotations"])
    for task in ("bbox", "segm"):
        assert ours[task] == pytest.approx(reported[task]["AP"], abs=1e-9), task
    # a presence threshold above every prediction's presence judges every class absent: no
    # annotation, an empty label map (the presence decision of MODEL.DIFFEWS.PRESENCE_*)
    from diffews.tasks.autolabel import label_image
    from diffews.utils.image import read_image

    image = read_image(os.path.join(job["tree"]["images"], job["tree"]["names"][0]))
    anns, label = label_image(predictor, sets, image, cfg, threshold=1e9)
    assert anns == [] and not label.any()
    anns, label = label_image(predictor, sets, image, cfg)
    assert len(anns) == len(reference[job["tree"]["names"][0]]) and label.any()
    skipped = _load(run_a / "skipped.json")
    assert [s["file_name"] for s in skipped] == ["zz_corrupt.jpg"]
    assert job["tree"]["corrupt"] in skipped[0]["reason"]
    masks = sorted(os.listdir(run_a / "masks"))
    assert masks == [n + ".png" for n in job["tree"]["names"]]  # x.jpg -> x.jpg.png


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_in_two_processes_gives_identical_outputs(job, run_a):
    """The command of run_a killed with SIGKILL once 1-2 images are journalled, then started
    again with --num-gpus 2 (detectron2 launch, gloo on CPU): the two processes split what is
    left, and every output equals the uninterrupted 1-process run's, byte for byte."""
    out = job["base"] / "killed"
    shards = out / "journal" / "shards"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "autolabel.py"),
                             *argv(job, out, "--save-masks")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and [f for f in os.listdir(shards) if f.endswith(".json")]:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(f for f in os.listdir(shards) if f.endswith(".json"))
    total = len(job["tree"]["names"]) + 1
    print(f"\nkilled (SIGKILL) with {len(done)} of {total} images journalled; "
          f"annotations.json present: {(out / 'annotations.json').exists()}")
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(done) < total and not (out / "annotations.json").exists()
    from diffews.tasks.autolabel import SKIP_PREFIX
    from diffews.utils.journal import Journal

    fingerprint = Journal.stored_fingerprint(str(out / "journal"))
    labelled = [k for k in Journal(str(out / "journal"), fingerprint, create=False).keys()
                if not k.startswith(SKIP_PREFIX)]
    # the same command, in 2 processes: only what is left
    assert autolabel.cli(argv(job, out, "--save-masks", "--num-gpus", "2")) == 0
    # the summary counts the images both processes labelled (issue 29 item 13)
    with open(out / "log.txt") as f:
        summary = [x for x in f if "labelled now" in x][-1]
    good = len(job["tree"]["names"])
    assert f"{good + 1} images ({good - len(labelled)} labelled now)" in summary, summary
    assert _bytes(out / "annotations.json") == _bytes(run_a / "annotations.json")
    assert _bytes(out / "skipped.json") == _bytes(run_a / "skipped.json")
    for name in sorted(os.listdir(run_a / "masks")):
        assert _bytes(out / "masks" / name) == _bytes(run_a / "masks" / name)
    print(f"resumed in 2 processes: annotations.json ({len(_bytes(out / 'annotations.json'))} "
          f"bytes), skipped.json and {len(os.listdir(run_a / 'masks'))} label PNGs identical "
          "to the uninterrupted 1-process run's")


def _error(capsys):
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_changed_command_refused_and_bad_fraction_stops(job, run_a, capsys):
    before = _bytes(run_a / "annotations.json")
    assert autolabel.cli(argv(job, run_a, "TEST.FSOD.MIN_AREA", "3")) == 2
    line = _error(capsys)
    assert str(run_a) in line and "TEST.FSOD.MIN_AREA" in line and "--overwrite" in line
    assert autolabel.cli(argv(job, run_a, "--presence-threshold", "0.4")) == 2
    assert "presence_threshold" in _error(capsys)
    # the same command with a stricter bad-image limit: the unreadable image is retried, stops
    assert autolabel.cli(argv(job, run_a)) == 2  # without --save-masks: another command too
    assert "save_masks" in _error(capsys)
    args = argv(job, run_a, "--save-masks")
    args[args.index("--max-bad-fraction") + 1] = "0"
    assert autolabel.cli(args) == 1, capsys.readouterr().err
    line = _error(capsys)
    assert job["tree"]["corrupt"] in line and "--max-bad-fraction 0" in line
    assert _bytes(run_a / "annotations.json") == before


def test_saved_support_sets_and_coco_json_as_supports(job, run_a):
    """OUT/support_sets/ as SRC gives the same json; a COCO json SRC gives the same annotations
    under its own category ids."""
    out = job["base"] / "from_sets"
    assert autolabel.cli(argv(job, out, supports=str(run_a / "support_sets"))) == 0
    assert _bytes(out / "annotations.json") == _bytes(run_a / "annotations.json")
    out = job["base"] / "from_coco"
    assert autolabel.cli(argv(job, out, "--supports-images", job["tree"]["supports_flat"],
                              supports=job["tree"]["supports_json"])) == 0
    a, b = _load(run_a / "annotations.json"), _load(out / "annotations.json")
    assert [c["id"] for c in b["categories"]] == [10, 20]
    for x in b["annotations"]:
        x["category_id"] //= 10
    assert a["annotations"] == b["annotations"]


def test_journal_shards_resume_and_refuse(tmp_path):
    from diffews.utils.journal import Journal, JournalMismatch

    j = Journal(str(tmp_path), {"model": "a", "t": 0.5})
    assert j.pending(["x", "y/z", "w"]) == ["x", "y/z", "w"]
    j.put("y/z", {"v": [0.1, 1e-30]})
    # a half-written temporary file (a killed write) is not a shard
    with open(os.path.join(j.shard_dir, ".x.json.123.tmp"), "w") as f:
        f.write("{")
    j2 = Journal(str(tmp_path), {"t": 0.5, "model": "a"})  # same fingerprint, any key order
    assert j2.pending(["x", "y/z", "w"]) == ["x", "w"]
    assert j2.collect(["y/z"]) == [{"v": [0.1, 1e-30]}] and j2.keys() == ["y/z"]
    with pytest.raises(KeyError, match="'w'"):
        j2.collect(["y/z", "w"])
    with pytest.raises(JournalMismatch, match=r"model: \"a\" -> \"b\""):
        Journal(str(tmp_path), {"model": "b", "t": 0.5})
    j3 = Journal(str(tmp_path), {"model": "b", "t": 0.5}, overwrite=True)
    assert j3.pending(["y/z"]) == ["y/z"]
    Journal.verify(str(tmp_path), {"model": "b", "t": 0.5})


def test_presence_threshold_is_the_models_key():
    """The flag wins (< 0: no decision); otherwise the model's own key, DiffewS's or SINE's; a key
    < 0 leaves the predictor's default (None), e.g. what calibrated weights carry."""
    from diffews.config import build_config
    from diffews.tasks.autolabel.job import LabelJob, NO_DECISION, presence_threshold

    job = LabelJob(supports="s", images="i", output="o")
    diffews_cfg = build_config(opts=["MODEL.DIFFEWS.PRESENCE_THRESHOLD", 0.3,
                                     "MODEL.SINE.PRESENCE_THRESHOLD", 0.8])
    sine_cfg = build_config(opts=["MODEL.META_ARCHITECTURE", "SINE",
                                  "MODEL.DIFFEWS.PRESENCE_THRESHOLD", 0.3,
                                  "MODEL.SINE.PRESENCE_THRESHOLD", 0.8])
    assert presence_threshold(diffews_cfg, job) == pytest.approx(0.3)
    assert presence_threshold(sine_cfg, job) == pytest.approx(0.8)
    sine_cfg.MODEL.SINE.PRESENCE_THRESHOLD = -1.0
    assert presence_threshold(sine_cfg, job) is None
    job.presence_threshold = -1.0
    assert presence_threshold(diffews_cfg, job) == NO_DECISION
    job.presence_threshold = 0.5
    assert presence_threshold(sine_cfg, job) == 0.5
