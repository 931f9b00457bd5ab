# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Learned presence (issue 28): the presence head's features, its training (jointly and alone
on frozen weights), absent-target training episodes, the head changing nothing when presence is
off, and a calibration carried by a checkpoint."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SIZE, make_cfg, make_episode
from diffews import DiffewSPredictor
from diffews.checkpoint import DiffewSCheckpointer, write_presence_calibration
from diffews.data.episodes import EpisodicTrainDataset, holds_class
from diffews.modeling.presence_head import QueryProbe, mask_foreground


def _build(tiny_sd, *opts):
    from detectron2.modeling import build_model

    return build_model(make_cfg(tiny_sd, *opts))


def _labelled(episodes, absent=()):
    """Episodes with a query label: a square object, or empty for the indices in ``absent``."""
    for i, e in enumerate(episodes):
        e["sem_seg"] = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
        if i not in absent:
            e["sem_seg"][16:40, 8:32] = 1
    return episodes


def test_probe_masses_are_the_softmax_mass_on_support_and_foreground_keys():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 16, 8), torch.randn(2, 3, 16 + 2 * 4, 8)  # 16 own, 2 supports x 4
    fg = torch.rand(1, 2, 4, 4)  # latent 4x4, the layer 2x2: 2x2 average pooling
    probe = QueryProbe(fg, ())
    probe.record("layer", q, k, 16)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)  # (B, heads, 16, 24)
    pooled = fg.reshape(2, 2, 2, 2, 2).mean(dim=(2, 4)).reshape(1, 8)  # per support, row-major
    share = weights[..., 16:].sum(-1).mean(1)  # (B, 16) per query token, over heads
    fg_mass = (weights[..., 16:] * pooled[:, None, None, :]).sum(-1).mean(1)
    assert torch.allclose(probe.shares["layer"], share.mean(-1), atol=1e-6)
    stats = probe.stats["layer"]
    assert torch.allclose(stats[:, 0], share.mean(-1), atol=1e-6)
    assert torch.allclose(stats[:, 1], fg_mass.mean(-1), atol=1e-6)
    assert torch.allclose(stats[:, 2], fg_mass.amax(-1), atol=1e-6)
    assert torch.allclose(stats[:, 3], fg_mass.amax(-1), atol=1e-6)  # top 5% of 16 = 1 token
    with pytest.raises(RuntimeError, match="its output"):
        probe.features(["layer"], [])
    out_fg = torch.rand(2, 8, 8)  # 64 pixels: top 5% = 3
    probe.record_output(out_fg)
    flat = out_fg.flatten(1)
    expected = torch.stack([flat.mean(-1), flat.amax(-1), flat.topk(3, -1).values.mean(-1)], -1)
    assert torch.allclose(probe.features(["layer"], []), torch.cat([stats, expected], -1))


def test_prototype_similarity_of_query_keys():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 20, 4), torch.randn(1, 2, 20 + 4, 4)  # 20 own, 1 support x 4
    fg = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # the support's tokens 0 and 3
    probe = QueryProbe(fg, ())
    probe.record("layer", q, k, 20)
    own, sup = k[:, :, :20], k[:, :, 20:]
    proto_fg, proto_bg = sup[:, :, [0, 3]].mean(2), sup[:, :, [1, 2]].mean(2)

    def cos(a, b):  # (1, heads, L, d) x (1, heads, d) -> (1, L), averaged over heads
        return (a @ b[..., None])[..., 0].div(a.norm(dim=-1) * b.norm(dim=-1)[..., None]).mean(1)

    sim_fg, sim_bg = cos(own, proto_fg), cos(own, proto_bg)
    expected = torch.stack([sim_fg.amax(-1), sim_fg.amax(-1), sim_fg.mean(-1),
                            (sim_fg - sim_bg).amax(-1)], -1)  # top 5% of 20 tokens = 1
    assert torch.allclose(probe.prototype["layer"], expected, atol=1e-5)
    probe.record_output(torch.zeros(1, 2, 2))
    assert probe.features(["layer"], [], prototype=True).shape == (1, 4 + 4 + 3)


def test_mask_foreground_reads_the_mask_from_its_latent():
    bg, fg = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 2.0])
    z = torch.stack([bg, fg, (bg + fg) / 2, 3 * fg - 2 * bg], dim=0)  # 4 "pixels"
    out = mask_foreground(z.T.reshape(1, 2, 2, 2), bg, fg)
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.0, 0.5, 1.0]))


def test_head_changes_nothing_when_presence_is_off(tiny_sd):
    """The same UNet with and without a head: benchmark predictions and the mask loss are the
    same bit for bit (the head only adds "head" to the signals and "loss_presence")."""
    plain, headed = _build(tiny_sd), _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True)
    assert plain.presence_head is None and headed.presence_head is not None
    episodes = [make_episode(k, seed=20 + k) for k in (1, 2)]
    with torch.no_grad():
        a, b = plain.eval()(episodes), headed.eval()(episodes)
    for x, y in zip(a, b):
        assert torch.equal(x["pred_image"], y["pred_image"])
        assert torch.equal(x["pred_mask"], y["pred_mask"])
        assert x["present"] is None and y["present"] is None
    train = _labelled([make_episode(1, seed=30), make_episode(1, seed=31)], absent=(1,))
    torch.manual_seed(0)
    la = plain.train()(train)
    torch.manual_seed(0)
    lb = headed.train()(train)
    assert set(la) == {"loss_mask_latent"} and set(lb) == {"loss_mask_latent", "loss_presence"}
    assert torch.equal(la["loss_mask_latent"], lb["loss_mask_latent"])


def test_presence_loss_is_the_bce_of_the_head_and_absent_episodes_can_skip_the_mask_loss(tiny_sd):
    model = _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True,
                   "MODEL.DIFFEWS.ABSENT_MASK_LOSS", False).train()
    batch = _labelled([make_episode(1, seed=40), make_episode(1, seed=41)], absent=(1,))
    torch.manual_seed(1)
    losses = model(batch)
    # the same pass by hand: the head's logits and the present episode's latent MSE only
    torch.manual_seed(1)
    query, supports, masks = model._stack(batch)
    target = torch.stack([(x["sem_seg"] == 1) for x in batch])
    zq = model.encode(model.normalize(query), sample=True)
    zs = torch.cat([model.encode(model.normalize(supports), sample=True),
                    model.encode(model.mask_to_image(masks), sample=True)], dim=1)
    zt = model.encode(model.mask_to_image(target), sample=True)
    sset, _ = model.support_pass(zs, model.prompt_embeds_train)
    pred, probe = model.query_pass_probed(zq, [sset[0:1], sset[1:2]], model.prompt_embeds_train)
    logits = model.presence_logits(probe)
    bce = F.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0]))
    assert torch.allclose(losses["loss_presence"], bce, atol=1e-6)
    assert torch.allclose(losses["loss_mask_latent"], F.mse_loss(pred[0], -zt[0]), atol=1e-6)


def test_head_alone_trains_on_frozen_weights(tiny_sd):
    model = _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True,
                   "MODEL.DIFFEWS.PRESENCE_HEAD.TRAIN_ONLY", True).train()
    assert not any(p.requires_grad for p in model.unet.parameters())
    batch = _labelled([make_episode(1, seed=50), make_episode(2, seed=51)], absent=(0,))
    sum(model(batch).values()).backward()
    assert all(p.grad is not None for p in model.presence_head.parameters())
    assert all(p.grad is None for p in model.unet.parameters())
    with pytest.raises(ValueError, match="PRESENCE_HEAD.ENABLED"):
        _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.TRAIN_ONLY", True)


def test_absent_target_training_episodes():
    def stream(ratio, n=60):
        return list(itertools.islice(iter(EpisodicTrainDataset(
            ["synthetic_fss_train"], SIZE, 2, seed=3, negative_ratio=ratio)), n))

    plain = stream(0.0)
    assert not any(e.get("negative") for e in plain)
    mixed = stream(0.5)
    negatives = [e for e in mixed if e.get("negative")]
    assert 15 <= len(negatives) <= 45  # about half of 60
    from detectron2.data import DatasetCatalog

    records = {r["image_id"]: r for r in DatasetCatalog.get("synthetic_fss_train")}
    for e in mixed:
        label = e["sem_seg"]
        if e.get("negative"):
            assert not (label == 1).any()
            assert not holds_class(records[e["query_id"]], e["class_id"])
        else:
            assert (label == 1).any()
    with pytest.raises(ValueError, match="NEGATIVE_RATIO"):
        EpisodicTrainDataset(["synthetic_fss_train"], SIZE, 2, seed=0, negative_ratio=1.0)


def _trainer_checkpoint(model, path):
    """What the trainer writes (model, head hyper-parameters, an iteration)."""
    DiffewSCheckpointer(model, save_dir=str(path.parent)).save(path.stem, iteration=3)
    return str(path)


def test_checkpoint_brings_its_head_and_calibration(tiny_sd, tmp_path):
    headed = _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True,
                    "MODEL.DIFFEWS.PRESENCE_HEAD.HIDDEN", 8).eval()
    with torch.no_grad():
        for p in headed.presence_head.parameters():
            p.normal_()
    weights = _trainer_checkpoint(headed, tmp_path / "model_final.pth")
    calibrated = write_presence_calibration(weights, {"signal": "head", "threshold": 0.5},
                                            str(tmp_path / "calibrated.pth"))
    # the default config (no head, no threshold): the weights bring the head, the signal and,
    # to the predictor only, the threshold
    predictor = DiffewSPredictor.from_pretrained(tiny_sd, calibrated, device="cpu",
                                                 image_size=SIZE)
    model = predictor.model
    assert model.presence_head.hparams["hidden"] == 8
    assert model.presence_signal == "head" and model.presence_threshold < 0
    assert model.default_presence_threshold() == 0.5
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((SIZE, SIZE), bool)
    mask[8:40, 16:48] = True
    supports = predictor.encode_supports(images[:1], [mask])
    judged = predictor.predict(images[1:], supports)
    free = predictor.predict(images[1:], supports, presence_threshold=-1)
    for j, f in zip(judged, free):
        assert j["presence"] == f["presence"] == f["signals"]["head"]
        assert f["present"] is None or (f["present"] is False and not f["mask"].any())
        assert j["present"] is (j["presence"] >= 0.5 and bool(f["mask"].any()))
        assert np.array_equal(j["mask"], f["mask"] if j["present"] else np.zeros_like(f["mask"]))
    # the benchmark path never decides with what the weights carry
    with torch.no_grad():
        outs = model([make_episode(1, seed=60)])
    assert outs[0]["present"] is None and "head" in outs[0]["signals"]
    # PRESENCE_FROM_WEIGHTS False: carried, not used
    off = DiffewSPredictor.from_pretrained(tiny_sd, calibrated, device="cpu", image_size=SIZE,
                                           opts=["MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS", False])
    assert off.model.presence_calibration["threshold"] == 0.5
    assert off.model.presence_signal == "score" and off.model.default_presence_threshold() < 0
    # without a calibration the weights' head is there but nothing is decided
    plain = DiffewSPredictor.from_pretrained(tiny_sd, weights, device="cpu", image_size=SIZE)
    assert plain.model.presence_head is not None and plain.model.default_presence_threshold() < 0


def test_head_weights_into_a_model_without_a_head_say_so(tiny_sd, tmp_path):
    headed = _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True).eval()
    weights = _trainer_checkpoint(headed, tmp_path / "model_final.pth")
    with pytest.raises(KeyError, match="holds a presence head .* built without"):
        DiffewSCheckpointer(_build(tiny_sd)).load(weights)


def test_weights_without_the_head_load_with_its_initialisation(tiny_sd, tmp_path, caplog):
    plain = _build(tiny_sd).eval()
    weights = _trainer_checkpoint(plain, tmp_path / "plain.pth")
    headed = _build(tiny_sd, "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True).eval()
    before = {k: v.clone() for k, v in headed.presence_head.state_dict().items()}
    with caplog.at_level("WARNING"):
        DiffewSCheckpointer(headed).load(weights)
    assert "has no presence head" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in headed.presence_head.state_dict().items())
    with pytest.raises(ValueError, match="finite"):
        write_presence_calibration(weights, {"signal": "score", "threshold": float("nan")},
                                   str(tmp_path / "bad.pth"))
        DiffewSCheckpointer(headed).load(str(tmp_path / "bad.pth"))
