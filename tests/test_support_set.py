# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SupportSet: a list of independent per-support entries (latents + K/V of every fused layer)."""

import numpy as np
import pytest
import torch

from conftest import SIZE
from diffews import DiffewSPredictor, SupportSet
from diffews.modeling import SupportSetError


def _supports(n, seed):
    rng = np.random.RandomState(seed)
    images = [rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]
    masks = [rng.rand(SIZE, SIZE) > 0.6 for _ in range(n)]
    return images, masks


def _equal(a: SupportSet, b: SupportSet) -> bool:
    return (torch.equal(a.latents, b.latents) and a.layers == b.layers
            and all(torch.equal(a.keys[k], b.keys[k]) and torch.equal(a.values[k], b.values[k])
                    for k in a.layers)
            and a.signature == b.signature and a.info == b.info)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


def _close(a: SupportSet, b: SupportSet) -> bool:
    """Latents equal bit for bit (one VAE call per image either way); keys/values equal up to
    the float rounding of a support pass run at another batch size."""
    for k in a.layers:
        torch.testing.assert_close(a.keys[k], b.keys[k], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.values[k], b.values[k], atol=1e-4, rtol=1e-4)
    return torch.equal(a.latents, b.latents) and a.layers == b.layers and a.info == b.info


def test_one_at_a_time_then_cat_equals_one_call(predictor, tiny_model, monkeypatch):
    images, masks = _supports(3, seed=0)
    together = predictor.encode_supports(images, masks)
    singles = [predictor.encode_supports([i], [m]) for i, m in zip(images, masks)]
    assert _close(SupportSet.cat(singles), together)
    assert _close(SupportSet.cat([singles[0], SupportSet.cat(singles[1:])]), together)
    queries, _ = _supports(2, seed=10)
    for a, b in zip(
        predictor.predict(queries, together), predictor.predict(queries, SupportSet.cat(singles))
    ):
        assert (a["mask_working"] == b["mask_working"]).mean() >= 0.999
    # one support per support pass (MODEL.DIFFEWS.SUPPORT_PASS_BATCH 1): equal bit for bit
    monkeypatch.setattr(tiny_model, "support_pass_batch", 1)
    together = predictor.encode_supports(images, masks)
    singles = [predictor.encode_supports([i], [m]) for i, m in zip(images, masks)]
    assert _equal(SupportSet.cat(singles), together)
    # shapes: (K, 2C, h, w) latents; (K, heads, L, head_dim) K/V per fused layer
    assert together.latents.shape == (3, 8, SIZE // 8, SIZE // 8)
    assert len(together.layers) == predictor.model.num_fused_layers
    assert all(v.shape[0] == 3 and v.ndim == 4 for v in together.keys.values())


def test_indexing_slicing_and_cat(predictor):
    images, masks = _supports(4, seed=1)
    s = predictor.encode_supports(images, masks)
    assert len(s) == 4 and len(s[1:3]) == 2 and len(s[-1]) == 1 and len(s[:0]) == 0
    assert _close(s[2], predictor.encode_supports(images[2:3], masks[2:3]))
    picked = s[[3, 0]]
    assert torch.equal(picked.latents[0], s.latents[3]) and picked.info[1] == s.info[0]
    assert _equal(SupportSet.cat([s[:2], s[2:]]), s)
    with pytest.raises(IndexError, match="support 4 out of range"):
        s[4]
    with pytest.raises(SupportSetError, match="at least one"):
        SupportSet.cat([])
    with pytest.raises(SupportSetError, match="float16 on cpu, set 0 torch.float32"):
        SupportSet.cat([s[:1], s[1:2].to(dtype=torch.float16)])
    alien = SupportSet(s.latents, s.keys, s.values, dict(s.signature, timestep=500), s.info)
    with pytest.raises(SupportSetError, match="set 1 and set 0 come from different models "
                       "\\(timestep is 500 in set 1, 1 in set 0\\)"):
        SupportSet.cat([s, alien])


def test_to_changes_kv_storage_only(predictor):
    images, masks = _supports(2, seed=2)
    s = predictor.encode_supports(images, masks)
    half = s.to(dtype=torch.float16)
    assert half.dtype == torch.float16 and half.latents.dtype == torch.float32
    assert s.dtype == torch.float32  # the original is untouched
    assert half.nbytes < 0.6 * s.nbytes
    assert "2 support(s)" in repr(half)
    assert half.device == torch.device("cpu")


def test_save_and_load_round_trip(predictor, tmp_path):
    images, masks = _supports(2, seed=3)
    s = predictor.encode_supports(images, masks)
    path = tmp_path / "sets" / "dog.pt"
    s.save(str(path))
    loaded = SupportSet.load(str(path))
    assert _equal(loaded, s)
    queries, _ = _supports(2, seed=4)
    a, b = predictor.predict(queries, s), predictor.predict(queries, loaded)
    assert all(np.array_equal(x["pred_image"], y["pred_image"]) for x, y in zip(a, b))
    # half-precision storage survives the round trip
    s.to(dtype=torch.float16).save(str(tmp_path / "half.pt"))
    assert SupportSet.load(str(tmp_path / "half.pt")).dtype == torch.float16


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(SupportSetError, match="nothing.pt: no such SupportSet file"):
        SupportSet.load(str(tmp_path / "nothing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(SupportSetError, match="garbage.pt: not a readable SupportSet file") as e:
        SupportSet.load(str(garbage))
    assert "\n" not in str(e.value)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(SupportSetError, match="other.pt: not a SupportSet file"):
        SupportSet.load(str(tmp_path / "other.pt"))
    torch.save({"format": "diffews.SupportSet", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(SupportSetError, match="version 99"):
        SupportSet.load(str(tmp_path / "future.pt"))


def test_transient_sets_have_no_signature(predictor, tiny_model):
    images, masks = _supports(1, seed=5)
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    raw = tiny_model.encode_supports(x, torch.from_numpy(np.stack(masks)))
    with pytest.raises(SupportSetError, match="carries no model signature"):
        predictor.predict(images, raw)


def test_entry_shapes_from_the_config_match_a_real_support_pass(predictor):
    from diffews.modeling.kv_fusion import support_entry_shapes

    images, masks = _supports(1, seed=6)
    s = predictor.encode_supports(images, masks)
    shapes = support_entry_shapes(dict(predictor.model.unet.config), SIZE // 8)
    assert shapes == {k: tuple(v.shape[1:]) for k, v in s.keys.items()}
