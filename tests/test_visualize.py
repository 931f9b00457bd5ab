# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
import numpy as np
import torch

from conftest import make_episode
from diffews.utils.overlay import draw_contour, overlay_mask
from diffews.utils.visualize import episode_grid


def test_contour_is_the_inner_boundary():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    out = draw_contour(np.zeros((5, 5, 3), np.uint8), mask, (0, 255, 0))
    expected = mask.copy()
    expected[2, 2] = False
    assert np.array_equal(out[..., 1] == 255, expected)


def test_overlay_tints_only_the_mask():
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay_mask(image, np.array([[1, 0], [0, 0]]), (200, 0, 0), alpha=0.5)
    assert out[0, 0].tolist() == [150, 50, 50] and out[1, 1].tolist() == [100, 100, 100]


def test_episode_grid_has_a_row_per_episode():
    episodes = [make_episode(1, seed=0, size=32), make_episode(3, seed=1, size=32)]
    outputs = [{"pred_mask": torch.zeros(32, 32, dtype=torch.bool),
                "pred_image": torch.zeros(3, 32, 32, dtype=torch.uint8)} for _ in episodes]
    grid = episode_grid(episodes, outputs, height=40)
    assert grid.dtype == np.uint8 and grid.shape[0] == 2 * 42
    # the 3-shot row is wider: query GT, prediction, decoded, 3 supports
    assert grid.shape[1] >= 6 * 40
