# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE model level: weight loading (released file, no-encoder file + DINOv2 checkpoint, a
transformers DINOv2 folder, our checkpoints, errors), the support-set container, the VOS memory
rule, the episode interface and the small size rules."""

import pytest
import torch
from detectron2.modeling import build_model

from _sine import build_sine, sine_cfg, tiny_opts
from diffews.checkpoint import UntrainedModelError, load_inference_weights
from diffews.modeling.sine import SINEMemory, SINESupportSet
from diffews.utils.errors import SupportSetError
from diffews.modeling.sine import preprocess as P
from diffews.modeling.sine.encoder import interpolate_pos_embed
from diffews.modeling.sine.weights import hf_to_official

OPTS = ("MODEL.SINE.IMAGE_SIZE", 70, "MODEL.SINE.PAD_SIZE", 112)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _episode(shots=2, size=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(shots, size, size)
    masks[:, 10:50, 15:55] = 1
    return {"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "support_images": torch.randint(0, 256, (shots, 3, size, size), generator=g,
                                            dtype=torch.uint8),
            "support_masks": masks}


def _released_file(model, path, **drop):
    """``model``'s weights in the released layout (+ criterion.empty_weight)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["criterion.empty_weight"] = torch.tensor([1.0, 0.1])
    for prefix in drop.get("prefixes", ()):
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    torch.save(state, path)
    return state


def _load(path, *opts):
    cfg = sine_cfg("MODEL.WEIGHTS", path, *OPTS, *opts)
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    return model


@pytest.fixture(scope="module")
def trained():
    """A tiny SINE with weights of seed 1 and its prediction of one episode."""
    model = build_sine(*OPTS, seed=1)
    return model, model([_episode()])[0]


# -- weights -------------------------------------------------------------------------------------
def test_released_file_loads_as_it_is(tmp_path, trained):
    model, expected = trained
    path = str(tmp_path / "pytorch_model.bin")
    state = _released_file(model, path)
    loaded = _load(path)  # built from seed 0: different random weights until loaded
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(loaded([_episode()])[0]["sem_seg"], expected["sem_seg"])
    assert not torch.equal(build_sine(*OPTS)([_episode()])[0]["sem_seg"], expected["sem_seg"])


def test_file_without_encoder_takes_the_dinov2_checkpoint(tmp_path, trained):
    model, expected = trained
    path = str(tmp_path / "no_encoder.bin")
    _released_file(model, path, prefixes=("image_encoder.encoder.",))
    # an official DINOv2 training checkpoint: under "teacher", prefixed, with its heads
    vit_state = model.image_encoder.encoder.state_dict()
    teacher = {f"module.backbone.{k}": v for k, v in vit_state.items()}
    teacher["module.dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    torch.save({"teacher": teacher}, tmp_path / "dinov2_teacher.pth")
    torch.save(dict(vit_state), tmp_path / "dinov2_flat.pth")
    for name in ("dinov2_teacher.pth", "dinov2_flat.pth"):
        loaded = _load(path, "MODEL.SINE.ENCODER.WEIGHTS", str(tmp_path / name))
        assert torch.equal(loaded([_episode()])[0]["sem_seg"], expected["sem_seg"]), name
    with pytest.raises(KeyError, match="MODEL.SINE.ENCODER.WEIGHTS"):
        _load(path)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, trained):
    model, _ = trained
    path = str(tmp_path / "bad.bin")
    state = _released_file(model, path)
    state["transformer_decoder.query_feat.weight"] = torch.zeros(7, 32)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"'transformer_decoder.query_feat.weight'.*\(3, 32\).*"
                                         r"\(7, 32\)"):
        _load(path)


def test_missing_and_unexpected_keys_stop(tmp_path, trained):
    model, _ = trained
    path = str(tmp_path / "bad.bin")
    state = _released_file(model, path)
    del state["transformer_decoder.temp"]
    torch.save(state, path)
    with pytest.raises(KeyError, match="missing key 'transformer_decoder.temp'"):
        _load(path)
    state = _released_file(model, path)
    state["unet.conv_in.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(KeyError, match="unexpected key.*unet.conv_in.weight"):
        _load(path)
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        _load(str(tmp_path / "nothing.bin"))


def test_trainer_checkpoint_loads(tmp_path, trained):
    from detectron2.checkpoint import DetectionCheckpointer

    model, expected = trained
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    loaded = _load(str(tmp_path / "model_final.pth"))
    assert torch.equal(loaded([_episode()])[0]["sem_seg"], expected["sem_seg"])


def test_empty_weights_refused_unless_allowed():
    cfg = sine_cfg(*OPTS)
    model = build_model(cfg).eval()
    with pytest.raises(UntrainedModelError, match="MODEL.SINE.ALLOW_UNTRAINED"):
        load_inference_weights(model, cfg)
    cfg.MODEL.SINE.ALLOW_UNTRAINED = True
    assert load_inference_weights(model, cfg) == ""


def test_transformers_dinov2_folder_converts(tmp_path):
    """A transformers Dinov2Model (saved with save_pretrained) as MODEL.SINE.ENCODER.WEIGHTS:
    our encoder's pre-norm tokens equal its last hidden states before the final layernorm, at
    the native 518 px (no position resizing on either side)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    hf = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, image_size=518, patch_size=14,
                                  layerscale_value=0.5)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "dinov2"))
    model = build_sine(*OPTS, "MODEL.SINE.ENCODER.WEIGHTS", str(tmp_path / "dinov2"))
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        ours = model.image_encoder.patch_tokens(x)  # (1, 32, 37, 37)
        tokens = ours.flatten(2).transpose(1, 2)
        assert torch.allclose(tokens, ref.hidden_states[-1][:, 1:], atol=1e-4)
        normed = model.image_encoder.encoder.norm(tokens)
        assert torch.allclose(normed, ref.last_hidden_state[:, 1:], atol=1e-4)


def test_swiglu_names_convert():
    """Hub-layout and module-layout SwiGLU FFN names both become DINOv2's w12 / w3."""
    base = {"embeddings.cls_token": 0, "embeddings.position_embeddings": 0,
            "embeddings.patch_embeddings.projection.weight": 0,
            "embeddings.patch_embeddings.projection.bias": 0, "layernorm.weight": 0,
            "layernorm.bias": 0}
    hub = dict(base, **{"encoder.layer.0.mlp.weights_in.weight": torch.ones(4, 2),
                        "encoder.layer.0.mlp.weights_out.weight": torch.ones(2, 2)})
    new = dict(base, **{"encoder.layer.0.mlp.gate_proj.weight": torch.zeros(2, 2),
                        "encoder.layer.0.mlp.up_proj.weight": torch.ones(2, 2),
                        "encoder.layer.0.mlp.down_proj.weight": torch.ones(2, 2)})
    a, b = hf_to_official(hub), hf_to_official(new)
    assert a["blocks.0.mlp.w12.weight"].shape == b["blocks.0.mlp.w12.weight"].shape == (4, 2)
    assert b["blocks.0.mlp.w12.weight"][:2].sum() == 0  # the gate half first, as DINOv2's x1
    assert "blocks.0.mlp.w3.weight" in a and "blocks.0.mlp.w3.weight" in b


# -- support sets --------------------------------------------------------------------------------
def _support_set(model, masks_box=(10, 50), label=3):
    images = [P.to_unit(torch.randint(0, 256, (3, 70, 70), dtype=torch.uint8)) for _ in range(2)]
    masks = torch.zeros(2, 70, 70)
    masks[:, masks_box[0]:masks_box[1], 15:55] = 1
    features = model.encode(model.prepare(images))
    return model.encode_support_set("fss", features, model.pad_masks(masks)[:, None], label,
                                    info=[{"source": "a"}, {"source": "b"}])


def test_support_set_save_load_and_signature(tmp_path, trained):
    model, _ = trained
    torch.manual_seed(0)
    s = _support_set(model)
    s.save(str(tmp_path / "set.pt"))
    t = SINESupportSet.load(str(tmp_path / "set.pt"))
    assert torch.equal(t.class_queries, s.class_queries) and t.info == s.info and t.rule == "fss"
    t.check_compatible(model.support_signature())
    with pytest.raises(SupportSetError, match="other weights"):
        t.check_compatible(build_sine(*OPTS).support_signature())
    with pytest.raises(SupportSetError, match="encoder.depth is 2 in the set, 3"):
        t.check_compatible(build_sine(*OPTS, tiny={"depth": 3}).support_signature())
    half = t.to(dtype=torch.float16)
    assert half.dtype == torch.float16 and half.class_labels.dtype == torch.int64
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(SupportSetError, match="not a SINESupportSet file"):
        SINESupportSet.load(str(tmp_path / "other.pt"))
    with pytest.raises(SupportSetError, match="no such"):
        SINESupportSet.load(str(tmp_path / "missing.pt"))


def test_support_set_cat_merges_a_class(trained):
    """Two sets of class 3 pool together (from their sums) as the four supports at once."""
    model, _ = trained
    torch.manual_seed(0)
    a, b = _support_set(model), _support_set(model, (20, 60))
    c = _support_set(model, label=5)
    merged = SINESupportSet.cat([a, b, c])
    assert merged.class_labels.tolist() == [3, 5] and len(merged) == 6
    total = (a.class_sums[0] + b.class_sums[0]) / (a.class_areas[0] + b.class_areas[0] + 1e-8)
    assert torch.allclose(merged.class_queries[0], total)
    assert torch.equal(merged.class_queries[1], c.class_queries[0])


# -- model interface and small rules -------------------------------------------------------------
def test_episode_outputs_and_errors(trained):
    model, out = trained
    assert out["pred_mask"].shape == (70, 70) and out["pred_mask"].dtype == torch.bool
    assert torch.equal(out["pred_mask"], out["sem_seg"] > 0.7)
    assert 0 <= float(out["score"]) <= 1
    bad = _episode()
    bad["image"] = torch.zeros(3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="MODEL.SINE.IMAGE_SIZE 70x70"):
        model([bad])
    model.train()
    try:
        # training mode takes in-context samples (tests/test_sine_train_step.py), not episodes
        with pytest.raises(ValueError, match="sample 0: no 'ref_dict'"):
            model([_episode()])
    finally:
        model.eval()


def test_position_embedding_native_grid_is_kept():
    pe = torch.randn(1, 1 + 37 * 37, 8)
    assert interpolate_pos_embed(pe, 37, 37) is pe
    assert interpolate_pos_embed(pe, 8, 6).shape == (1, 1 + 48, 8)


def test_size_rules():
    assert P.vos_model_size(60, 90, 98) == (65, 98)   # landscape: h = int(98 / 1.5)
    assert P.vos_model_size(90, 60, 98) == (98, 65)   # portrait: w = int(98 * 2 / 3)
    assert P.fsis_size(90, 120, 98, 98) == (74, 98)   # 73.5 rounds up: int(x + 0.5)
    corner = torch.zeros(4, 4)
    corner[0, 0] = 1
    assert P.fss_mask(corner, 2)[0, 0] == 1  # FSS: legacy nearest, source floor(dst * 2) = 0
    assert P.fsis_mask(corner.numpy(), (2, 2))[0, 0] == 0  # FSIS: PIL nearest, centre: 1


def test_memory_rule():
    """Capacity 3 - 1 (first frame fixed), linear decay over 20 frames, smallest out."""
    mem = SINEMemory(size=3, decay_ratio=20, fix_first_frame=True)
    mem.offer(0, 1.0, "gt")
    mem.offer(0, 0.5, "p0")
    mem.offer(1, 0.9, "p1")
    mem.offer(2, 0.2, "p2")   # decayed: p0 0.45, p1 0.855, p2 0.2 -> p2 dropped
    assert sorted(mem.references()[:-1]) == ["p0", "p1"] and mem.references()[-1] == "gt"
    mem.offer(30, 0.3, "p30")  # p0 and p1 decay to 0; p0 (score 0.5 < 0.9) dropped
    assert sorted(mem.references()[:-1]) == ["p1", "p30"]


def test_speed_measurement_runs():
    """diffews/benchmark/sine_speed.py on a tiny model (the real one is SINE-L at 518/896)."""
    from diffews.benchmark.sine_speed import measure

    r = measure(70, 112, shots=2, repeats=2, warmup=1, opts=tiny_opts())
    assert len(r["seconds"]) == 2 and r["seconds_per_episode"] > 0
    assert r["peak_gib"] > 0 and r["parameters"] < 1
