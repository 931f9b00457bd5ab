# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Presence: the attention signal measured inside KV fusion, the decision and its threshold, the
options off leaving FSS masks exactly as they were, absent-target episodes and their metrics."""

import numpy as np
import pytest
import torch

from conftest import SIZE, make_cfg, make_episode
from diffews import DiffewSPredictor
from diffews.data.episodes import add_negative_episodes, holds_class
from diffews.evaluation import FSSEvaluator
from diffews.evaluation.presence import auroc, best_threshold, empty_rates, precision_recall
from diffews.modeling.presence_head import QueryProbe
from diffews.modeling.readout import mask_peak, prediction_score


def test_support_share_equals_the_softmax_mass_on_support_keys():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 11, 8)  # 4 own keys, 7 support keys
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    expected = weights[..., 4:].sum(-1).mean(dim=(1, 2))
    probe = QueryProbe()
    probe.record("layer", q, k, 4)
    assert torch.allclose(probe.support_share(), expected, atol=1e-6)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


def _arrays(seed, n=3):
    rng = np.random.RandomState(seed)
    images = [rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]
    masks = [np.zeros((SIZE, SIZE), bool) for _ in range(n)]
    for m in masks:
        m[8:40, 16:48] = True
    return images, masks


def test_measuring_attention_changes_no_bit(tiny_model):
    episode = make_episode(2, seed=3)
    sets = [tiny_model.encode_supports(episode["support_images"], episode["support_masks"])]
    z = tiny_model.encode(tiny_model.normalize(episode["image"][None]), sample=False)
    with torch.no_grad():
        plain = tiny_model.query_pass(z, sets, tiny_model.prompt_embeds_test)
        measured, signals = tiny_model.query_pass_measured(z, sets, tiny_model.prompt_embeds_test)
    assert torch.equal(plain, measured)
    share = signals["attention"]
    assert set(signals) == {"attention"}  # no head on this model
    assert share.shape == (1,) and 0.0 < float(share) < 1.0


def test_attention_signal_under_a_backend_says_the_pass_is_torch(tiny_sd, caplog):
    """Issue 29 item 13: the attention signal is measured in torch's query pass even with the
    ONNX Runtime backend attached; that is said once per model in the log, not silently done."""
    import logging

    from detectron2.modeling import build_model

    model = build_model(make_cfg(tiny_sd)).eval()
    episode = make_episode(1, seed=3)
    sets = [model.encode_supports(episode["support_images"], episode["support_masks"])]
    z = model.encode(model.normalize(episode["image"][None]), sample=False)
    caplog.clear()  # the model's loading lines
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        model.query_pass_measured(z, sets, model.prompt_embeds_test)
        assert not caplog.records  # torch backend: nothing to say
        model.use_backend(object())  # any attached backend: this pass does not use it
        for _ in range(2):
            model.query_pass_measured(z, sets, model.prompt_embeds_test)
    said = [r.getMessage() for r in caplog.records if "torch UNet" in r.getMessage()]
    assert len(said) == 1 and "PRESENCE_SIGNAL attention" in said[0], said
    assert "not the ONNX Runtime backend" in said[0]


def test_options_off_fss_masks_are_the_published_readout(tiny_sd):
    """Default config: every mask is RGB mean > 0.25 x max (written out here), present is None
    (no decision was made), and an explicit threshold < 0 or measuring attention gives the same
    masks bit for bit."""
    from detectron2.modeling import build_model

    model = build_model(make_cfg(tiny_sd)).eval()
    assert model.presence_threshold < 0
    episodes = [make_episode(k, seed=10 + k) for k in (1, 2)]
    with torch.no_grad():
        outs = model(episodes)
        model.measure_attention = True
        try:
            again = model(episodes)
        finally:
            model.measure_attention = False
    for out, other in zip(outs, again):
        # mean_rgb / 255 > 0.25 * max / 255, in integers: 4 * sum_rgb > 3 * max
        x = out["pred_image"].long()
        assert torch.equal(out["pred_mask"], 4 * x.sum(0) > 3 * x.max())
        assert out["present"] is None and out["pred_mask"].any() and np.isfinite(out["presence"])
        assert torch.equal(out["pred_mask"], other["pred_mask"])
        assert "attention" in other["signals"] and "attention" not in out["signals"]


def test_threshold_empties_absent_masks(predictor):
    images, masks = _arrays(0)
    queries, _ = _arrays(1, n=4)
    supports = predictor.encode_supports(images[:2], masks[:2])
    default = predictor.predict(queries, supports)
    assert all(r["present"] is None for r in default)  # no decision, not "found"
    assert all(set(r["signals"]) >= {"score", "peak"} for r in default)
    assert [r["presence"] for r in default] == [r["signals"]["score"] for r in default]
    # a threshold between the presences: those below are absent with empty masks, score 0;
    # those above keep exactly the default mask
    cut = float(np.median([r["presence"] for r in default]))
    judged = predictor.predict(queries, supports, presence_threshold=cut)
    assert any(not r["present"] for r in judged) and any(r["present"] for r in judged)
    for d, j in zip(default, judged):
        assert j["present"] is (d["presence"] >= cut)
        if j["present"]:
            assert np.array_equal(j["mask"], d["mask"]) and j["score"] == d["score"]
        else:
            assert not j["mask"].any() and not j["mask_working"].any() and j["score"] == 0.0
        assert np.array_equal(j["pred_image"], d["pred_image"])
    many = predictor.predict_many(queries[0], [supports, supports], presence_threshold=cut)
    assert [r["present"] for r in many] == [judged[0]["present"]] * 2


def test_attention_signal_decides_when_chosen(predictor):
    images, masks = _arrays(2)
    supports = predictor.encode_supports(images[:1], masks[:1])
    model = predictor.model
    model.set_presence("attention", -1.0)
    try:
        (r,) = predictor.predict([images[2]], supports)
    finally:
        model.set_presence("score", -1.0)
    assert r["presence"] == r["signals"]["attention"] and 0.0 < r["presence"] < 1.0
    with pytest.raises(ValueError, match="PRESENCE_SIGNAL"):
        model.set_presence("brightness", 0.5)


def test_presence_metrics_hand_worked():
    labels = [True, True, False, False]
    # pairs (pos, neg): (0.9, 0.1) (0.9, 0.5) (0.4, 0.1) (0.4, 0.5) -> 3 of 4 ordered right
    assert auroc(labels, [0.9, 0.4, 0.1, 0.5]) == pytest.approx(0.75)
    assert auroc(labels, [0.5, 0.4, 0.4, 0.1]) == pytest.approx((2 + 0.5 + 1) / 4)  # a tie: 1/2
    pr = precision_recall(labels, [True, False, True, False])
    assert pr["precision"] == 0.5 and pr["recall"] == 0.5
    # best F1: at 0.4 -> TP 2 FP 1 (F1 0.8); at 0.5 -> TP 1 FP 1 (0.5); at 0.9 -> TP 1 (0.67)
    assert best_threshold(labels, [0.9, 0.4, 0.1, 0.5]) == (0.4, True)
    # precision 1.0 at 0.9 rests on one true positive: not reached with the default minimum
    # (10), reached when one is enough
    assert best_threshold(labels, [0.9, 0.4, 0.1, 0.5], precision=1.0) == (0.4, False)
    assert best_threshold(labels, [0.9, 0.4, 0.1, 0.5], precision=1.0,
                          min_true_positives=1) == (0.9, True)
    # deciding at 0.45: absent 0.1 under, 0.5 not (50%); present 0.4 under (50%)
    assert empty_rates(labels, [0.9, 0.4, 0.1, 0.5], 0.45) == {"absent-empty": 50.0,
                                                              "present-empty": 50.0}


def test_precision_target_needs_true_positives_on_chance_data():
    """Chance-level scores (positives and negatives alternate down the ranking, a positive on
    top): the top positive alone gives precision 1 at recall 0.005; that is not a reached
    target (with 10 true positives the precision is at most 10/19)."""
    labels = np.arange(400) % 2 == 0
    scores = 400.0 - np.arange(400)  # the top score (400) is a positive's
    t, reached = best_threshold(labels, scores, precision=0.9)
    assert not reached and t < 400.0
    assert best_threshold(labels, scores, precision=0.9, min_true_positives=1) == (400.0, True)


def test_score_of_a_speck_and_peak_inside_the_mask():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    image[:, 10, 10] = 255
    mask[10, 10] = True
    assert float(prediction_score(image, mask)) == pytest.approx(1 / 16)  # one pixel
    image[:, 10:14, 10:14] = 255
    mask[10:14, 10:14] = True
    assert float(prediction_score(image, mask)) == pytest.approx(1.0)  # 16 pixels: clean
    # a bright object of 16 pixels (0.4% of the image): its peak is its brightness, where the
    # 99th percentile over the whole image would be 0
    peak = mask_peak(image[None], mask[None])
    assert float(peak[0]) == pytest.approx(1.0)
    assert float(torch.quantile(image.float().mean(0).flatten() / 255, 0.99)) == 0.0
    assert float(mask_peak(image[None], torch.zeros_like(mask)[None])[0]) == 0.0


def test_present_semantics_and_non_finite_thresholds(tiny_model):
    dark = torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)  # nothing decoded: an empty mask
    dark[1, :, 8:24, 8:24] = 200
    free = tiny_model.postprocess(dark, None, -1.0)
    assert [r["present"] for r in free] == [False, None]  # empty: never "present"; else none
    judged = tiny_model.postprocess(dark, None, 0.0)
    assert [r["present"] for r in judged] == [False, True]  # decided; the empty one is absent
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            tiny_model.postprocess(dark, None, bad)
        with pytest.raises(ValueError, match="finite"):
            tiny_model.set_presence("score", bad)
    with pytest.raises(ValueError, match="presence head"):
        tiny_model.set_presence("head", 0.5)


def _records():
    return [{"image_id": f"im{i}", "classes": [i % 3]} for i in range(9)] + \
        [{"image_id": "syn", "classes": [1], "synthetic": {"distractor": 0}}]


def test_negative_episodes_are_fixed_and_never_hold_the_class():
    records = _records()
    episodes = [{"episode_id": i, "class_id": i % 3, "query": records[i],
                 "supports": [records[(i + 3) % 9]]} for i in range(6)]
    assert add_negative_episodes(episodes, records, 0.0) == episodes
    a = add_negative_episodes(episodes, records, 1.0, seed=0)
    assert a[:6] == episodes and len(a) == 12
    assert a == add_negative_episodes(episodes, records, 1.0, seed=0)
    assert a != add_negative_episodes(episodes, records, 1.0, seed=1)
    for e in a[6:]:
        assert e["negative"] and not holds_class(e["query"], e["class_id"])
        assert e["episode_id"] >= 6
        # "syn" holds class 1 and, as its distractor, class 0: a negative only of class 2
        assert e["query"]["image_id"] != "syn" or e["class_id"] == 2
    assert [e["episode_id"] for e in a[6:]] == list(range(6, 12))
    assert holds_class(records[-1], 0) and not holds_class(records[-1], 2)


def test_evaluator_reports_presence_with_absent_episodes():
    def one(eid, gt_fg, pred_fg, presence, present, negative):
        gt = torch.zeros(4, 4, dtype=torch.uint8)
        gt[:2, :2] = gt_fg
        pred = torch.zeros(4, 4, dtype=torch.bool)
        pred[:2, :pred_fg] = True
        inp = {"class_id": 0, "episode_id": eid, "sem_seg": gt}
        if negative:
            inp["negative"] = True
        return inp, {"pred_mask": pred, "presence": presence, "present": present}

    ev = FSSEvaluator(class_ids=[0], distributed=False, presence_threshold=0.5)
    # present: None (no decision) must count as what its mask is, never as "absent"
    pairs = [one(0, 1, 2, 0.9, None, False), one(1, 1, 1, 0.3, None, False),
             one(2, 0, 0, 0.2, False, True), one(3, 0, 1, 0.6, True, True)]
    ev.process([p[0] for p in pairs], [p[1] for p in pairs])
    res = ev.evaluate()["fss"]
    # fg I/U over all: ep0 4/4, ep1 2/4, ep2 0/0, ep3 0/2 -> 6/10; present episodes: 6/8
    assert res["mIoU"] == pytest.approx(100 * 6 / 10)
    assert res["mIoU-present"] == pytest.approx(100 * 6 / 8)
    assert res["presence-AUROC"] == pytest.approx(100 * 3 / 4)  # 0.3 < 0.6 is the one miss
    # found (mask not empty): ep0, ep1 (present), ep3 (absent) -> precision 2/3, recall 1
    assert res["presence-precision"] == pytest.approx(100 * 2 / 3)
    assert res["presence-recall"] == 100.0
    assert res["absent-empty"] == 50.0 and res["present-empty"] == 0.0
    # deciding at 0.5 would also empty ep1 (0.3): present 50% empty; absent: ep2 (empty) only
    assert res["absent-empty-at-threshold"] == 50.0
    assert res["present-empty-at-threshold"] == 50.0
    assert res["num_absent"] == 2
    plain = FSSEvaluator(class_ids=[0], distributed=False)
    plain.process([pairs[0][0]], [pairs[0][1]])
    assert not any(k.startswith("presence") for k in plain.evaluate()["fss"])
