# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One whole SINE training step against the ORIGINAL training code
(tests/data/sine_train_step_reference.pt.gz, written by dev/sine_train_step_reference.py from
aim-uofa/SINE 9ff576c: its training model ``sine.model.model.SINE``, tiny random weights).

The same weights (loaded through our loader from the released layout), the same two in-context
samples and the same point draws (torch's global generator seeded before the forward): our
``SINE.forward`` in training mode must return the original's weighted loss terms, and the
gradient of their sum must equal the original's for every trainable parameter (neck, fusion,
decoder layers, heads, queries, ``temp``, ``logit_scale``), while the frozen DINOv2 gets none.
Deliberately broken variants (class queries pooled as the mean of the ID queries, other point
draws, the no-object weight 1) must fail the same comparison.
"""

import gzip
import io
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from _sine import sine_cfg
from diffews.checkpoint import load_inference_weights
from diffews.modeling.sine import training

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "sine_train_step_reference.pt.gz")
# float32 on the CPU, the same weights, inputs and points: what is left is summation order
# (timm's fused attention against the original's explicit softmax, einsum orders). Observed,
# relative to each tensor's largest value: loss terms <= 4.1e-7, gradients <= 2.4e-6 except
# the scalar ``temp``, whose gradient (1.3e-4) is a sum with cancellation: 1.5e-5
RTOL = 5e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE, "rb") as f:
        return torch.load(io.BytesIO(gzip.decompress(f.read())), weights_only=True)


def _cases():
    with open(REFERENCE, "rb") as f:
        data = torch.load(io.BytesIO(gzip.decompress(f.read())), weights_only=True)
    return [pytest.param(c["name"], id=c["name"]) for c in data["cases"]]


def _samples(ref):
    """The reference batch as in-context samples (float32 images, ``Instances``)."""
    def side(d):
        inst = Instances(tuple(d["image_size"].tolist()))
        inst.gt_classes, inst.gt_masks, inst.ins_ids = d["gt_classes"], d["gt_masks"], d["ins_ids"]
        return {"image": d["image"].float(), "instances": inst}
    return [{"ref_dict": side(s["ref"]), "tar_dict": side(s["tar"])} for s in ref["batch_fp16"]]


def _model(ref, case, tmp_path, *opts):
    t, loss = ref["tiny"], ref["loss"]
    path = str(tmp_path / "pytorch_model.bin")
    torch.save({k: v.float() if v.is_floating_point() else v
                for k, v in ref["state_dict_fp16"].items()}, path)
    cfg = sine_cfg("MODEL.WEIGHTS", path, "MODEL.SINE.LOSS.TRAIN_NUM_POINTS", case["num_points"],
                   "MODEL.SINE.LOSS.OVERSAMPLE_RATIO", case["oversample_ratio"],
                   "MODEL.SINE.LOSS.IMPORTANCE_SAMPLE_RATIO", case["importance_sample_ratio"],
                   "MODEL.SINE.LOSS.CLASS_WEIGHT", loss["class_weight"],
                   "MODEL.SINE.LOSS.MASK_WEIGHT", loss["mask_weight"],
                   "MODEL.SINE.LOSS.DICE_WEIGHT", loss["dice_weight"],
                   "MODEL.SINE.LOSS.NO_OBJECT_WEIGHT", loss["no_object_weight"], *opts,
                   tiny={"queries": t["queries"]})
    model = build_model(cfg)
    load_inference_weights(model, cfg)
    return model.train()


def _step(model, ref, case, point_seed=None):
    """Our training step: (weighted losses, total, {trainable name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(case["point_seed"] if point_seed is None else point_seed)
    losses = model(_samples(ref))
    total = sum(losses.values())
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return losses, total, grads


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _worst(case, losses, total, grads) -> dict:
    assert sorted(losses) == sorted(case["losses"])
    assert sorted(grads) == sorted(case["grads"])
    return {"losses": max(_rel(losses[k].detach(), case["losses"][k]) for k in losses),
            "total": _rel(total.detach(), case["total"]),
            "grads": max(_rel(grads[k], case["grads"][k]) for k in grads)}


def _case(ref, name):
    return [c for c in ref["cases"] if c["name"] == name][0]


@pytest.mark.parametrize("name", _cases())
def test_training_step_matches_original(reference, name, tmp_path):
    case = _case(reference, name)
    model = _model(reference, case, tmp_path)
    losses, total, grads = _step(model, reference, case)
    worst = _worst(case, losses, total, grads)
    assert max(worst.values()) <= RTOL, worst
    # 4 terms for the last layer and 4 per earlier layer (deep supervision: depth 2)
    assert len(losses) == 4 * (1 + reference["tiny"]["dec_depth"])
    # every trainable tensor of the original gets a non-zero gradient here too
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # the frozen DINOv2: the original's frozen set, no gradient, eval mode in training
    vit = model.image_encoder.encoder
    assert sorted(f"image_encoder.encoder.{n}" for n, _ in vit.named_parameters()) == \
        sorted(case["frozen"])
    assert all(not p.requires_grad and p.grad is None for p in vit.parameters())
    assert not vit.training and model.transformer_decoder.training


def test_reference_file(reference):
    assert os.path.getsize(REFERENCE) < 1024 * 1024
    assert reference["original_commit"].startswith("9ff576c")


def test_class_queries_as_mean_of_id_queries_fail(reference, tmp_path, monkeypatch):
    original = training.pool_references

    def mean_of_ids(features, masks, labels):
        ids, _, classes = original(features, masks, labels)
        return ids, torch.stack([ids[labels == c].mean(0) for c in classes.tolist()]), classes

    monkeypatch.setattr(training, "pool_references", mean_of_ids)
    case = _case(reference, "few_points")
    worst = _worst(case, *_step(_model(reference, case, tmp_path), reference, case))
    assert worst["grads"] > 1e-3 and worst["losses"] > 1e-4


def test_other_point_draws_fail(reference, tmp_path):
    case = _case(reference, "few_points")
    model = _model(reference, case, tmp_path)
    worst = _worst(case, *_step(model, reference, case, case["point_seed"] + 1))
    assert worst["grads"] > 1e-3


def test_no_object_weight_one_fails(reference, tmp_path):
    case = _case(reference, "few_points")
    model = _model(reference, case, tmp_path, "MODEL.SINE.LOSS.NO_OBJECT_WEIGHT", 1.0)
    worst = _worst(case, *_step(model, reference, case))
    assert worst["losses"] > 1e-3


def test_bad_samples_name_the_key(reference, tmp_path):
    case = _case(reference, "few_points")
    model = _model(reference, case, tmp_path)
    samples = _samples(reference)
    del samples[1]["tar_dict"]["instances"]
    with pytest.raises(ValueError, match="sample 1: 'tar_dict' has no 'instances'"):
        model(samples)
    samples = _samples(reference)
    samples[0]["ref_dict"]["instances"] = samples[0]["ref_dict"]["instances"][:0]
    with pytest.raises(ValueError, match="sample 0: the reference has no instance"):
        model(samples)
