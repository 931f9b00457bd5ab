# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""UNet weights as users have them (issue 8, item 6): the fp16 variant and sharded safetensors,
in MODEL.DIFFEWS.PRETRAINED and in released UNets, with the dtype in the log; corrupt or partial
weight files stop with an error naming the file."""

import copy
import logging
import os
import shutil

import pytest
import torch
from detectron2.modeling import build_model
from diffusers import UNet2DConditionModel

from conftest import make_cfg, perturbed_model
from diffews import DiffewSCheckpointer
from diffews.modeling import save_release_unet
from diffews.cli.preflight import check_pretrained, check_weights

UNET_LOG = "diffews.modeling.unet"


@pytest.fixture(scope="module")
def trained(tiny_sd):
    """A tiny DiffewS whose UNet differs from the base one, and its prediction on an episode."""
    return perturbed_model(tiny_sd, seed=3, episode_seed=7)


def _unet_state(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_pretrained_fp16_variant_only(tiny_sd, tmp_path, caplog):
    sd = tmp_path / "sd_fp16"
    shutil.copytree(tiny_sd, sd)
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    shutil.rmtree(sd / "unet")
    copy.deepcopy(base).half().save_pretrained(str(sd / "unet"), variant="fp16")
    assert sorted(os.listdir(sd / "unet")) == ["config.json",
                                               "diffusion_pytorch_model.fp16.safetensors"]
    assert check_pretrained(str(sd)) == 16  # the preflight accepts it
    with caplog.at_level(logging.INFO, logger=UNET_LOG):
        model = build_model(make_cfg(str(sd)))
    assert "stored as float16, fp16 variant; the model runs in float32" in caplog.text
    assert model.unet.dtype == torch.float32
    for name, p in base.state_dict().items():  # the fp16-rounded weights, upcast
        torch.testing.assert_close(model.unet.state_dict()[name], p.half().float(), rtol=0, atol=0)


def test_pretrained_sharded(tiny_sd, tmp_path, caplog):
    sd = tmp_path / "sd_sharded"
    shutil.copytree(tiny_sd, sd)
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    shutil.rmtree(sd / "unet")
    base.save_pretrained(str(sd / "unet"), max_shard_size="300KB")
    shards = [f for f in os.listdir(sd / "unet") if f.endswith(".safetensors")]
    assert len(shards) > 2 and os.path.isfile(sd / "unet" /
                                              "diffusion_pytorch_model.safetensors.index.json")
    with caplog.at_level(logging.INFO, logger=UNET_LOG):
        model = build_model(make_cfg(str(sd)))
    assert "safetensors.index.json (stored as float32" in caplog.text
    reference = build_model(make_cfg(tiny_sd))
    for name, p in reference.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], p), name


def test_release_sharded_and_fp16_variant(tiny_sd, trained, tmp_path, caplog):
    model, episode, expected = trained
    sharded = tmp_path / "sharded" / "unet"
    model.unet.save_pretrained(str(sharded), max_shard_size="300KB")
    assert os.path.isfile(sharded / "diffusion_pytorch_model.safetensors.index.json")
    check_weights(str(sharded.parent), allow_untrained=False)
    loaded = build_model(make_cfg(tiny_sd)).eval()
    DiffewSCheckpointer(loaded).load(str(sharded.parent))
    assert torch.equal(loaded([episode])[0]["pred_image"], expected)

    fp16 = tmp_path / "fp16" / "unet"
    copy.deepcopy(model.unet).half().save_pretrained(str(fp16), variant="fp16")
    assert not os.path.exists(fp16 / "diffusion_pytorch_model.safetensors")
    loaded = build_model(make_cfg(tiny_sd)).eval()
    with caplog.at_level(logging.INFO, logger=UNET_LOG):
        DiffewSCheckpointer(loaded).load(str(fp16.parent))
    assert "fp16.safetensors (stored as float16, fp16 variant; loaded into the float32 model)" \
        in caplog.text
    assert loaded.unet.dtype == torch.float32
    for name, p in _unet_state(model).items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], p.half().float(), rtol=0,
                                   atol=0)


def test_missing_shard_and_corrupt_files_name_the_file(tiny_sd, trained, tmp_path):
    model = trained[0]
    target = build_model(make_cfg(tiny_sd))
    sharded = tmp_path / "sharded" / "unet"
    model.unet.save_pretrained(str(sharded), max_shard_size="300KB")
    shard = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))[-1]
    os.remove(sharded / shard)
    with pytest.raises(FileNotFoundError, match=f"{shard}: shard named in .*index.json is missing"):
        check_weights(str(sharded.parent), allow_untrained=False)
    with pytest.raises(FileNotFoundError, match=f"{shard}: shard named in"):
        DiffewSCheckpointer(target).load(str(sharded.parent))

    for fmt in ("safetensors", "bin"):
        folder = tmp_path / f"broken_{fmt}"
        save_release_unet(model.unet, str(folder / "unet"), safe_serialization=fmt == "safetensors")
        weights = folder / "unet" / f"diffusion_pytorch_model.{fmt}"
        weights.write_bytes(weights.read_bytes()[:2000])  # truncated: a partial copy
        kind = "safetensors" if fmt == "safetensors" else "PyTorch"
        with pytest.raises(ValueError, match=f"{weights}: not a readable {kind} weights file"):
            DiffewSCheckpointer(target).load(str(folder))
    with pytest.raises(ValueError, match="not a readable safetensors"):  # header check only
        check_weights(str(tmp_path / "broken_safetensors"), allow_untrained=False)

    pth = tmp_path / "model.pth"
    DiffewSCheckpointer(model, save_dir=str(tmp_path)).save("model")
    pth.write_bytes(pth.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"model.pth: not a readable checkpoint \(a zip archive"):
        check_weights(str(pth), allow_untrained=False)  # before the model is built
    with pytest.raises(ValueError, match=f"{pth}: not a readable checkpoint .*truncated"):
        DiffewSCheckpointer(target).load(str(pth))
    single = tmp_path / "broken_safetensors" / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ValueError, match="give the folder that holds it"):
        DiffewSCheckpointer(target).load(str(single))
