# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's loss and matcher against the original's (tests/data/sine_loss_reference.pt, written
by ``dev/sine_train_reference.py`` from aim-uofa/SINE's own ``criterion.py`` / ``matcher.py``).

Every loss term and the gradient of the weighted total w.r.t. every prediction tensor (last layer
and aux layers, ID and instance branches) must agree within ``RTOL`` relative to the largest
value of the compared quantity (float32 arithmetic in a different order: the observed difference
is <= 1.4e-7 relative on the gradients, 0 on the loss terms). Broken variants (no-object weight 1,
dice replaced by BCE, other point draws) must fail the same comparison.
"""

import os
from typing import Dict, Tuple

import pytest
import torch

from diffews.modeling.sine import criterion as crit_mod
from diffews.modeling.sine import (SineCriterion, SineHungarianMatcher,
                                   build_sine_criterion, prepare_targets)
from diffews.modeling.sine.matcher import match_ids, pairwise_dice, pairwise_sigmoid_ce

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "sine_loss_reference.pt")
RTOL = 1e-6
KEYS = ("pred_id_logits", "pred_ins_logits", "pred_id_masks", "pred_ins_masks")


def _reference() -> Dict:
    return torch.load(REFERENCE, weights_only=True)


def _cases():
    return [pytest.param(c, id=c["name"]) for c in _reference()["cases"]]


def _run(case: Dict, no_object_weight=None, point_seed=None) -> Tuple[Dict, torch.Tensor, Dict]:
    """Our criterion on the case's inputs: (unweighted terms, weighted total, gradients)."""
    matcher = SineHungarianMatcher(case["class_weight"], case["mask_weight"], case["dice_weight"],
                                   num_points=case["num_points"])
    criterion = SineCriterion(
        matcher, case["class_weight"], case["mask_weight"], case["dice_weight"],
        no_object_weight if no_object_weight is not None else case["no_object_weight"],
        case["num_points"], case["oversample_ratio"], case["importance_sample_ratio"],
        num_aux_layers=case["aux_layers"])
    named, outputs = {}, []
    for b, o in enumerate(case["outputs"]):
        out = {k: v for k, v in o.items() if k != "aux_outputs"}
        for k in KEYS:
            out[k] = o[k].clone().requires_grad_(True)
            named[f"b{b}.{k}"] = out[k]
        out["aux_outputs"] = []
        for i, a in enumerate(o["aux_outputs"]):
            aux = {k: a[k].clone().requires_grad_(True) for k in KEYS}
            named.update({f"b{b}.aux{i}.{k}": aux[k] for k in KEYS})
            out["aux_outputs"].append(aux)
        outputs.append(out)
    torch.manual_seed(case["point_seed"] if point_seed is None else point_seed)
    losses = criterion(outputs, case["ref_targets"], case["tar_targets"])
    total = sum(criterion.weigh(losses).values())
    total.backward()
    return losses, total, {k: v.grad for k, v in named.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|, tiny)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _worst(case: Dict, losses: Dict, total: torch.Tensor, grads: Dict) -> float:
    """The largest relative difference from the reference over terms, total and gradients."""
    assert sorted(losses) == sorted(case["losses"])
    assert sorted(grads) == sorted(case["grads"])
    diffs = [_rel(losses[k].detach(), case["losses"][k]) for k in case["losses"]]
    diffs.append(_rel(total.detach(), case["total"]))
    diffs += [_rel(grads[k], case["grads"][k]) for k in case["grads"]]
    return max(diffs)


@pytest.mark.parametrize("case", _cases())
def test_loss_and_gradients_match_original(case):
    losses, total, grads = _run(case)
    assert _worst(case, losses, total, grads) <= RTOL
    # the terms the original returns: 4 for the last layer, 4 per aux layer
    assert len(losses) == 4 * (1 + case["aux_layers"])
    # image 1 shares no instance id with its reference: its ID masks get no gradient, in both
    zero = sorted(k for k, g in grads.items() if g.abs().sum() == 0)
    assert zero == sorted(k for k, g in case["grads"].items() if g.abs().sum() == 0)
    assert zero and all(k.startswith("b1.") and k.endswith("pred_id_masks") for k in zero)


def test_reference_file_is_small():
    assert os.path.getsize(REFERENCE) < 512 * 1024
    assert _reference()["original_commit"]


@pytest.mark.parametrize("case", _cases()[:2])
def test_no_object_weight_one_fails(case):
    assert _worst(case, *_run(case, no_object_weight=1.0)) > 1e-3


@pytest.mark.parametrize("case", _cases()[:2])
def test_dice_as_bce_fails(case, monkeypatch):
    monkeypatch.setattr(crit_mod, "dice_loss", crit_mod.sigmoid_ce_loss)
    assert _worst(case, *_run(case)) > 1e-3


def test_other_point_draws_fail():
    case = [c for c in _reference()["cases"] if c["name"] == "few_points"][0]
    assert _worst(case, *_run(case, point_seed=case["point_seed"] + 1)) > 1e-3


def test_matcher_obvious_assignment():
    """Query 2 predicts target 0 (mask and class), query 0 predicts target 1; query 1 is empty."""
    tar = torch.zeros(2, 16, 16)
    tar[0, :8] = 1
    tar[1, :, 8:] = 1
    masks = torch.full((3, 16, 16), -20.0)
    masks[2][tar[0] > 0] = 20.0
    masks[0][tar[1] > 0] = 20.0
    logits = torch.full((3, 3), -5.0)  # K = 2 reference classes + no object
    logits[2, 1] = logits[0, 0] = logits[1, 2] = 5.0
    out = {"pred_ins_logits": logits[None], "pred_ins_masks": masks[None]}
    targets = {"labels_t": torch.tensor([1, 0]), "masks": tar, "ids": torch.tensor([7, 8])}
    matcher = SineHungarianMatcher(num_points=500)
    torch.manual_seed(0)
    ids, ins = matcher([out], [{"ids": torch.tensor([8, 5])}], [targets])
    rows, cols = ins[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    # ID queries: reference 0 (id 8) is target 1; reference 1 (id 5) is not in the target
    assert ids[0][0].tolist() == [0] and ids[0][1].tolist() == [1]


def test_matcher_prefers_class_when_masks_tie():
    """Equal masks: the class cost decides (query 1 says class 1, query 0 says class 0)."""
    masks = torch.zeros(2, 8, 8)
    logits = torch.tensor([[4.0, -4.0, 0.0], [-4.0, 4.0, 0.0]])
    out = {"pred_ins_logits": logits[None], "pred_ins_masks": masks[None]}
    tar = {"labels_t": torch.tensor([1]), "masks": torch.ones(1, 8, 8), "ids": torch.tensor([1])}
    _, ins = SineHungarianMatcher(num_points=64)([out], [{"ids": torch.tensor([2])}], [tar])
    assert ins[0][0].tolist() == [1] and ins[0][1].tolist() == [0]


def test_match_ids_pairs_common_ids():
    ref, tar = match_ids(torch.tensor([10, 11, 12, 13]), torch.tensor([11, 99, 13]))
    assert ref.tolist() == [1, 3] and tar.tolist() == [0, 2]
    ref, tar = match_ids(torch.tensor([1, 2]), torch.tensor([3]))
    assert ref.numel() == 0 and tar.numel() == 0 and ref.dtype == torch.int64


def test_pairwise_costs_equal_per_pair_formulas():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 50, generator=g), (torch.rand(2, 50, generator=g) > 0.5)
    targets = targets.float()
    ce, dice = pairwise_sigmoid_ce(logits, targets), pairwise_dice(logits, targets)
    for q in range(3):
        for n in range(2):
            p, t = logits[q].sigmoid(), targets[n]
            bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
            assert torch.allclose(ce[q, n], bce, atol=1e-5)
            d = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            assert torch.allclose(dice[q, n], d, atol=1e-6)


def test_target_class_outside_reference_is_refused():
    case = _reference()["cases"][0]
    tars = [dict(t) for t in case["tar_targets"]]
    tars[1]["labels"] = torch.tensor([5, 6])
    criterion = SineCriterion(SineHungarianMatcher(num_points=16), num_points=16)
    with pytest.raises(ValueError, match=r"image 1: target classes \[6\].*\[5\]"):
        criterion(case["outputs"], case["ref_targets"], tars)


def test_config_builds_the_released_criterion():
    from diffews.config import build_config

    cfg = build_config()
    criterion = build_sine_criterion(cfg, num_decoder_layers=6)
    assert criterion.weight_dict["loss_ce_ins_5"] == 2.0 and criterion.weight_dict["loss_dice"] == 5
    assert len(criterion.weight_dict) == 4 * 7
    assert criterion.empty_weight.tolist() == pytest.approx([1.0, 0.1])
    assert "empty_weight" in criterion.state_dict()
    assert (criterion.num_points, criterion.oversample_ratio) == (12544, 3.0)
    assert criterion.importance_sample_ratio == 0.75 and criterion.matcher.cost_dice == 5.0
    cfg.MODEL.SINE.LOSS.DEEP_SUPERVISION = False
    assert len(build_sine_criterion(cfg, 6).weight_dict) == 4


def test_prepare_targets_pads_bottom_right():
    from detectron2.structures import Instances

    inst = Instances((3, 4), gt_classes=torch.tensor([2]), ins_ids=torch.tensor([9]),
                     gt_masks=torch.ones(1, 3, 4, dtype=torch.uint8))
    (t,) = prepare_targets([inst], (5, 6))
    assert t["masks"].shape == (1, 5, 6) and t["masks"].sum() == 12
    assert t["masks"][0, :3, :4].all() and t["labels"].tolist() == [2] and t["ids"].tolist() == [9]
    with pytest.raises(ValueError, match=r"\(1, 3, 4\).*\(2, 2\)"):
        prepare_targets([inst], (2, 2))
