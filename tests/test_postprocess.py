# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Mask -> instances strategies on hand-made masks (diffews/predictor/instances.py)."""

import numpy as np
import pytest
import torch
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import BitMasks

from diffews.predictor.instances import MODES, class_instances, mask_box, masks_to_instances


def scene():
    """A 3x4 block, a 2x2 block (diagonally touching a 1-pixel bridge) and a 1-pixel speck."""
    m = np.zeros((12, 16), bool)
    m[1:4, 2:6] = True          # A: 12 px, rows 1-3, cols 2-5
    m[7:9, 10:12] = True        # B: 4 px, rows 7-8, cols 10-11
    m[9, 12] = True             # touches B diagonally: 8-connected to B -> B has 5 px
    m[6, 0] = True              # speck: 1 px
    p = np.zeros(m.shape, np.float32)
    p[1:4, 2:6] = 0.8
    p[7:9, 10:12] = 0.4
    p[9, 12] = 0.9
    p[6, 0] = 0.5
    return m, p


def test_mask_box_is_tight_with_exclusive_max():
    m, _ = scene()
    assert mask_box(m[:5]) == (2.0, 1.0, 6.0, 4.0)
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((3, 3), bool))
    # detectron2's BitMasks box rule
    assert BitMasks(torch.from_numpy(m[None, :5])).get_bounding_boxes().tensor[0].tolist() == [
        2.0, 1.0, 6.0, 4.0]


def test_strategies_on_a_hand_made_mask():
    m, p = scene()
    comps = class_instances(m, p, class_score=0.5, mode="components", min_area=2)
    assert [int(c.sum()) for c, _ in comps] == [12, 5]  # speck dropped, diagonal pixel joins B
    # score = class_score * mean prob over the instance's pixels
    assert comps[0][1] == pytest.approx(0.5 * 0.8)
    assert comps[1][1] == pytest.approx(0.5 * (4 * 0.4 + 0.9) / 5)
    assert mask_box(comps[1][0]) == (10.0, 7.0, 13.0, 10.0)

    (whole,) = class_instances(m, p, mode="mask", min_area=2)
    assert np.array_equal(whole[0], m)  # the speck stays in the whole mask
    assert whole[1] == pytest.approx((12 * 0.8 + 4 * 0.4 + 0.9 + 0.5) / 18)

    both = class_instances(m, p, mode="mask+components", min_area=2)
    assert len(both) == 3 and np.array_equal(both[2][0], comps[0][0] | comps[1][0])
    assert both[2][1] == pytest.approx((12 * 0.8 + 4 * 0.4 + 0.9) / 17)
    # a single component is not repeated as a union
    assert len(class_instances(m[:5], p[:5], mode="mask+components")) == 1
    # min_area 0 keeps the speck; no prob map scores every pixel 1
    assert [s for _, s in class_instances(m, None, 0.7, "components", 0)] == [0.7, 0.7, 0.7]
    for mode in MODES:
        assert class_instances(np.zeros((4, 4), bool), mode=mode) == []
    with pytest.raises(ValueError, match="instance mode"):
        class_instances(m, p, mode="blobs")
    with pytest.raises(ValueError, match="differ in size"):
        class_instances(m, p[:5])


def test_topk_across_classes_and_detectron2_format():
    m, p = scene()
    masks = np.stack([m, m, np.zeros_like(m)])
    probs = np.stack([p, p * 0.5, p])
    inst = masks_to_instances(masks, probs, class_ids=[4, 9, 11], class_scores=[1.0, 1.0, 1.0],
                              mode="components", min_area=2, topk=3)
    # candidates: class 4: 0.8, 0.5; class 9: 0.4, 0.25 -> keep 0.8, 0.5, 0.4
    assert inst.scores.tolist() == pytest.approx([0.8, 0.5, 0.4])
    assert inst.pred_classes.tolist() == [4, 4, 9]
    assert inst.pred_masks.dtype == torch.bool and tuple(inst.pred_masks.shape) == (3, 12, 16)
    assert inst.image_size == (12, 16)
    assert inst.pred_boxes.tensor.tolist() == [[2, 1, 6, 4], [10, 7, 13, 10], [2, 1, 6, 4]]
    for k in range(3):
        assert mask_box(inst.pred_masks[k].numpy()) == tuple(inst.pred_boxes.tensor[k].tolist())
    # what COCOEvaluator.process turns it into: XYWH boxes and RLE masks
    coco = instances_to_coco_json(inst, 7)
    assert coco[1]["bbox"] == [10.0, 7.0, 3.0, 3.0] and coco[1]["category_id"] == 4
    assert set(coco[0]["segmentation"]) == {"size", "counts"}
    # topk <= 0 keeps everything; an image without any mask gives an empty Instances
    assert len(masks_to_instances(masks, probs, mode="components", min_area=2, topk=0)) == 4
    empty = masks_to_instances(np.zeros((2, 5, 6), bool))
    assert len(empty) == 0 and tuple(empty.pred_masks.shape) == (0, 5, 6)
    with pytest.raises(ValueError, match="need as many"):
        masks_to_instances(masks, probs, class_ids=[1, 2])
