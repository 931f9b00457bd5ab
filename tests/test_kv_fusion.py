# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from conftest import make_episode
from diffews.modeling.kv_fusion import (KVBank, KVFusionAttnProcessor2_0, fused_layer_names,
                                        set_kv_fusion_processors)
from diffews.utils.errors import SupportSetError


def _unet_inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 2, 32, generator=g)


def test_zero_supports_equals_plain_processor(tiny_sd):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval()
    unet.set_attn_processor(AttnProcessor2_0())
    x, ctx = _unet_inputs()
    t = torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ctx).sample
        fused = copy.deepcopy(unet)
        set_kv_fusion_processors(fused)
        ours = fused(x, t, encoder_hidden_states=ctx).sample
        ours_kw = fused(
            x, t, encoder_hidden_states=ctx, cross_attention_kwargs={"kv_bank": None}
        ).sample
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_kw, plain, atol=1e-5, rtol=0)


def test_every_self_attention_is_fused_and_sd21_has_16(tiny_sd):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    n_attn1 = sum(1 for k in unet.attn_processors if k.endswith("attn1.processor"))
    assert set_kv_fusion_processors(unet) == n_attn1 == 4
    bank = KVBank()
    x, ctx = _unet_inputs(1)
    with torch.no_grad():
        unet(x, torch.ones(1, dtype=torch.long), encoder_hidden_states=ctx,
             cross_attention_kwargs={"kv_bank": bank})
    assert len(bank) == 4  # the support pass stored K/V in every attn1, none in attn2
    assert bank.to_support_set(x).layers == fused_layer_names(unet)  # forward order
    sd21 = dict(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True)
    with torch.device("meta"):
        big = UNet2DConditionModel(**sd21)
    assert set_kv_fusion_processors(big) == 16


def _manual_attention(attn, q_tokens, kv_tokens):
    """softmax(Q K^T / sqrt(d)) V over explicit token lists, then the output projection."""
    h = attn.heads
    q = attn.to_q(q_tokens)
    k, v = attn.to_k(kv_tokens), attn.to_v(kv_tokens)
    d = q.shape[-1] // h
    q, k, v = (t.view(t.shape[0], h, d).transpose(0, 1) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(1, 2) / d ** 0.5, dim=-1)
    out = (w @ v).transpose(0, 1).reshape(q_tokens.shape[0], h * d)
    return attn.to_out[0](out)


@pytest.mark.parametrize("shots", [1, 2, 3])
def test_query_attends_to_own_then_its_supports_tokens(shots):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(KVFusionAttnProcessor2_0("layer"))
    batch, length = 2, 5
    supports = torch.randn(batch * shots, length, 16)
    queries = torch.randn(batch, length, 16)
    writer = KVBank()
    with torch.no_grad():
        support_out = attn(supports, kv_bank=writer)
        support_set = writer.to_support_set(torch.zeros(batch * shots, 1))
        rows = [support_set[b * shots:(b + 1) * shots] for b in range(batch)]
        query_out = attn(queries, kv_bank=KVBank(rows))
        shared_out = attn(queries, kv_bank=KVBank(rows[1]))  # every query reads query 1's supports
        for i in range(batch * shots):  # each support attends to itself only
            torch.testing.assert_close(
                support_out[i], _manual_attention(attn, supports[i], supports[i]), atol=1e-5, rtol=0
            )
        for b in range(batch):  # query b: [own ; its K supports], never another query's supports
            own = supports[b * shots:(b + 1) * shots].reshape(-1, 16)
            expected = _manual_attention(attn, queries[b], torch.cat([queries[b], own]))
            torch.testing.assert_close(query_out[b], expected, atol=1e-5, rtol=0)
            shared = _manual_attention(
                attn,
                queries[b],
                torch.cat([queries[b], supports[shots : 2 * shots].reshape(-1, 16)]),
            )
            torch.testing.assert_close(shared_out[b], shared, atol=1e-5, rtol=0)


def test_bank_modes_and_errors():
    writer = KVBank()
    writer.write("l", torch.zeros(3, 1, 4, 2), torch.zeros(3, 1, 4, 2))
    with pytest.raises(RuntimeError, match="write mode"):
        writer.read("l", 1)
    support_set = writer.to_support_set(torch.zeros(3, 1))
    reader = KVBank([support_set[:1], support_set[1:2]])
    with pytest.raises(ValueError, match="2 SupportSets for a batch of 3"):
        reader.read("l", batch_size=3)
    with pytest.raises(SupportSetError, match="layer 'other'"):
        reader.read("other", batch_size=2)
    with pytest.raises(RuntimeError, match="support pass needs"):
        reader.write("l", torch.zeros(1), torch.zeros(1))
    with pytest.raises(SupportSetError, match="same number of supports"):
        KVBank([support_set[:1], support_set[1:]])
    with pytest.raises(SupportSetError, match="empty"):
        KVBank(support_set[:0])
    with pytest.raises(SupportSetError, match="at least one"):
        KVBank([])


def test_k_shot_invariant_to_support_order_and_differs_from_one_shot(tiny_model):
    ep = make_episode(3, seed=1)
    perm = [2, 0, 1]
    z = {}
    with torch.no_grad():
        full = tiny_model.encode_supports(ep["support_images"], ep["support_masks"])
        zq = tiny_model.encode(tiny_model.normalize(ep["image"][None]), False)
        for name, sset in (("k", full), ("swapped", full[perm]), ("one", full[:1])):
            z[name] = tiny_model.query_pass(zq, sset, tiny_model.prompt_embeds_test)
    torch.testing.assert_close(z["k"], z["swapped"], atol=1e-5, rtol=0)
    assert (z["k"] - z["one"]).abs().max() > 1e-4
