# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Our SINE against the ORIGINAL code's outputs (tests/data/sine_reference.pt.gz, written by
dev/sine_reference.py from aim-uofa/SINE 9ff576c on a tiny random model).

From the same raw inputs (uint8 images, masks, polygons, video frames) and the same weights,
loaded through our loading path, our pre-processing, model and readouts must give the original's
FSS semantic maps and masks (1/2/5-shot), FSIS instances (preprocess then test) and VOS object
masks (eval_vos's memory loop). Deliberately broken variants (no padding, the final LayerNorm
applied, RGB instead of BGR in FSIS) must fail the same checks.
"""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _sine import reference_data, sine_cfg
from diffews.modeling.sine import SINEMemory, SINESupportSet
from diffews.modeling.sine import preprocess as P
from diffews.modeling.sine.inference import fsis_instances, label_map, vos_objects

# float32 on CPU, the same weights and inputs: the differences left are summation order (timm's
# fused attention vs the original's explicit softmax, batch composition), about 1e-6
SEM_TOL = 1e-4
SCORE_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tmp_path, *opts):
    """Tiny SINE with the reference weights, loaded by checkpoint.load_inference_weights from a
    file in the released layout (criterion.empty_weight included)."""
    from detectron2.modeling import build_model

    from diffews.checkpoint import load_inference_weights

    path = os.path.join(tmp_path, "pytorch_model.bin")
    torch.save(reference_data()["state_dict"], path)
    cfg = sine_cfg("MODEL.WEIGHTS", path, *opts)
    model = build_model(cfg).eval()
    assert load_inference_weights(model, cfg) == path
    return model


# -- FSS -----------------------------------------------------------------------------------------
def fss_agreement(model) -> dict:
    """Run every FSS episode as the benchmark does; the worst sem_seg difference and the
    fewest agreeing mask pixels over the episodes."""
    cfg = reference_data()["config"]["fss"]
    s = cfg["image_size"]
    worst, agree = 0.0, 1.0
    for ep in reference_data()["fss"]:
        episode = {
            "image": torch.from_numpy(P.fss_image(ep["query"].numpy(), s)).permute(2, 0, 1),
            "support_images": torch.stack([torch.from_numpy(P.fss_image(x.numpy(), s))
                                           .permute(2, 0, 1) for x in ep["supports"]]),
            "support_masks": torch.stack([P.fss_mask(m.numpy(), s) for m in ep["support_masks"]]),
        }
        out = model([episode])[0]
        worst = max(worst, (out["sem_seg"] - ep["sem_seg"]).abs().max().item())
        agree = min(agree, (out["pred_mask"] == ep["pred_mask"]).float().mean().item())
    return {"sem_seg_max_abs_diff": worst, "mask_agreement": agree}


# -- FSIS ----------------------------------------------------------------------------------------
def fsis_agreement(model, fmt: str = "BGR") -> dict:
    """Pool each class over its support instances (class order of first appearance, as the
    original's dict), decode each test image without ID queries, compare the instances."""
    data, cfg = reference_data()["fsis"], reference_data()["config"]["fsis"]
    lo, hi = cfg["min_size"], cfg["max_size"]
    feats, masks, order = {}, {}, []
    for sup in data["supports"]:
        image = sup["image"].numpy()
        resized = P.fsis_image(image, lo, hi, fmt)
        feature = model.encode(model.prepare([P.to_unit(resized)]))[0]
        for ann in sup["annotations"]:
            c = int(ann["category_id"])
            m = P.fsis_polygon_mask(ann["polygons"], image.shape[:2], resized.shape[:2])
            if c not in feats:
                order.append(c)
                feats[c], masks[c] = [], []
            if not feats[c] or feats[c][-1] is not feature:
                feats[c].append(feature)
                masks[c].append([])
            masks[c][-1].append(model.pad_masks(m[None])[0])
    sets = [model.encode_support_set("fsis", feats[c], [torch.stack(m) for m in masks[c]], c)
            for c in order]
    support = SINESupportSet.cat(sets)
    result = {"class_query_max_abs_diff": (support.class_queries - data["seg_queries"])
              .abs().max().item(), "instances": 0, "matched": 0, "score_max_abs_diff": 0.0,
              "mask_agreement": 1.0}
    for image, ref in zip(data["tests"], data["outputs"]):
        image = image.numpy()
        resized = P.fsis_image(image, lo, hi, fmt)
        pixels = model.prepare([P.to_unit(resized)])
        out = model.decode(model.encode(pixels), support, use_id_query=False)
        ours = fsis_instances(out, pixels.shape[-2:], resized.shape[:2], image.shape[:2],
                              support.class_labels, cfg["topk"], cfg["score_threshold"])
        order_ref = torch.argsort(ref["scores"], descending=True, stable=True)
        result["instances"] += len(order_ref)
        if len(ours["scores"]) != len(order_ref):
            continue
        for i, j in enumerate(order_ref.tolist()):
            same = (ours["classes"][i] == ref["classes"][j]
                    and torch.equal(ours["boxes"][i], ref["boxes"][j])
                    and abs(ours["scores"][i] - ref["scores"][j]) < SCORE_TOL)
            agree = (ours["masks"][i] == ref["masks"][j]).float().mean().item()
            result["mask_agreement"] = min(result["mask_agreement"], agree)
            result["score_max_abs_diff"] = max(result["score_max_abs_diff"],
                                               abs(ours["scores"][i] - ref["scores"][j]).item())
            result["matched"] += int(bool(same) and agree == 1.0)
    return result


# -- VOS -----------------------------------------------------------------------------------------
def vos_agreement(model) -> dict:
    """eval_vos's loop with our memory, pooling, decoder and readout; per frame, compare every
    object's mask at the original size and the label map."""
    data, cfg = reference_data()["vos"], reference_data()["config"]["vos"]
    size = cfg["image_size"]
    first = data["first_mask"].numpy()
    ids = [int(i) for i in np.unique(first) if i != 0]
    memory = {i: SINEMemory(cfg["num_frame"], cfg["decay_ratio"], fix_first_frame=True)
              for i in ids}
    label_agree, mask_agree, score_diff = 1.0, 1.0, 0.0
    for t, (frame, ref) in enumerate(zip(data["frames"], data["outputs"])):
        frame = frame.numpy()
        unit = P.vos_frame(frame, cfg["frame_size"])  # (3, h, w), shorter side frame_size
        model_in = P.vos_model_resize(unit[None], size)[0]
        features = model.encode(model.prepare([model_in]))
        if t == 0:
            gt = torch.stack([torch.from_numpy(first == i) for i in ids]).float()
            gt = P.vos_frame_mask(gt, cfg["frame_size"])
            for i, m in zip(ids, gt):
                m = P.vos_model_resize(m[None, None], size, "nearest")[0]
                memory[i].offer(t, 1.0, (features, model.pad_masks(m)))
        refs = [(i, ref_) for i in ids for ref_ in memory[i].references()]
        support = model.encode_support_set("vos", [f[0] for _, (f, _) in refs],
                                           [m for _, (_, m) in refs],
                                           labels=[i for i, _ in refs])
        out = model.decode(features, support, use_id_query=True)
        objs = vos_objects(out, (model.pad_size, model.pad_size), model_in.shape[-2:],
                           unit.shape[-2:], support.id_labels, -1e9)
        full = F.interpolate(objs["masks"][None].float(), frame.shape[:2], mode="nearest")[0]
        for k, i in enumerate(objs["ids"].tolist()):
            m = P.vos_model_resize(objs["masks"][k][None, None].float(), size, "nearest")[0]
            memory[i].offer(t, objs["scores"][k].item(), (features, model.pad_masks(m)))
            mask_agree = min(mask_agree, (full[k].bool() == ref["masks"][i - 1]).float().mean()
                             .item())
            score_diff = max(score_diff, abs(objs["scores"][k].item() - ref["scores"][i]))
        labels = label_map(list(full), objs["ids"].tolist())
        label_agree = min(label_agree, (labels == ref["label"].long()).float().mean().item())
    return {"label_agreement": label_agree, "mask_agreement": mask_agree,
            "score_max_abs_diff": score_diff}


# -- the checks ----------------------------------------------------------------------------------
def fss_ok(r):
    return r["sem_seg_max_abs_diff"] < SEM_TOL and r["mask_agreement"] == 1.0


def fsis_ok(r):
    return r["instances"] > 0 and r["matched"] == r["instances"]


def vos_ok(r):
    return r["label_agreement"] == 1.0 and r["mask_agreement"] == 1.0 \
        and r["score_max_abs_diff"] < SCORE_TOL


def test_fss_matches_original(tmp_path):
    r = fss_agreement(_model(tmp_path, "MODEL.SINE.IMAGE_SIZE", 70, "MODEL.SINE.PAD_SIZE", 112))
    print("FSS", r)
    assert fss_ok(r), r


def test_fsis_matches_original(tmp_path):
    r = fsis_agreement(_model(tmp_path, "MODEL.SINE.PAD_SIZE", 112))
    print("FSIS", r)
    assert r["class_query_max_abs_diff"] < SCORE_TOL and fsis_ok(r), r


def test_vos_matches_original(tmp_path):
    r = vos_agreement(_model(tmp_path, "MODEL.SINE.IMAGE_SIZE", 98, "MODEL.SINE.PAD_SIZE", 98))
    print("VOS", r)
    assert vos_ok(r), r


# -- deliberately broken variants must fail the checks -----------------------------------------
FSS_OPTS = ("MODEL.SINE.IMAGE_SIZE", 70, "MODEL.SINE.PAD_SIZE", 112)


def test_no_padding_fails(tmp_path, monkeypatch):
    """Without the bottom/right zero padding (images and masks at 70 instead of 112)."""
    model = _model(tmp_path, *FSS_OPTS)
    monkeypatch.setattr(P, "pad", lambda x, size: x)
    r = fss_agreement(model)
    print("FSS without padding", r)
    assert not fss_ok(r) and r["sem_seg_max_abs_diff"] > 1e-2, r


def test_final_layernorm_fails(tmp_path, monkeypatch):
    """DINOv2's final LayerNorm applied to the tokens (x_norm instead of x_prenorm)."""
    model = _model(tmp_path, *FSS_OPTS)
    vit = model.image_encoder.encoder
    monkeypatch.setattr(vit, "blocks", nn.ModuleList([*vit.blocks, vit.norm]))
    r = fss_agreement(model)
    print("FSS with the final LayerNorm", r)
    assert not fss_ok(r) and r["sem_seg_max_abs_diff"] > 1e-2, r


def test_rgb_instead_of_bgr_fails(tmp_path):
    """FSIS fed RGB, where the original (INPUT.FORMAT BGR) fed BGR."""
    r = fsis_agreement(_model(tmp_path, "MODEL.SINE.PAD_SIZE", 112), fmt="RGB")
    print("FSIS in RGB", r)
    assert not fsis_ok(r) and r["class_query_max_abs_diff"] > 1e-3, r
