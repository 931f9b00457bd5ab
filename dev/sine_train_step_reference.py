# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reference data for SINE's full training step, produced by the ORIGINAL code (dev only).

    python dev/sine_train_step_reference.py --sine /path/to/SINE --dinov2 /path/to/dinov2 \
        [--out tests/data/sine_train_step_reference.pt.gz]

--sine: a work tree of aim-uofa/SINE at 9ff576c; --dinov2: a work tree of
facebookresearch/dinov2 at 44abdbe (SINE vendors that tree without ``dinov2/models``, which its
snapshot lacks). Nothing of either is copied into this repository; both are imported from the
paths given. xformers is disabled (DINOv2 falls back to plain attention; the original trains
with it on a GPU, same arithmetic up to rounding).

The original's TRAINING model ``sine.model.model.SINE`` (frozen DINOv2 + ``DINOv2EncoderViT``
neck + the training copy of ``MFormer`` + ``HungarianMatcher`` + ``SetCriterion``, assembled as
its ``build_model`` does, l.302-362, with tiny sizes and the DINOv2 weights random instead of
read from a file) takes one batch of two in-context samples in its own input format
(``{"ref_dict": {"image", "instances"}, "tar_dict": ...}``, images normalised and zero-padded,
``Instances`` with ``gt_classes``, ``gt_masks`` (bool, padded), ``ins_ids``) in training mode:
forward, the weighted loss dict it returns, their sum and ``backward``. Point sampling (the
matcher's uniform draws and the criterion's uncertainty sampling) uses torch's global generator;
both codes draw in the same order, so seeding it right before the forward gives both the same
points. Saved: the state dict (the released file's layout) and the inputs, both float16 (every
weight and pixel is rounded to a float16 value before the run, so that storing them so is
lossless); per case the point settings, the weighted loss terms, the total and the float32
gradient of every trainable parameter (by its state-dict name).
``tests/test_sine_train_step.py`` replays them through ``diffews.modeling.sine.SINE``.
"""

import argparse
import gzip
import io
import os
import subprocess
import sys
from functools import partial

import numpy as np
import torch

TINY = dict(embed_dim=32, depth=2, heads=2, feat=32, dec_depth=2, dec_heads=2, mlp=64,
            queries=5, fusion=1)
PAD = 70  # padded working size, a multiple of 14: a 5 x 5 feature grid, 20 x 20 mask features
LOSS = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1)
SEED = 3  # weights and data, shared by the cases
CASES = [
    # the released sampling settings; and few points, which makes the draws matter more
    {"name": "released_points", "num_points": 12544, "oversample_ratio": 3.0,
     "importance_sample_ratio": 0.75, "point_seed": 5},
    {"name": "few_points", "num_points": 40, "oversample_ratio": 3.0,
     "importance_sample_ratio": 0.75, "point_seed": 6},
]
# per sample: reference / target (classes, instance ids) and the unpadded image size. Sample 0
# is a crop pair (the target shares ids 12 and 13 with the reference and has one new instance);
# sample 1 two different images of class 7 (no common id: no ID query is matched)
SAMPLES = [
    {"ref": ([2, 2, 5], [11, 12, 13]), "tar": ([2, 5, 2], [12, 13, 99]),
     "ref_size": (64, 70), "tar_size": (70, 58)},
    {"ref": ([7, 7], [21, 22]), "tar": ([7], [31]), "ref_size": (56, 66), "tar_size": (70, 70)},
]


def import_original(sine: str, dinov2_root: str) -> None:
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path[:0] = [dinov2_root, sine]


def build_original(case: dict, seed: int):
    """The original's training model with tiny random weights (every weight moved off its
    init so that each part matters: layer scales 0.3-0.5 instead of 1e-5, norms' scales around
    1, everything else plus N(0, 0.05) noise)."""
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer
    from sine.model.criterion import SetCriterion
    from sine.model.image_encoder import DINOv2EncoderViT
    from sine.model.matcher import HungarianMatcher
    from sine.model.model import SINE
    from sine.model.transformer_decoder.mformer import MFormer

    torch.manual_seed(seed)
    vit = DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=TINY["embed_dim"], depth=TINY["depth"],
        num_heads=TINY["heads"], mlp_ratio=4, init_values=1e-5, ffn_layer="mlp", block_chunks=0,
        qkv_bias=True, proj_bias=True, ffn_bias=True,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention))
    encoder = DINOv2EncoderViT(vit.eval(), out_chans=TINY["feat"])
    decoder = MFormer(depth=TINY["dec_depth"], embedding_dim=TINY["feat"],
                      num_heads=TINY["dec_heads"], mlp_dim=TINY["mlp"], mask_dim=TINY["feat"],
                      fusion_layer_depth=TINY["fusion"], num_queries=TINY["queries"],
                      pre_norm=True)
    matcher = HungarianMatcher(cost_class=LOSS["class_weight"], cost_mask=LOSS["mask_weight"],
                               cost_dice=LOSS["dice_weight"], num_points=case["num_points"])
    base = {"loss_ce_ins": LOSS["class_weight"], "loss_ce_id": LOSS["class_weight"],
            "loss_mask": LOSS["mask_weight"], "loss_dice": LOSS["dice_weight"]}
    weight_dict = dict(base)
    for i in range(TINY["dec_depth"]):  # build_model l.335-340: deep supervision
        weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    criterion = SetCriterion(num_classes=1, matcher=matcher, weight_dict=weight_dict,
                             eos_coef=LOSS["no_object_weight"], losses=["labels", "masks"],
                             num_points=case["num_points"],
                             oversample_ratio=case["oversample_ratio"],
                             importance_sample_ratio=case["importance_sample_ratio"])
    model = SINE(image_encoder=encoder, transformer_decoder=decoder, criterion=criterion)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.3 + 0.2 * torch.rand_like(p))
            elif p.dim() <= 1 and name.endswith("weight"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
            elif not name.endswith(("temp", "logit_scale")):
                p.add_(0.05 * torch.randn_like(p))
        model.transformer_decoder.mask_embed.layers[-1].weight.mul_(6.0)  # masks of a few units
        for p in model.parameters():  # float16-representable: stored as float16, losslessly
            p.copy_(p.half().float())
    return model


def ellipse(rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def random_side(rng, classes, ids, size) -> dict:
    """One side of a sample as plain tensors: a normalised image (smooth random values) zero
    padded to PAD, bool masks padded to PAD, classes, ids, the unpadded size."""
    h, w = size
    coarse = torch.from_numpy(rng.standard_normal((1, 3, 6, 6)).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                            align_corners=False)[0]
    image = image + 0.3 * torch.from_numpy(rng.standard_normal((3, h, w)).astype(np.float32))
    padded = torch.zeros(3, PAD, PAD)
    padded[:, :h, :w] = image.half().float()  # float16-representable (stored as float16)
    masks = torch.zeros(len(ids), PAD, PAD, dtype=torch.bool)
    for i in range(len(ids)):
        masks[i, :h, :w] = torch.from_numpy(ellipse(rng, h, w))
    return {"image": padded, "gt_masks": masks, "gt_classes": torch.tensor(classes),
            "ins_ids": torch.tensor(ids), "image_size": torch.tensor([h, w])}


def random_batch(seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [{"ref": random_side(rng, *s["ref"], s["ref_size"]),
             "tar": random_side(rng, *s["tar"], s["tar_size"])} for s in SAMPLES]


def to_model_input(batch: list) -> list:
    """The plain tensors as the original's (and our) sample dicts with ``Instances``."""
    from detectron2.structures import Instances

    def side(d):
        inst = Instances(tuple(d["image_size"].tolist()))
        inst.gt_classes, inst.gt_masks, inst.ins_ids = d["gt_classes"], d["gt_masks"], d["ins_ids"]
        return {"image": d["image"].clone(), "instances": inst}

    return [{"ref_dict": side(s["ref"]), "tar_dict": side(s["tar"])} for s in batch]


def run_case(case: dict) -> dict:
    model = build_original(case, seed=SEED).train()
    batch = random_batch(SEED)
    torch.manual_seed(case["point_seed"])  # the point draws, in both codes
    losses = model(to_model_input(batch))
    total = sum(losses.values())
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    print(f"{case['name']}: total {total.item():.6f}, {len(losses)} terms, {len(grads)} "
          f"trainable tensors ({sum(g.numel() for g in grads.values())} values), "
          f"{len(frozen)} frozen")
    return {**case, "losses": {k: v.detach().clone() for k, v in losses.items()},
            "total": total.detach().clone(), "grads": grads, "frozen": frozen}


def commit_of(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree; expected 9ff576c)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sine", required=True, help="work tree of aim-uofa/SINE at 9ff576c")
    parser.add_argument("--dinov2", required=True,
                        help="work tree of facebookresearch/dinov2 at 44abdbe")
    parser.add_argument("--commit", help="the SINE checkout's commit, when it is not a git tree")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data", "sine_train_step_reference.pt.gz"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # fixed reduction order
    import_original(os.path.abspath(args.sine), os.path.abspath(args.dinov2))
    state = build_original(CASES[0], seed=SEED).state_dict()  # the same weights in every case
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    batch = random_batch(SEED)
    for sample in batch:
        for side in sample.values():
            side["image"] = side["image"].half()
    result = {
        "original_commit": args.commit or commit_of(args.sine),
        "torch": str(torch.__version__),
        "tiny": TINY,
        "pad": PAD,
        "loss": LOSS,
        "seed": SEED,
        "state_dict_fp16": half,
        "batch_fp16": batch,
        "cases": [run_case(c) for c in CASES],
    }
    buffer = io.BytesIO()
    torch.save(result, buffer)  # tensors, dicts, lists, strings: loadable with weights_only
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), mtime=0))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**10:.0f} KiB)")


if __name__ == "__main__":
    main()
