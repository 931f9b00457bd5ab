# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Video object segmentation with DiffewS (diffews/tasks/vos/, inference_vos/run_vos.py): the memory
rule and the merge rule against hand-worked examples, the cost per frame counted with hooks,
support reuse on/off, and the whole pipeline on synthetic DAVIS / YouTube-VOS trees in their
official layouts (tests/_vos_trees.py) with the tiny model."""

import os
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SIZE, make_cfg
from diffews import DiffewSPredictor
from diffews.evaluation.vos_evaluation import evaluate_davis
from diffews.modeling import save_release_unet
from diffews.cli import run_cli
from diffews.predictor.diffews_video import decay_factor, merge_objects, select_memory
from diffews.tasks import vos
from diffews.tasks.vos import VOSEngine, load_vos_records
from tests._vos_trees import (block, write_davis_sequence, write_davis_tree, write_list,
                               write_ytvos_tree)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_vos"))
import run_vos as run_vos_cli  # noqa: E402


def run_vos(cfg, dataset, output, **kwargs):
    """``vos.run`` of a ``VOSJob`` built from the keyword arguments."""
    return vos.run(cfg, vos.VOSJob(dataset, output, **kwargs))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("vos")
    davis = write_davis_tree(str(root))
    write_ytvos_tree(str(root), num_frames=6)
    return {"root": str(root), "davis": davis}


@pytest.fixture(scope="module")
def release(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    save_release_unet(tiny_model.unet, str(folder / "unet"))
    return str(folder)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


@pytest.fixture(autouse=True)
def _plain_logging(monkeypatch):
    """detectron2's setup_logger would bind a handler to the first test's captured stdout."""
    monkeypatch.setattr(run_vos_cli, "setup_logger", lambda **kwargs: None)


def _record(tree, dataset, video):
    (record,) = load_vos_records(dataset, tree["root"], [video])
    return record


# -- the rules, by hand ----------------------------------------------------------------------------
def test_memory_selection_hand_worked():
    """docs/METHOD.md section 7.3: keep the first frame plus num_frame - 1 past frames, chosen by a
    min-heap on score * max(0, 1 - dt / ratio), dt = distance to the newest frame (linear, ratio
    20)."""
    assert decay_factor(0, 20) == 1.0 and decay_factor(5, 20) == pytest.approx(0.75)
    assert decay_factor(20, 20) == 0.0 and decay_factor(35, 20) == 0.0
    assert decay_factor(35, 0) == 1.0  # ratio 0: no decay
    cap = 2  # mem_size 3 = the first frame + 2 past frames
    assert select_memory([], (1, 0.9), cap, 20) == [1]
    assert select_memory([(1, 0.9)], (2, 0.5), cap, 20) == [1, 2]
    # frame 3 (0.8): decayed 0.9 * 18/20 = 0.81 (frame 1), 0.5 * 19/20 = 0.475 (frame 2), 0.8
    # (frame 3): frame 2 is the smallest and leaves
    assert select_memory([(1, 0.9), (2, 0.5)], (3, 0.8), cap, 20) == [1, 3]
    # frame 4 (0.05): 0.9 * 17/20 = 0.765, 0.8 * 19/20 = 0.76, 0.05: the new frame is not kept
    assert select_memory([(1, 0.9), (3, 0.8)], (4, 0.05), cap, 20) == [1, 3]
    # frame 25 (0.1): frames 1 and 3 are 24 and 22 frames old, both decayed to 0, tied; the heap
    # then compares the raw score: frame 3 (0.8 < 0.9) leaves
    assert select_memory([(1, 0.9), (3, 0.8)], (25, 0.1), cap, 20) == [1, 25]
    # without decay the highest raw scores stay
    assert select_memory([(1, 0.9), (3, 0.8)], (25, 0.85), cap, 0) == [1, 25]
    assert select_memory([(1, 0.9), (3, 0.8)], (25, 0.7), cap, 0) == [1, 3]
    # mem_size 1: the first frame only, nothing past is ever kept
    assert select_memory([], (1, 1.0), 0, 20) == []


def test_merge_rule_hand_made():
    """Overlaps go to the object with the brighter prediction there; a tie to the higher id."""
    a = np.array([[1, 1, 1, 0],
                  [1, 1, 1, 0],
                  [0, 0, 0, 0]], bool)
    b = np.array([[0, 1, 1, 1],
                  [0, 1, 1, 1],
                  [0, 0, 0, 1]], bool)
    conf_a = np.array([[.9, .9, .5, .9],
                       [.9, .3, .6, .9],
                       [.9, .9, .9, .9]])
    conf_b = np.array([[.1, .8, .5, .1],
                       [.1, .8, .2, .1],
                       [.1, .1, .1, .1]])
    # (0,1): 0.9 vs 0.8 -> 1; (0,2): 0.5 vs 0.5, a tie -> 2; (1,1): 0.3 vs 0.8 -> 2;
    # (1,2): 0.6 vs 0.2 -> 1; object 1's confidence outside its mask ((0,3), row 2) does not count
    expect = np.array([[1, 1, 2, 2],
                       [1, 2, 1, 2],
                       [0, 0, 0, 2]])
    label = merge_objects({1: a, 2: b}, {1: conf_a, 2: conf_b}, (3, 4))
    assert label.dtype == np.int64 and np.array_equal(label, expect)
    assert not merge_objects({}, {}, (2, 3)).any()
    with pytest.raises(ValueError, match="frame's size"):
        merge_objects({1: a}, {1: conf_a}, (4, 4))


# -- cost per frame ------------------------------------------------------------------------------
class _Counter:
    """Forward pre-hooks: UNet passes by input channels (8 = support, 4 = query; "support"
    counts the supports run, since one support pass may run several) and VAE encodes, split into
    mask images (3 equal channels of exactly -1/+1) and frame images."""

    def __init__(self, model):
        self.n = dict(support=0, query=0, image=0, mask=0)
        self.hooks = [model.unet.register_forward_pre_hook(self._unet),
                      model.vae.encoder.register_forward_pre_hook(self._vae)]

    def _unet(self, module, args):
        if args[0].shape[1] == 8:
            self.n["support"] += args[0].shape[0]
        else:
            self.n["query"] += 1

    def _vae(self, module, args):
        x = args[0]
        assert x.shape[0] == 1  # one image per VAE call, as the reference encodes supports
        is_mask = bool(((x.abs() == 1).all() and (x[:, :1] == x).all()).item())
        self.n["mask" if is_mask else "image"] += 1

    def take(self):
        out, self.n = self.n, dict(support=0, query=0, image=0, mask=0)
        return out

    def close(self):
        for h in self.hooks:
            h.remove()


def test_cost_per_frame_with_reuse(tree, predictor, tiny_model):
    record = _record(tree, "davis17_test_dev", "newcomer")  # object 2 is given at frame 3
    engine = VOSEngine(predictor, mem_size=3, decay_ratio=20)
    counter = _Counter(tiny_model)
    past = {}  # object -> [(frame, score)] replayed with the rule, to check the engine's memory
    entered = []
    try:
        counter.take()
        for out in engine.segment_video(record):
            t, n = out["index"], counter.take()
            # the frame is VAE-encoded once, shared by all its objects and memory entries
            assert n["image"] == 1, (t, n)
            # one query pass per group of objects with as many supports (all fit one batch)
            assert n["query"] == len(set(out["shots"].values()))
            assert sorted(out["shots"]) == sorted(set(out["memory"]) - set(out["given"]))
            # only what enters memory now is encoded: its mask and one support pass each, at
            # most one per object
            assert n["support"] == n["mask"] == len(out["entered"]) <= len(out["memory"])
            entered += [(o, t) for o in out["entered"]]
            # an object is offered to its memory only with pixels in the merged label map
            offers = {**{o: sc for o, sc in out["scores"].items()
                         if out["present"][o] is not False and (out["label_map"] == o).any()},
                      **{o: 1.0 for o in out["given"]}}
            for o, score in offers.items():
                if o in past:
                    kept = select_memory(past[o], (t, score), 2, 20)
                    past[o] = [(f, sc) for f, sc in past[o] + [(t, score)] if f in kept]
                else:
                    past[o] = []
            assert out["memory"] == {o: [record["objects"][o]] + [f for f, _ in past[o]]
                                     for o in past}
            if t < 3:
                assert 2 not in out["memory"] and not (out["label_map"] == 2).any()
    finally:
        counter.close()
    # each object's first-frame support was computed once, at its first annotated frame
    assert [e for e in entered if e[1] == record["objects"][e[0]]] == [(1, 0), (2, 3)]
    assert sorted(set(entered)) == sorted(entered)  # no frame encoded twice for an object


def test_first_frame_support_computed_once(tree, predictor, tiny_model):
    """mem_size 1: the first-frame support is the only support, encoded once per object."""
    record = _record(tree, "davis17_val", "crossing")
    counter = _Counter(tiny_model)
    try:
        counter.take()
        outs = list(VOSEngine(predictor, mem_size=1).segment_video(record))
        n = counter.take()
    finally:
        counter.close()
    frames = len(record["frames"])
    assert n == dict(support=2, mask=2, image=frames, query=frames - 1)  # both objects K = 1
    assert all(o["memory"] == {1: [0], 2: [0]} for o in outs)


def test_reuse_off_reencodes_and_gives_the_same_masks(tree, predictor, tiny_model):
    record = _record(tree, "davis17_val", "thin")  # a 1-px-wide moving line
    cache = tiny_model.support_cache
    on = list(VOSEngine(predictor, mem_size=3).segment_video(record))
    counter = _Counter(tiny_model)
    try:
        counter.take()
        off = []
        for out in VOSEngine(predictor, mem_size=3, reuse_supports=False).segment_video(record):
            n = counter.take()
            shots = sum(out["shots"].values())
            # every support re-encoded from pixels: image + mask + support pass each, plus the
            # query frame (on frame 0 nothing is predicted and nothing encoded)
            assert n["support"] == n["mask"] == shots and n["image"] == (shots > 0) + shots
            off.append(out)
    finally:
        counter.close()
    assert max(sum(o["shots"].values()) for o in off) == 3  # the memory really filled up
    for a, b in zip(on, off):
        assert a["memory"] == b["memory"]
        assert np.array_equal(a["label_map"], b["label_map"])
        for o in a["scores"]:
            assert a["scores"][o] == pytest.approx(b["scores"][o], abs=1e-3)
    assert cache is not None and tiny_model.support_cache is cache  # bypassed, then restored


def test_memory_entry_from_the_merged_region_and_absent_objects(tree, predictor, monkeypatch):
    """Stubbed predictions on a real engine: on frame 1 object 2's prediction covers object 1's
    and is brighter, so object 1 loses every pixel: score 0 (the merged region's) and no memory
    entry. On frame 2 object 2 is judged absent: no pixels, no entry; object 1 is back with no
    presence decision (present None, as without a threshold): "not decided" is not "absent",
    its region joins its memory."""
    record = _record(tree, "davis17_val", "crossing")
    h, w = read_size = Image.open(record["file_names"][0]).size[::-1]
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True

    def result(level, mask, present=True):
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        img[:, : SIZE // 2] = level  # white-ish on the left half, black elsewhere
        return {"mask": mask & (present is not False), "pred_image": img, "present": present,
                "presence": float(level) / 255, "score": 1.0}

    frames = {1: {1: result(150, left), 2: result(250, np.ones((h, w), bool))},
              2: {1: result(200, left, present=None), 2: result(250, left, present=False)}}
    calls = []

    def predict_many(query, sets, batch_size=8, presence_threshold=None):
        t = len(calls) + 1
        calls.append(t)
        return [frames[t][o] for o in (1, 2)]

    monkeypatch.setattr(predictor, "predict_many", predict_many)
    engine = VOSEngine(predictor, mem_size=3, decay_ratio=20)
    outs = []
    for out in engine.segment_video(record):
        outs.append(out)
        if out["index"] == 2:
            break
    assert read_size == outs[0]["label_map"].shape
    one, two = outs[1], outs[2]
    assert not (one["label_map"] == 1).any() and (one["label_map"] == 2).all()
    # scores of the merged regions: object 1 empty -> 0; object 2 the whole frame, no background
    # -> 0 as well (prediction_score's rule), so neither is a confident entry
    assert one["scores"] == {1: 0.0, 2: 0.0}
    assert one["entered"] == [2] and one["memory"] == {1: [0], 2: [0, 1]}
    assert not (two["label_map"] == 2).any() and (two["label_map"] == 1).sum() == left.sum()
    assert two["present"] == {1: None, 2: False}
    # object 1's region: the left half, white 200/255 inside, black outside: 200/255
    assert two["scores"][1] == pytest.approx(200 / 255, abs=1e-6)
    assert two["entered"] == [1] and two["memory"] == {1: [0, 2], 2: [0, 1]}


def test_each_frame_is_predicted_from_its_own_pixels(tmp_path, predictor, tiny_model):
    """A square moves across a 64 x 64 video (the working size: nothing is resized). With the
    first frame as the only support (mem_size 1), frame t's mask must be the model's prediction
    for frame t's pixels given frame 0 and its mask, recomputed here as a plain episode through
    DiffewS.forward on the JPEGs read with PIL. The untrained model cannot follow the square, but
    its predictions differ from frame to frame, so a tracker that copies frame 0's mask (or
    segments frame 0 again) fails."""
    base = str(tmp_path / "DAVIS17" / "trainval")
    labels = [block((SIZE, SIZE), (8 + 4 * t, 27 + 4 * t), (4 + 8 * t, 23 + 8 * t))
              for t in range(4)]
    write_davis_sequence(base, "moving", labels)
    write_list(base, "2017", "val", ["moving"])
    (record,) = load_vos_records("davis17_val", str(tmp_path), ["moving"])
    outs = list(VOSEngine(predictor, mem_size=1).segment_video(record))
    frames = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
              for p in record["file_names"]]
    gt0 = torch.from_numpy(labels[0].astype(np.uint8))
    assert np.array_equal(outs[0]["label_map"], labels[0])  # the given frame
    copy_agreement = []
    for t in range(1, len(labels)):
        assert (labels[t] & labels[0]).sum() < 0.5 * labels[0].sum()  # the square moved
        episode = {"image": frames[t], "support_images": frames[0][None],
                   "support_masks": gt0[None], "class_id": 0}
        expected = tiny_model([episode])[0]["pred_mask"].numpy()
        ours = outs[t]["label_map"] == 1
        if outs[t].get("present", {}).get(1) is False:  # judged absent: nothing predicted
            assert not ours.any(), t
            continue
        assert (ours == expected).mean() >= 0.999, (t, (ours == expected).mean())
        copy_agreement.append((expected == labels[0].astype(bool)).mean())
    # what makes the check meaningful: frame 0's mask is not the prediction of later frames
    assert copy_agreement and min(copy_agreement) < 0.99, copy_agreement


# -- the whole pipeline ----------------------------------------------------------------------------
def _cli(tree, release, out, *args):
    argv = ["--config-file", os.path.join(ROOT, "configs", "vos", "Base-DAVIS17.yaml"),
            "--root", tree["root"], "--output", str(out), *args,
            "MODEL.DIFFEWS.PRETRAINED", os.environ["_VOS_TINY_SD"], "INPUT.IMAGE_SIZE", str(SIZE),
            "MODEL.DEVICE", "cpu"] + (["MODEL.WEIGHTS", release] if release else [])
    args = run_vos_cli.get_parser().parse_args(argv)
    return run_cli(lambda: run_vos_cli.main(args))


@pytest.fixture(autouse=True)
def _tiny_sd_env(tiny_sd, monkeypatch):
    monkeypatch.setenv("_VOS_TINY_SD", tiny_sd)


def _labels(path):
    with Image.open(path) as img:
        assert img.mode == "P"  # palette PNG, as the official results
        return np.array(img)


def test_davis17_val_end_to_end(tree, release, tmp_path, capsys):
    out = tmp_path / "davis17"
    assert _cli(tree, release, out, "--mem-size", "2", "--save-vis") == 0
    printed = capsys.readouterr().out
    assert "Global results for val" in printed and "frames/s" in printed
    for name, labels in tree["davis"]["sequences"].items():
        files = sorted(os.listdir(out / name))
        assert files == [f"{t:05d}.png" for t in range(len(labels))]
        first_ids = set(np.unique(labels[0]).tolist())
        for t, f in enumerate(files):
            pred = _labels(out / name / f)
            assert pred.shape == labels[t].shape  # the frame's own size
            assert set(np.unique(pred).tolist()) <= first_ids  # only first-frame objects
        assert np.array_equal(_labels(out / name / files[0]), labels[0])  # the given frame
        assert (out / "vis" / f"{name}.jpg").is_file()
    # the CSVs written at the end are the scorer's on the written results
    again = evaluate_davis(os.path.join(tree["root"], "DAVIS17", "trainval"), str(out),
                                  progress=False)
    with open(out / "global_results-val.csv") as f:
        header, row = f.read().splitlines()
    assert header.startswith("J&F-Mean,J-Mean")
    assert row.split(",")[0] == "%.3f" % again.global_["J&F-Mean"]
    assert len(again.rows) == 6  # crossing 2 + late-object 3 (K = largest id) + thin 1


def test_test_dev_davis16_and_youtube_vos(tree, release, tmp_path, predictor, monkeypatch):
    monkeypatch.setattr(DiffewSPredictor, "from_config", classmethod(lambda cls, cfg: predictor))
    cfg = make_cfg(os.environ["_VOS_TINY_SD"], "TEST.VOS.MEM_SIZE", 2)
    cfg1 = make_cfg(os.environ["_VOS_TINY_SD"], "TEST.VOS.MEM_SIZE", 1)  # cheaper
    # DAVIS 2017 test-dev: object 2 starts at its first annotated frame (3), given masks win there
    td = tree["davis"]["test_dev"]
    res = run_vos(cfg, "davis17_test_dev", str(tmp_path / "td"), root=tree["root"],
                  progress=False)
    assert res["frames"] == 6 and "scores" not in res
    pred = [_labels(tmp_path / "td" / "newcomer" / f"{t:05d}.png") for t in range(6)]
    assert not any((p == 2).any() for p in pred[:3])
    assert np.array_equal(pred[0], td[0]) and np.array_equal(pred[3], td[3])
    # DAVIS 2016: one merged object, scored with the 2016 rules
    res = run_vos(cfg1, "davis16_val", str(tmp_path / "d16"), root=tree["root"],
                  videos=["thin"], progress=False)
    assert res["scores"].rows[0][0] == "thin_1" and len(res["scores"].rows) == 1
    assert set(np.unique(_labels(tmp_path / "d16" / "thin" / "00002.png")).tolist()) <= {0, 1}
    # YouTube-VOS: every frame read, only meta.json's frames written, a submission zip
    out = tmp_path / "yt"
    res = run_vos(cfg1, "ytvos18_valid", str(out), root=tree["root"], videos=["b"],
                  progress=False)
    assert res["frames"] == 6  # valid_all_frames, not the every-5th-frame valid/JPEGImages
    assert sorted(os.listdir(out / "Annotations")) == ["b"]
    assert sorted(os.listdir(out / "Annotations" / "b")) == ["00000.png", "00005.png"]
    b0, b5 = (_labels(out / "Annotations" / "b" / f) for f in ("00000.png", "00005.png"))
    assert b0.shape == b5.shape == (14, 16)
    given = np.array(Image.open(os.path.join(tree["root"], "YouTubeVOS18", "valid",
                                             "Annotations", "b", "00005.png")))
    assert (given == 2).any() and not (b0 == 2).any()  # object 2 starts at frame 5
    assert np.array_equal(b5[given > 0], given[given > 0])  # where its given mask wins
    with zipfile.ZipFile(res["zip"]) as zf:
        assert sorted(zf.namelist()) == ["Annotations/b/00000.png", "Annotations/b/00005.png"]


def test_cli_errors(tree, release, tmp_path, capsys):
    """Bad options and data fail before the model is built, with one line."""
    assert _cli(tree, release, tmp_path / "x", "--mem-size", "0") == 2
    assert "--mem-size must be >= 1" in capsys.readouterr().err
    assert _cli(tree, None, tmp_path / "x") == 2  # no MODEL.WEIGHTS: an untrained model
    assert "MODEL.WEIGHTS" in capsys.readouterr().err
    assert _cli(tree, release, tmp_path / "x", "--videos", "thin,nosuch") == 1
    assert "error: --videos nosuch: not in davis17_val" in capsys.readouterr().err
    empty = {"root": str(tmp_path / "empty")}
    assert _cli(empty, release, tmp_path / "x", "--dataset", "ytvos18_valid") == 1
    err = capsys.readouterr().err
    assert "YouTubeVOS18/valid/meta.json" in err and "datasets/README.md" in err
    assert not (tmp_path / "x").exists()
