# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The benchmark harness leaves the model as it found it."""

import pytest
import torch

from diffews.benchmark.episodes import random_episode
from diffews.benchmark.inference_paths import compare_paths
from diffews.benchmark.random_sd import build_random_diffews
from diffews.modeling.support_cache import SupportLatentCache


def _episodes(n: int = 2, size: int = 64):
    episodes = [random_episode(1, size, 7 + i) for i in range(n)]
    for e in episodes[1:]:
        e["support_images"], e["support_masks"] = (episodes[0]["support_images"],
                                                   episodes[0]["support_masks"])
    return episodes


def test_compare_paths_restores_the_support_cache():
    torch.manual_seed(0)
    model = build_random_diffews("tiny")
    cache = SupportLatentCache(4)
    model.support_cache = cache
    compare_paths(model, _episodes())
    assert model.support_cache is cache


def test_compare_paths_restores_the_support_cache_on_an_error():
    torch.manual_seed(0)
    model = build_random_diffews("tiny")
    cache = SupportLatentCache(4)
    model.support_cache = cache
    bad = _episodes()
    bad[0]["support_masks"] = bad[0]["support_masks"][:, :8]  # wrong size: the path raises
    with pytest.raises(Exception):
        compare_paths(model, bad)
    assert model.support_cache is cache
