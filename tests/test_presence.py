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
from diffews.evaluation.presence import auroc, best_threshold, precision_recall
from diffews.modeling.kv_fusion import _support_share


def test_support_share_equals_the_softmax_mass_on_support_keys():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 11, 8)  # 4 own keys, 7 support keys
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    expected = weights[..., 4:].sum(-1).mean(dim=(1, 2))
    assert torch.allclose(_support_share(q, k, 4), expected, atol=1e-6)


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
        measured, share = tiny_model.query_pass_measured(z, sets, tiny_model.prompt_embeds_test)
    assert torch.equal(plain, measured)
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
    """Default config: every mask is RGB mean > 0.25 x max (written out here), present is True,
    and an explicit threshold < 0 or measuring attention gives the same masks bit for bit."""
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
        assert out["present"] is True and np.isfinite(out["presence"])
        assert torch.equal(out["pred_mask"], other["pred_mask"])
        assert "attention" in other["signals"] and "attention" not in out["signals"]


def test_threshold_empties_absent_masks(predictor):
    images, masks = _arrays(0)
    queries, _ = _arrays(1, n=4)
    supports = predictor.encode_supports(images[:2], masks[:2])
    default = predictor.predict(queries, supports)
    assert all(r["present"] for r in default)
    assert all(set(r["signals"]) >= {"score", "peak"} for r in default)
    assert [r["presence"] for r in default] == [r["signals"]["score"] for r in default]
    # a threshold between the presences: those below are absent with empty masks, score 0;
    # those above keep exactly the default mask
    cut = float(np.median([r["presence"] for r in default]))
    judged = predictor.predict(queries, supports, presence_threshold=cut)
    assert any(not r["present"] for r in judged) and any(r["present"] for r in judged)
    for d, j in zip(default, judged):
        assert j["present"] == (d["presence"] >= cut)
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
    assert best_threshold(labels, [0.9, 0.4, 0.1, 0.5]) == 0.4
    assert best_threshold(labels, [0.9, 0.4, 0.1, 0.5], precision=1.0) == 0.9


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
        assert e["episode_id"] >= 6 and e["query"]["image_id"] != "syn" or e["class_id"] == 2
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

    ev = FSSEvaluator(class_ids=[0], distributed=False)
    pairs = [one(0, 1, 2, 0.9, True, False), one(1, 1, 1, 0.3, False, False),
             one(2, 0, 2, 0.2, False, True), one(3, 0, 1, 0.6, True, True)]
    ev.process([p[0] for p in pairs], [p[1] for p in pairs])
    res = ev.evaluate()["fss"]
    # fg I/U over all: ep0 4/4, ep1 2/4, ep2 0/4, ep3 0/2 -> 6/14; present episodes: 6/8
    assert res["mIoU"] == pytest.approx(100 * 6 / 14)
    assert res["mIoU-present"] == pytest.approx(100 * 6 / 8)
    assert res["presence-AUROC"] == pytest.approx(100 * 3 / 4)  # 0.3 < 0.6 is the one miss
    assert res["presence-precision"] == 50.0 and res["presence-recall"] == 50.0
    assert res["num_absent"] == 2
    plain = FSSEvaluator(class_ids=[0], distributed=False)
    plain.process([pairs[0][0]], [pairs[0][1]])
    assert not any(k.startswith("presence") for k in plain.evaluate()["fss"])
