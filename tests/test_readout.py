# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""diffews.prediction_score on hand-made decoded images: each expected value is written from the
rule (the gap between the one-sigma bands of the prediction inside and outside the mask, 0 when a
side is empty), never computed with the code under test's helpers."""

import math

import numpy as np
import pytest
import torch

import diffews
from diffews.modeling.readout import confidence_map, prediction_score


def _rel_mask(image):
    """The published readout, written out: RGB mean > 0.25 x its maximum."""
    p = image.astype(np.float64).mean(axis=2)
    return p > 0.25 * p.max()


def _grey(level, size=32):
    return np.full((size, size, 3), level, np.uint8)


def test_clean_white_on_black_is_one():
    img = _grey(0)
    img[8:24, 4:20] = 255
    assert diffews.prediction_score(img, _rel_mask(img)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("level", [1, 40, 102, 128, 200, 255])
def test_uniform_at_any_grey_level_is_zero(level):
    img = _grey(level)
    mask = _rel_mask(img)
    assert mask.all()  # the relative threshold marks every pixel of a uniform prediction
    assert diffews.prediction_score(img, mask) == 0.0


def test_all_foreground_and_empty_are_zero():
    img = _grey(90)
    img[:16] = 200  # contrast, but the mask has no background: nothing to contrast it with
    assert diffews.prediction_score(img, np.ones((32, 32), bool)) == 0.0
    assert diffews.prediction_score(img, np.zeros((32, 32), bool)) == 0.0
    black = _grey(0)
    assert not _rel_mask(black).any()
    assert diffews.prediction_score(black, _rel_mask(black)) == 0.0


def test_uniform_noise_scores_half_minus_one_over_sqrt12():
    rng = np.random.RandomState(0)
    img = np.repeat(rng.randint(0, 256, (256, 256, 1)), 3, axis=2).astype(np.uint8)
    # uniform on [0, 1] cut at 0.25: inside U(0.25, 1) (mean 0.625, std 0.75/sqrt 12), outside
    # U(0, 0.25) (mean 0.125, std 0.25/sqrt 12): gap 0.5 - 1/sqrt(12)
    expected = 0.5 - 1.0 / math.sqrt(12.0)
    assert diffews.prediction_score(img, _rel_mask(img)) == pytest.approx(expected, abs=0.01)


def test_dim_object_and_grey_background():
    img = _grey(0)
    img[4:12, 4:12] = 102  # a dim object on black: its brightness, 0.4
    assert diffews.prediction_score(img, _rel_mask(img)) == pytest.approx(0.4, abs=1e-6)
    img = _grey(51)
    img[4:12, 4:12] = 255  # white on a 0.2 grey: 0.8
    assert diffews.prediction_score(img, img.mean(axis=2) > 128) == pytest.approx(0.8, abs=1e-6)


def test_spread_inside_lowers_the_score():
    img = _grey(0)
    img[0:16, 0:16] = 255
    img[16:32, 0:16] = 153  # inside: half 1.0, half 0.6 -> mean 0.8, std 0.2
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    assert diffews.prediction_score(img, mask) == pytest.approx(0.8 - 0.2, abs=1e-6)


def test_batched_tensor_form_equals_the_array_form():
    rng = np.random.RandomState(1)
    imgs = rng.randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    masks = rng.rand(4, 16, 16) > 0.5
    batch = prediction_score(torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()),
                             torch.from_numpy(masks))
    assert batch.shape == (4,)
    for i in range(4):
        assert float(batch[i]) == pytest.approx(diffews.prediction_score(imgs[i], masks[i]))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        diffews.prediction_score(np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="differ in size"):
        diffews.prediction_score(_grey(0, 8), np.zeros((4, 4), bool))


def test_confidence_map_is_the_rgb_mean_nearest_resized():
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0] = (255, 0, 0)  # mean 85 -> 1/3
    img[3, 3] = 255
    conf = confidence_map(img, (8, 8))
    assert conf.shape == (8, 8) and conf.dtype == np.float32
    assert conf[0, 0] == pytest.approx(1 / 3) and conf[1, 1] == pytest.approx(1 / 3)
    assert conf[7, 7] == pytest.approx(1.0) and conf[4, 4] == 0.0
