# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""MODEL.WEIGHTS: released DiffewS UNets in every accepted layout, trainer checkpoints, and
errors."""

import json
import os
import shutil

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from safetensors.torch import load_file, save_file

from conftest import make_cfg, perturbed_model
from diffews import DiffewSCheckpointer
from diffews.modeling import save_release_unet


@pytest.fixture(scope="module")
def trained(tiny_sd):
    """A tiny DiffewS whose UNet differs from the base one ("fine-tuned"), and its prediction."""
    return perturbed_model(tiny_sd, seed=1, episode_seed=5)


def _release(tmp_path, model, layout, fmt="safetensors", class_name=None, drop_ref_config=False):
    root = tmp_path / "coco_fold0"
    folder = {"name": root, "unet": root / "unet", "unet/unet": root / "unet" / "unet"}[layout]
    save_release_unet(model.unet, str(folder), safe_serialization=fmt == "safetensors")
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text())
    if class_name:
        config["_class_name"] = class_name
    if drop_ref_config:
        config.pop("in_channels_ref")
    cfg_path.write_text(json.dumps(config))
    return str(root)


def _load_and_predict(tiny_sd, weights, episode):
    model = build_model(make_cfg(tiny_sd)).eval()
    DiffewSCheckpointer(model).load(weights)
    return model([episode])[0]["pred_image"]


@pytest.mark.parametrize("layout,fmt,class_name,drop_ref", [
    ("name", "safetensors", None, False),
    ("unet", "safetensors", "MyUNet2DConditionModel", True),
    ("unet/unet", "safetensors", "UNet2DConditionModel", True),
    ("unet", "bin", "MyUNet2DConditionModel", False),
])
def test_release_layouts_reproduce_prediction(
    tiny_sd, trained, tmp_path, layout, fmt, class_name, drop_ref
):
    model, episode, expected = trained
    root = _release(tmp_path, model, layout, fmt, class_name, drop_ref)
    for path in {root, os.path.join(root, "unet")} if layout != "name" else {root}:
        assert torch.equal(_load_and_predict(tiny_sd, path, episode), expected)
    base = build_model(make_cfg(tiny_sd)).eval()([episode])[0]["pred_image"]
    assert not torch.equal(base, expected)  # the loaded weights really changed the model


def test_pretrained_folder_with_support_conv_keeps_it(tiny_sd, trained, tmp_path):
    """A base folder like `stable-diffusion-2-1-ref8inchannels-tag4inchannels` (unet/ has
    conv_in_ref)."""
    model, _, _ = trained
    base = tmp_path / "sd-ref8in"
    shutil.copytree(tiny_sd, base)
    save_release_unet(model.unet, str(base / "unet"))
    rebuilt = build_model(make_cfg(str(base)))
    torch.testing.assert_close(rebuilt.unet.conv_in_ref.weight, model.unet.conv_in_ref.weight)


def test_trainer_checkpoint_round_trip(tiny_sd, trained, tmp_path):
    model, episode, expected = trained
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert not any(k.startswith("vae.") for k in saved)
    assert torch.equal(
        _load_and_predict(tiny_sd, str(tmp_path / "model_final.pth"), episode), expected
    )


def test_missing_support_conv_names_key_and_file(tiny_sd, trained, tmp_path):
    root = _release(tmp_path, trained[0], "unet")
    weights = os.path.join(root, "unet", "diffusion_pytorch_model.safetensors")
    state = load_file(weights)
    del state["conv_in_ref.weight"]
    save_file(state, weights)
    model = build_model(make_cfg(tiny_sd))
    with pytest.raises(KeyError, match="conv_in_ref.weight") as e:
        DiffewSCheckpointer(model).load(root)
    assert weights in str(e.value)


def test_shape_mismatch_names_key_and_both_shapes(tiny_sd, trained, tmp_path):
    root = _release(tmp_path, trained[0], "name")
    weights = os.path.join(root, "diffusion_pytorch_model.safetensors")
    state = load_file(weights)
    state["conv_in_ref.weight"] = torch.zeros(32, 6, 3, 3)
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"conv_in_ref.weight.*\(32, 8, 3, 3\).*\(32, 6, 3, 3\)"):
        DiffewSCheckpointer(build_model(make_cfg(tiny_sd))).load(root)


def test_trainer_checkpoint_shape_mismatch(tiny_sd, trained, tmp_path):
    state = {k: v.clone() for k, v in trained[0].state_dict().items()}
    state["unet.conv_out.bias"] = torch.zeros(7)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"unet.conv_out.bias.*\(4,\).*\(7,\)"):
        DiffewSCheckpointer(build_model(make_cfg(tiny_sd))).load(str(tmp_path / "bad.pth"))


def test_missing_files_and_wrong_architecture(tiny_sd, trained, tmp_path):
    model = build_model(make_cfg(tiny_sd))
    ckpt = DiffewSCheckpointer(model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ckpt.load(str(tmp_path / "empty"))
    root = _release(tmp_path, trained[0], "unet")
    os.remove(os.path.join(root, "unet", "diffusion_pytorch_model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no UNet weights"):
        ckpt.load(root)
    shutil.rmtree(root)
    root = _release(tmp_path, trained[0], "unet")
    cfg_path = os.path.join(root, "unet", "config.json")
    config = json.load(open(cfg_path))
    config["attention_head_dim"] = [4, 8]
    json.dump(config, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="attention_head_dim"):
        ckpt.load(root)
