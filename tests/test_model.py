# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import SIZE, make_cfg, make_episode
from diffews.modeling import DiffewS


def test_build_model_on_tiny_config(tiny_model):
    m = tiny_model
    assert isinstance(m, DiffewS)
    assert m.num_fused_layers == 4
    assert all(not p.requires_grad for p in m.vae.parameters())
    assert all(p.requires_grad for p in m.unet.parameters())
    # 77 training tokens and 2 inference tokens; the encoder is causal, so the first two agree
    assert m.prompt_embeds_train.shape[1] == 77 and m.prompt_embeds_test.shape[1] == 2
    torch.testing.assert_close(
        m.prompt_embeds_train[:, :2], m.prompt_embeds_test, atol=1e-5, rtol=0
    )
    assert not any(k.startswith("vae.") for k in m.state_dict())  # checkpoints hold the UNet only


def test_support_conv_is_initialised_from_query_conv(tiny_model):
    conv, ref = tiny_model.unet.conv_in, tiny_model.unet.conv_in_ref
    assert ref.in_channels == 2 * conv.in_channels == 8
    torch.testing.assert_close(ref.weight, conv.weight.repeat(1, 2, 1, 1) / 2)
    torch.testing.assert_close(ref.bias, conv.bias)
    # so an (x, x) support input starts out seen exactly as the query conv sees x
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(torch.cat([x, x], 1)), conv(x), atol=1e-5, rtol=0)
    keys = set(tiny_model.unet.state_dict())
    assert {"conv_in.weight", "conv_in_ref.weight", "conv_in_ref.bias"} <= keys
    with pytest.raises(ValueError, match="expected 4 .* or 8"):
        conv(torch.randn(1, 5, 8, 8))


def test_training_step_reaches_support_branch(tiny_cfg):
    model = build_model(tiny_cfg).train()
    with EventStorage():
        losses = model([make_episode(2, seed=0), make_episode(2, seed=1), make_episode(1, seed=2)])
        assert set(losses) == {"loss_mask_latent"}
        loss = losses["loss_mask_latent"]
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
    unet = model.unet
    assert unet.conv_in_ref.weight.grad.abs().sum() > 0  # support K/V are not detached
    assert unet.conv_in.weight.grad.abs().sum() > 0
    attn1 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert attn1.to_k.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())
    assert not model.vae.training


def test_loss_is_latent_mse_against_minus_mask_latent(tiny_sd, tiny_cfg, monkeypatch):
    """The training loss equals one written from the rules (tests/_reference_loss.py: diffusers'
    VAE and text encoder called directly, attention and K-shot KV fusion by hand, MSE against
    minus the query-mask latent; docs/METHOD.md sections 1.4, 1.6, 2 and 4)."""
    from tests._reference_loss import reference_loss

    model = build_model(tiny_cfg).train()
    # posterior means instead of samples make the target reproducible
    monkeypatch.setattr(model, "encode", lambda x, sample: DiffewS.encode(model, x, False))
    ep = make_episode(2, seed=3)  # 2 shots: the query attends to both supports' tokens
    ep["sem_seg"][:8] = 255  # ignored pixels are not foreground in the target image
    loss = model([ep])["loss_mask_latent"]
    expected = reference_loss(tiny_sd, model.unet, ep)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=0)


def test_batched_inference_matches_single_episodes(tiny_model):
    eps = [make_episode(1, seed=10), make_episode(2, seed=11), make_episode(1, seed=12)]
    batched = tiny_model(eps)
    for ep, out in zip(eps, batched):
        (single,) = tiny_model([ep])
        assert out["pred_mask"].shape == (SIZE, SIZE) and out["pred_mask"].dtype == torch.bool
        assert out["pred_image"].shape == (3, SIZE, SIZE) and out["pred_image"].dtype == torch.uint8
        assert (out["pred_image"].int() - single["pred_image"].int()).abs().max() <= 1
    assert not torch.equal(batched[0]["pred_image"], batched[2]["pred_image"])


def test_decode_truncates_and_threshold_is_relative_to_max(tiny_model, monkeypatch):
    class Out:
        sample = torch.tensor([[[[0.999, -2.0], [0.0, -0.5]]]]).expand(1, 3, 2, 2)

    monkeypatch.setattr(tiny_model.vae, "decode", lambda z: Out())
    img = tiny_model.decode(torch.zeros(1, 4, 1, 1))
    # (x * 0.5 + 0.5) * 255, clipped, truncated: 0.999 -> 254.87 -> 254; -2 -> 0; 0 -> 127; -0.5 ->
    # 63
    assert img[0, 0].tolist() == [[254, 0], [127, 63]]
    mask = tiny_model.threshold(img[0])  # threshold 0.25 * 254/255 on the channel mean
    assert mask.tolist() == [[True, False], [True, False]]
    monkeypatch.setattr(tiny_model, "abs_threshold", 0.2)
    assert tiny_model.threshold(img[0]).tolist() == [[True, False], [True, True]]


def test_bad_episodes_raise(tiny_model):
    ep = make_episode(1, seed=0)
    with pytest.raises(ValueError, match="at least one support"):
        tiny_model(
            [
                dict(
                    ep,
                    support_images=ep["support_images"][:0],
                    support_masks=ep["support_masks"][:0],
                )
            ]
        )
    with pytest.raises(ValueError, match="share the working size"):
        tiny_model([dict(ep, image=torch.zeros(3, 32, 32, dtype=torch.uint8))])
    small = make_episode(1, seed=0, size=40)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        tiny_model([small])


def test_missing_pretrained_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="MODEL.DIFFEWS.PRETRAINED is empty"):
        build_model(make_cfg(""))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing" / "unet")):
        build_model(make_cfg(str(tmp_path / "nothing")))


def test_support_cache_reuses_latents_without_changing_predictions(tiny_sd, monkeypatch):
    cached = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.SUPPORT_CACHE_SIZE", 2)).eval()
    plain = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.SUPPORT_CACHE_SIZE", 0)).eval()
    calls = []
    cached.vae.encoder.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    a, b = make_episode(2, seed=20), make_episode(1, seed=21)
    b_same_support = dict(
        b, support_images=a["support_images"][:1], support_masks=a["support_masks"][:1]
    )
    for ep in (a, b_same_support, a):
        # bit for bit: every support image and mask is encoded in its own VAE call either way
        ours, theirs = cached([ep])[0], plain([ep])[0]
        assert torch.equal(ours["pred_image"], theirs["pred_image"])
        assert torch.equal(ours["pred_mask"], theirs["pred_mask"])
    # a: 2 supports, image then mask, one per call, + the query; then only queries (reused)
    assert calls == [1, 1, 1, 1, 1, 1, 1]
    assert cached.support_cache.hits == 3 and cached.support_cache.misses == 2
    changed_mask = dict(a, support_masks=1 - a["support_masks"])
    cached([changed_mask])
    assert cached.support_cache.misses == 4  # same images, other masks: encoded again
    assert len(cached.support_cache._latents) == 2  # capacity


def test_fast_inference_paths_change_no_bit(tiny_model):
    """The posterior mean read from the encoder's moments, and the support pass stopped after the
    last fused layer, give exactly what the plain diffusers calls give."""
    ep = make_episode(2, seed=30)
    x = tiny_model.normalize(ep["support_images"])
    with torch.no_grad():
        plain = tiny_model.vae.encode(x).latent_dist.mean * tiny_model.latent_scale
        assert torch.equal(tiny_model.encode(x, sample=False), plain)
        z = torch.cat(
            [plain, tiny_model.encode(tiny_model.mask_to_image(ep["support_masks"]), False)], 1
        )
        full, out = tiny_model.support_pass(z, tiny_model.prompt_embeds_test)
        early, none = tiny_model.support_pass(z, tiny_model.prompt_embeds_test, stop_early=True)
    assert out is not None and none is None
    assert early.layers == full.layers == tiny_model.fused_layers
    for k in full.layers:
        assert torch.equal(early.keys[k], full.keys[k]) and torch.equal(
            early.values[k], full.values[k]
        )
