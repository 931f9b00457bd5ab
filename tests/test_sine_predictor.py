# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE through the ``Predictor`` interface (the path of every task: the demo, the web demo,
run_fsod, autolabel, run_vos) against the ORIGINAL code's outputs (tests/data/
sine_reference.pt.gz, dev/sine_reference.py; tests/test_sine_reference.py checks the building
blocks the same way): FSS masks from ``predict``, FSIS instances from ``encode_supports(task=
"fsis")`` + ``predict_instances``, VOS label maps from ``video_tracker``; and the interface's
own rules (support-set files, signatures, presence, errors)."""

import os

import numpy as np
import pytest
import torch

from _sine import reference_data
from diffews.predictor import SINEPredictor, build_predictor
from diffews.utils.errors import SupportSetError

SCORE_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _predictor(tmp_path, task: str, *opts) -> SINEPredictor:
    """The reference's tiny SINE as ``build_predictor`` builds it from a config of ``task``'s
    sizes (the released file layout in MODEL.WEIGHTS)."""
    from _sine import sine_cfg

    c = reference_data()["config"]
    sizes = {
        "fss": ["MODEL.SINE.IMAGE_SIZE", c["fss"]["image_size"], "MODEL.SINE.PAD_SIZE",
                c["fss"]["pad_size"], "INPUT.IMAGE_SIZE", c["fss"]["image_size"],
                "MODEL.SINE.SCORE_THRESHOLD", c["fss"]["score_threshold"]],
        "fsis": ["MODEL.SINE.PAD_SIZE", c["fsis"]["pad_size"], "MODEL.SINE.IMAGE_SIZE", 98,
                 "INPUT.MIN_SIZE_TEST",
                 c["fsis"]["min_size"], "INPUT.MAX_SIZE_TEST", c["fsis"]["max_size"],
                 "INPUT.FORMAT", "BGR", "TEST.FSOD.TOPK", c["fsis"]["topk"],
                 "MODEL.SINE.SCORE_THRESHOLD", c["fsis"]["score_threshold"],
                 "MODEL.SINE.USE_ID_QUERY", False],
        "vos": ["MODEL.SINE.IMAGE_SIZE", c["vos"]["image_size"], "MODEL.SINE.PAD_SIZE",
                c["vos"]["pad_size"], "TEST.VOS.FRAME_SIZE", c["vos"]["frame_size"],
                "MODEL.SINE.SCORE_THRESHOLD", -1e9],
    }[task]
    path = os.path.join(tmp_path, "pytorch_model.bin")
    torch.save(reference_data()["state_dict"], path)
    predictor = build_predictor(sine_cfg("MODEL.WEIGHTS", path, *sizes, *opts))
    assert isinstance(predictor, SINEPredictor) and predictor.weights == path
    return predictor


def test_fss_predict_equals_the_original(tmp_path):
    """``encode_supports`` + ``predict``: the working-size mask is the original's pred_mask on
    every pixel, for 1, 2 and 5 shots; the original-size mask has the query's size."""
    p = _predictor(tmp_path, "fss")
    for ep in reference_data()["fss"]:
        supports = p.encode_supports([x.numpy() for x in ep["supports"]],
                                     [m.numpy() for m in ep["support_masks"]])
        (r,) = p.predict([ep["query"].numpy()], supports)
        assert np.array_equal(r["mask_working"], ep["pred_mask"].numpy())
        assert r["mask"].shape == tuple(ep["query"].shape[:2])
        assert r["present"] is None and 0.0 <= r["presence"] <= 1.0
        assert r["pred_image"].shape == (p.image_size, p.image_size, 3)


def _fsis_sets(p, data):
    """One support set per class, in the classes' order of first appearance (the original's
    dict order), each support image with its instances of that class as COCO polygons."""
    order, by_class = [], {}
    for sup in data["supports"]:
        for ann in sup["annotations"]:
            c = int(ann["category_id"])
            if c not in by_class:
                order.append(c)
                by_class[c] = {}
            by_class[c].setdefault(id(sup), (sup["image"].numpy(), []))[1].append(
                {"segmentation": [list(map(float, poly)) for poly in ann["polygons"]]})
    sets = [p.encode_supports([im for im, _ in by_class[c].values()],
                              [anns for _, anns in by_class[c].values()], task="fsis")
            for c in order]
    return order, sets


def test_fsis_predict_instances_equals_the_original(tmp_path):
    """``encode_supports(task="fsis")`` with COCO polygons + ``predict_instances``: the same
    instances as the original's preprocess-then-test (class, box, score, every mask pixel)."""
    p = _predictor(tmp_path, "fsis")
    data = reference_data()["fsis"]
    order, sets = _fsis_sets(p, data)
    matched = total = 0
    for image, ref in zip(data["tests"], data["outputs"]):
        inst = p.predict_instances(image.numpy(), sets)
        idx = torch.argsort(ref["scores"], descending=True, stable=True)
        assert len(inst) == len(idx)
        for i, j in enumerate(idx.tolist()):
            total += 1
            same = (order[int(inst.pred_classes[i])] == int(ref["classes"][j])
                    and torch.equal(inst.pred_boxes.tensor[i], ref["boxes"][j].float())
                    and abs(float(inst.scores[i]) - float(ref["scores"][j])) < SCORE_TOL
                    and torch.equal(inst.pred_masks[i], ref["masks"][j].bool()))
            matched += int(same)
    assert total > 0 and matched == total


def test_fsis_needs_fsis_sets_and_presence_drops_classes(tmp_path):
    p = _predictor(tmp_path, "fsis")
    data = reference_data()["fsis"]
    sup = data["supports"][0]
    mask = np.ones(sup["image"].shape[:2], bool)
    fss_set = p.encode_supports([sup["image"].numpy()], [mask])
    with pytest.raises(SupportSetError, match="task='fsis'"):
        p.predict_instances(data["tests"][0].numpy(), [fss_set])
    _, sets = _fsis_sets(p, data)
    assert len(p.predict_instances(data["tests"][0].numpy(), sets, presence_threshold=1.01)) == 0


def test_vos_video_tracker_equals_the_original(tmp_path):
    """``video_tracker``: eval_vos's loop gives the original's label map on every frame."""
    data, cfg = reference_data()["vos"], reference_data()["config"]["vos"]
    p = _predictor(tmp_path, "vos")
    tracker = p.video_tracker(cfg["num_frame"], cfg["decay_ratio"])
    first = data["first_mask"].numpy().astype(np.int64)
    for t, (frame, ref) in enumerate(zip(data["frames"], data["outputs"])):
        out = tracker.frame(t, frame.numpy(), f"frame{t}", first if t == 0 else None)
        assert np.array_equal(out["label_map"], ref["label"].numpy().astype(np.int64)), t
        for o, score in out["scores"].items():
            assert abs(score - float(ref["scores"][o])) < SCORE_TOL
    assert sorted(out["memory"]) == sorted(int(i) for i in np.unique(first) if i)


def test_support_set_files_and_signature(tmp_path):
    p = _predictor(tmp_path, "fss")
    ep = reference_data()["fss"][0]
    s = p.encode_supports([x.numpy() for x in ep["supports"]],
                          [m.numpy() for m in ep["support_masks"]])
    path = str(tmp_path / "set.pt")
    s.save(path)
    loaded = p.load_support_set(path)
    (a,) = p.predict([ep["query"].numpy()], s)
    (b,) = p.predict([ep["query"].numpy()], loaded)
    assert np.array_equal(a["mask"], b["mask"])
    (tmp_path / "o").mkdir()
    other = _predictor(tmp_path / "o", "fss", "MODEL.SINE.SCORE_THRESHOLD", 0.5)
    torch.nn.init.constant_(other.model.image_encoder.neck[0].weight, 0.1)
    other.signature = other.model.support_signature()
    with pytest.raises(SupportSetError, match="another model"):
        other.load_support_set(path)
    with pytest.raises(SupportSetError, match="not a SINESupportSet file"):
        torch.save({"format": "diffews.SupportSet"}, str(tmp_path / "diffews.pt"))
        p.load_support_set(str(tmp_path / "diffews.pt"))


def test_presence_threshold_empties_the_mask(tmp_path):
    p = _predictor(tmp_path, "fss")
    ep = reference_data()["fss"][0]
    s = p.encode_supports([x.numpy() for x in ep["supports"]],
                          [m.numpy() for m in ep["support_masks"]])
    (r,) = p.predict([ep["query"].numpy()], s, presence_threshold=1.01)
    assert r["present"] is False and not r["mask"].any() and not r["mask_working"].any()
    (r,) = p.predict([ep["query"].numpy()], s, presence_threshold=0.0)
    assert r["present"] is True and np.array_equal(r["mask_working"], ep["pred_mask"].numpy())
