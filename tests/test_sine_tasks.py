# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Every entry point with a SINE config (configs/sine/*.yaml plus tiny-model overrides), through
the same code as DiffewS: run_fss (FSS benchmark episodes), run_fsod (TFA protocol), run_vos
(DAVIS layout), tools/demo.py and tools/autolabel.py; what each writes equals what the
``SINEPredictor`` gives for the same inputs (the predictor itself is checked against the
original code in tests/test_sine_predictor.py)."""

import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from _sine import ROOT, tiny_opts
from diffews.predictor import build_predictor
from tests._fsod_trees import write_fsod_tree
from tests._vos_trees import write_davis_tree

for folder in ("tools", "inference_fss", "inference_fsod", "inference_vos"):
    sys.path.insert(0, os.path.join(ROOT, folder))
import autolabel as autolabel_tool  # noqa: E402
import demo as demo_tool  # noqa: E402
import run_fsod  # noqa: E402
import run_fss  # noqa: E402
import run_vos  # noqa: E402

SINE = os.path.join(ROOT, "configs", "sine")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random SINE saved as the released file is laid out (the whole training model's
    state dict plus criterion.empty_weight)."""
    from detectron2.modeling import build_model

    from _sine import sine_cfg

    torch.manual_seed(0)
    model = build_model(sine_cfg())
    state = dict(model.state_dict(), **{"criterion.empty_weight": torch.tensor([1.0, 0.1])})
    path = str(tmp_path_factory.mktemp("sine") / "pytorch_model.bin")
    torch.save(state, path)
    return path


def _opts(weights, *extra):
    return [*map(str, tiny_opts()), "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", *map(str, extra)]


def test_demo_writes_the_predictors_masks(weights, tmp_path):
    """tools/demo.py with configs/sine/Base-SINE.yaml (working size 56, padded to 84)."""
    rng = np.random.RandomState(0)
    paths = []
    for i in range(3):
        image = rng.randint(0, 255, (40 + 10 * i, 50, 3)).astype(np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[5:25, 10:30] = 255
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
        Image.fromarray(mask).save(tmp_path / f"im{i}_mask.png")
        paths.append((str(tmp_path / f"im{i}.png"), str(tmp_path / f"im{i}_mask.png")))
    sizes = ["MODEL.SINE.IMAGE_SIZE", 56, "MODEL.SINE.PAD_SIZE", 84, "INPUT.IMAGE_SIZE", 56]
    out = tmp_path / "out"
    argv = ["--config-file", os.path.join(SINE, "Base-SINE.yaml"), "--support", *paths[0],
            "--query", paths[1][0], paths[2][0], "--output", str(out), *_opts(weights, *sizes)]
    assert demo_tool.cli(argv) == 0
    from _sine import sine_cfg

    predictor = build_predictor(sine_cfg("MODEL.WEIGHTS", weights, *sizes))
    supports = predictor.encode_supports([paths[0][0]], [paths[0][1]])
    for r in predictor.predict([paths[1][0], paths[2][0]], supports):
        stem = os.path.splitext(os.path.basename(r["name"]))[0]
        written = np.asarray(Image.open(out / f"{stem}_mask.png")) > 0
        assert written.shape == r["mask"].shape and np.array_equal(written, r["mask"])


def test_run_fss_synthetic(weights, tmp_path):
    """run_fss.py --benchmark synthetic with the SINE FSS config: results.json with mIoU."""
    sizes = ["MODEL.SINE.IMAGE_SIZE", 56, "MODEL.SINE.PAD_SIZE", 84, "INPUT.IMAGE_SIZE", 56]
    out = tmp_path / "fss"
    argv = ["--config-file", os.path.join(SINE, "sine_dinov2l_fss.yaml"), "--benchmark",
            "synthetic", "--shot", "1", "--num-episodes", "3", "--output", str(out),
            *_opts(weights, *sizes)]
    assert run_fss.cli(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["folds"]["0"]["num_episodes"] == 3 and 0.0 <= res["mean"]["mIoU"] <= 100.0


@pytest.fixture(scope="module")
def fsod_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("sine_fsod")
    return {"base": base, "root": str(base / "data"),
            "tree": write_fsod_tree(str(base / "data"), shots=(1,), seeds=(0,))}


def test_run_fsod_equals_predict_instances(weights, fsod_env):
    """run_fsod.py with the FSIS config: the detections of a test image are the predictor's
    predict_instances for the same supports (pooled from the split's polygons)."""
    sizes = ["MODEL.SINE.PAD_SIZE", 84, "MODEL.SINE.IMAGE_SIZE", 84, "INPUT.MIN_SIZE_TEST", 84,
             "INPUT.MAX_SIZE_TEST", 84, "TEST.FSOD.TOPK", 10]
    out = fsod_env["base"] / "run"
    argv = ["--config-file", os.path.join(SINE, "sine_dinov2l_fsis.yaml"), "--test", "coco",
            "--shot", "1", "--seed", "0", "--output", str(out), "--dataset-root",
            fsod_env["root"], *_opts(weights, *sizes)]
    assert run_fsod.cli(argv) == 0
    assert "segm" in json.loads((out / "results.json").read_text())
    dets = json.loads((out / "coco_instances_results.json").read_text())
    from _sine import sine_cfg
    from diffews.data.datasets.coco_fsod_reader import NOVEL_ID_MAP, load_fsod_test
    from diffews.tasks import fsod
    from diffews.utils.image import read_image

    cfg = sine_cfg("MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", 0, *sizes,
                   config_file=os.path.join(SINE, "sine_dinov2l_fsis.yaml"))
    predictor = build_predictor(cfg)
    sets = fsod.class_support_sets(predictor, fsod.support_records(cfg, fsod_env["root"]),
                                   str(out / "support_sets" / "coco_trainval_novel_1shot"),
                                   compute=False)
    record = load_fsod_test("coco_test_novel", fsod_env["root"])[0]
    inst = predictor.predict_instances(read_image(record["file_name"]), sets)
    mine = sorted((round(d["score"], 5), d["category_id"]) for d in dets
                  if d["image_id"] == record["image_id"])
    ids = {v: k for k, v in NOVEL_ID_MAP.items()}
    theirs = sorted((round(float(s), 5), ids[int(c)]) for s, c in
                    zip(inst.scores.tolist(), inst.pred_classes.tolist()))
    assert mine == theirs and len(mine) > 0


def test_run_vos_writes_the_trackers_label_maps(weights, tmp_path):
    """run_vos.py with the VOS config on the DAVIS 2017 val tree: each written PNG is the
    predictor's video tracker's label map."""
    root = str(tmp_path / "data")
    write_davis_tree(root)
    sizes = ["MODEL.SINE.IMAGE_SIZE", 42, "MODEL.SINE.PAD_SIZE", 42, "TEST.VOS.FRAME_SIZE", 28,
             "TEST.VOS.MEM_SIZE", 3]
    out = tmp_path / "vos"
    argv = ["--config-file", os.path.join(SINE, "sine_dinov2l_vos.yaml"), "--dataset",
            "davis17_val", "--videos", "thin", "--output", str(out), "--dataset-root", root,
            "--no-eval", *_opts(weights, *sizes)]
    assert run_vos.cli(argv) == 0
    from _sine import sine_cfg
    from diffews.tasks import vos

    predictor = build_predictor(sine_cfg("MODEL.WEIGHTS", weights, *sizes,
                                         config_file=os.path.join(SINE, "sine_dinov2l_vos.yaml")))
    (record,) = vos.load_vos_records("davis17_val", root, ["thin"])
    for frame in vos.VOSEngine(predictor, mem_size=3).segment_video(record):
        png = np.asarray(Image.open(out / "thin" / f"{frame['frame']}.png"))
        assert np.array_equal(png.astype(np.int64), frame["label_map"])


def test_autolabel_gives_the_predictors_instances(weights, tmp_path):
    """tools/autolabel.py with the FSIS config and COCO-json supports: every annotation is one
    of predict_instances's instances for the same supports (polygons or RLE, as given)."""
    from tests._autolabel_trees import write_autolabel_tree

    tree = write_autolabel_tree(str(tmp_path / "data"), corrupt=False)
    sizes = ["MODEL.SINE.PAD_SIZE", 84, "MODEL.SINE.IMAGE_SIZE", 84, "INPUT.MIN_SIZE_TEST", 84,
             "INPUT.MAX_SIZE_TEST", 84, "TEST.FSOD.TOPK", 5]
    out = tmp_path / "label"
    argv = ["--config-file", os.path.join(SINE, "sine_dinov2l_fsis.yaml"), "--supports",
            tree["supports_json"], "--supports-images", tree["supports_flat"], "--images",
            tree["images"], "--output", str(out), "--presence-threshold", "-1",
            *_opts(weights, *sizes)]
    assert autolabel_tool.cli(argv) == 0
    data = json.loads((out / "annotations.json").read_text())
    from _sine import sine_cfg
    from diffews.tasks import autolabel

    cfg = sine_cfg("MODEL.WEIGHTS", weights, *sizes,
                   config_file=os.path.join(SINE, "sine_dinov2l_fsis.yaml"))
    predictor = build_predictor(cfg)
    source = autolabel.read_supports(tree["supports_json"], tree["supports_flat"])
    sets = autolabel.support_sets(predictor, source, str(out / "support_sets"), compute=False)
    ids = [c["id"] for c in source.categories]
    by_image = {im["id"]: im["file_name"] for im in data["images"]}
    for image_id, name in list(by_image.items())[:2]:
        inst = predictor.predict_instances(os.path.join(tree["images"], name), sets)
        mine = sorted((a["category_id"], round(a["score"], 5)) for a in data["annotations"]
                      if a["image_id"] == image_id)
        theirs = sorted((ids[c], round(s, 5)) for c, s in
                        zip(inst.pred_classes.tolist(), inst.scores.tolist()))
        assert mine == theirs
        for a in data["annotations"]:
            if a["image_id"] == image_id:
                assert mask_util.decode(a["segmentation"]).any()


def test_web_demo_session_with_sine(weights, tmp_path):
    """The web demo's session over a SINEPredictor: the page's mask is the predictor's, and the
    page is titled with the model."""
    import zipfile

    from _sine import sine_cfg
    from diffews.web_demo import WebDemoSession

    sizes = ["MODEL.SINE.IMAGE_SIZE", 56, "MODEL.SINE.PAD_SIZE", 84, "INPUT.IMAGE_SIZE", 56]
    predictor = build_predictor(sine_cfg("MODEL.WEIGHTS", weights, *sizes))
    image = np.full((48, 64, 3), 30, np.uint8)
    image[10:30, 20:40] = 225
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(image).save(tmp_path / "q.png")
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"))
    out = session.run([{"background": image, "layers": [], "composite": None}],
                      [str(tmp_path / "m.png")], [str(tmp_path / "q.png")])
    (r,) = out.results
    (expected,) = predictor.predict([str(tmp_path / "q.png")],
                                    predictor.encode_supports([image], [mask]))
    with zipfile.ZipFile(out.zip_path) as zf:
        written = np.asarray(Image.open(zf.open("q_mask.png"))) > 0
    assert np.array_equal(written, expected["mask"])
    assert predictor.architecture == "SINE"
