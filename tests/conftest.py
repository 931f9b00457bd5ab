# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Shared fixtures: a tiny random Stable Diffusion folder written with save_pretrained, and the
detectron2 config that builds DiffewS on it through the real loading code."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

SIZE = 64  # working size in tests: 8x8 latents with the tiny 4-level VAE


@pytest.fixture(scope="session", autouse=True)
def _file_hash_cache(tmp_path_factory):
    """The weights' hash cache (``diffews.utils.journal.hash_cache_dir``) in the session's
    temporary folder, not the user's ~/.cache (subprocesses inherit it)."""
    old = os.environ.get("DIFFEWS_CACHE")
    os.environ["DIFFEWS_CACHE"] = str(tmp_path_factory.mktemp("diffews_cache"))
    yield
    if old is None:
        os.environ.pop("DIFFEWS_CACHE", None)
    else:
        os.environ["DIFFEWS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from diffews.quickstart.tiny_sd import build_tiny_sd

    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny_sd")), seed=0)


def make_cfg(pretrained, *opts):
    from detectron2.config import get_cfg

    from diffews import add_diffews_config

    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_file(
        os.path.join(os.path.dirname(__file__), "..", "configs", "Base-DiffewS.yaml")
    )
    cfg.merge_from_list(["MODEL.DIFFEWS.PRETRAINED", pretrained, "INPUT.IMAGE_SIZE", SIZE,
                         "MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture
def tiny_cfg(tiny_sd):
    return make_cfg(tiny_sd)


@pytest.fixture(scope="session")
def tiny_model(tiny_sd):
    """A tiny DiffewS in eval mode, built by build_model from the tiny SD folder."""
    from detectron2.modeling import build_model

    model = build_model(make_cfg(tiny_sd)).eval()
    return model


def perturbed_model(tiny_sd, seed: int, episode_seed: int):
    """A tiny DiffewS in eval mode whose UNet differs from the base one (a "fine-tuned" model:
    every weight plus N(0, 0.05) noise of ``seed``), a 2-shot episode and its prediction."""
    from detectron2.modeling import build_model

    model = build_model(make_cfg(tiny_sd)).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    episode = make_episode(2, seed=episode_seed)
    return model, episode, model([episode])[0]["pred_image"]


def make_episode(shots: int, seed: int, size: int = SIZE):
    from diffews.benchmark.episodes import random_episode

    return random_episode(shots, size, seed)
