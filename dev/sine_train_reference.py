# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reference data for SINE's training loss, produced by the ORIGINAL code (dev only).

    python dev/sine_train_reference.py /path/to/SINE [--out tests/data/sine_loss_reference.pt]

``/path/to/SINE`` is a work tree of aim-uofa/SINE (commit 9ff576c; e.g. ``git archive`` of a
clone). Its ``sine/model/criterion.py`` and ``sine/model/matcher.py`` are imported from there
(nothing of it is copied into this repository) and fed random predictions of tiny sizes: the last
decoder layer's and ``aux_outputs`` of earlier layers, ID and instance branches, and random
reference / target instances. Both codes draw their sample points from torch's global generator
in the same order, so seeding it with the case's ``point_seed`` right before the call gives both
the same points. Saved per case: the inputs, the original's unweighted loss terms, the weighted
total ``model.py`` l.128-133 sums, and the gradient of that total w.r.t. every prediction tensor.
``tests/test_sine_loss.py`` replays them through ``diffews.modeling.sine``.

What the original's ``SINE.forward`` does between the decoder and the criterion (``model.py``
l.114-123: each target class as its index among the reference classes, ``labels_t``, and
``ref_sem_labels_t``) is restated below from that code. Extending this script to a whole training
step (the model's forward + this loss + every trainable gradient) means building the original's
``sine.model.model.SINE`` from tiny random weights here and saving its state dict beside the cases.
The original runs on the CPU as it is (``torch.cuda.amp.autocast(enabled=False)`` is a no-op).
"""

import argparse
import os
import subprocess
import sys
from typing import Dict, List

import torch

CASES = [
    # name, points per mask, oversample, importance share, aux layers, point seed
    {"name": "released_settings", "num_points": 12544, "oversample_ratio": 3.0,
     "importance_sample_ratio": 0.75, "aux_layers": 2, "point_seed": 11, "data_seed": 0},
    {"name": "few_points", "num_points": 24, "oversample_ratio": 3.0,
     "importance_sample_ratio": 0.75, "aux_layers": 2, "point_seed": 12, "data_seed": 1},
    {"name": "uniform_points", "num_points": 40, "oversample_ratio": 1.0,
     "importance_sample_ratio": 0.0, "aux_layers": 1, "point_seed": 13, "data_seed": 2},
]
WEIGHTS = {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0, "no_object_weight": 0.1}
PRED_KEYS = ("pred_id_logits", "pred_ins_logits", "pred_id_masks", "pred_ins_masks")


def random_batch(seed: int, aux_layers: int) -> Dict:
    """Two images: decoder outputs (Q=5 queries, masks 8x8) and instance targets at 32x32.

    Image 0: 3 reference instances of classes {3, 7}; the target shares two of their ids (in the
    same order) and has one instance of its own. Image 1: 2 reference instances of one class
    {5}; the target has 2 instances of that class, none with a reference id (a different image).
    """
    g = torch.Generator().manual_seed(seed)
    specs = [
        {"ref_labels": [3, 3, 7], "ref_ids": [101, 102, 103],
         "tar_labels": [3, 7, 7], "tar_ids": [102, 103, 999]},
        {"ref_labels": [5, 5], "ref_ids": [201, 202], "tar_labels": [5, 5], "tar_ids": [301, 302]},
    ]
    q, h, w, size = 5, 8, 8, 32

    def preds(m: int, k: int) -> Dict[str, torch.Tensor]:
        return {"pred_id_logits": torch.randn(1, m, 2, generator=g),
                "pred_ins_logits": torch.randn(1, q, k + 1, generator=g),
                "pred_id_masks": 3 * torch.randn(1, m, h, w, generator=g),
                "pred_ins_masks": 3 * torch.randn(1, q, h, w, generator=g)}

    def masks(n: int) -> torch.Tensor:
        return (torch.rand(n, size, size, generator=g) > 0.6).to(torch.uint8)

    outputs, refs, tars = [], [], []
    for s in specs:
        ref_labels = torch.tensor(s["ref_labels"])
        classes = torch.unique(ref_labels)
        out = {"ref_id_labels": ref_labels[None], "ref_sem_labels": classes[None],
               **preds(len(ref_labels), len(classes)),
               "aux_outputs": [preds(len(ref_labels), len(classes)) for _ in range(aux_layers)]}
        outputs.append(out)
        refs.append({"labels": ref_labels, "masks": masks(len(ref_labels)),
                     "ids": torch.tensor(s["ref_ids"])})
        tars.append({"labels": torch.tensor(s["tar_labels"]), "masks": masks(len(s["tar_ids"])),
                     "ids": torch.tensor(s["tar_ids"])})
    return {"outputs": outputs, "ref_targets": refs, "tar_targets": tars}


def leaves(outputs: List[Dict]) -> Dict[str, torch.Tensor]:
    """Every prediction tensor by a flat name (``b{image}.{key}`` / ``b{image}.aux{i}.{key}``),
    made a leaf that requires grad (the dicts are updated in place)."""
    named = {}
    for b, out in enumerate(outputs):
        for key in PRED_KEYS:
            out[key] = out[key].clone().requires_grad_(True)
            named[f"b{b}.{key}"] = out[key]
        for i, aux in enumerate(out["aux_outputs"]):
            for key in PRED_KEYS:
                aux[key] = aux[key].clone().requires_grad_(True)
                named[f"b{b}.aux{i}.{key}"] = aux[key]
    return named


def run_original(sine_root: str, case: Dict, batch: Dict) -> Dict:
    """The original's matcher + criterion on ``batch``; losses, weighted total and gradients."""
    sys.path.insert(0, sine_root)
    from sine.model.criterion import SetCriterion
    from sine.model.matcher import HungarianMatcher

    matcher = HungarianMatcher(cost_class=WEIGHTS["class_weight"],
                               cost_mask=WEIGHTS["mask_weight"],
                               cost_dice=WEIGHTS["dice_weight"], num_points=case["num_points"])
    base = {"loss_ce_ins": WEIGHTS["class_weight"], "loss_ce_id": WEIGHTS["class_weight"],
            "loss_mask": WEIGHTS["mask_weight"], "loss_dice": WEIGHTS["dice_weight"]}
    weight_dict = dict(base)
    for i in range(case["aux_layers"]):  # model.py build_model: deep supervision
        weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    criterion = SetCriterion(num_classes=1, matcher=matcher, weight_dict=weight_dict,
                             eos_coef=WEIGHTS["no_object_weight"], losses=["labels", "masks"],
                             num_points=case["num_points"],
                             oversample_ratio=case["oversample_ratio"],
                             importance_sample_ratio=case["importance_sample_ratio"])
    outputs = [dict(o, aux_outputs=[dict(a) for a in o["aux_outputs"]]) for o in batch["outputs"]]
    named = leaves(outputs)
    tars = [dict(t) for t in batch["tar_targets"]]
    for out, tar in zip(outputs, tars):  # model.py l.114-123
        ref_classes = out["ref_sem_labels"][0].tolist()
        out["ref_sem_labels_t"] = torch.arange(len(ref_classes))
        tar["labels_t"] = torch.tensor([ref_classes.index(c) for c in tar["labels"].tolist()])
    torch.manual_seed(case["point_seed"])
    losses = criterion(outputs, [dict(r) for r in batch["ref_targets"]], tars)
    weighted = {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}
    total = sum(weighted.values())
    total.backward()
    return {"losses": {k: v.detach().double() for k, v in losses.items()},
            "total": total.detach().double(),
            "grads": {k: v.grad.detach().clone() for k, v in named.items()}}


def detached(batch: Dict) -> Dict:
    """The batch with plain tensors only (loadable with ``weights_only=True``)."""
    return {"outputs": [{**{k: v.detach() for k, v in o.items() if k != "aux_outputs"},
                         "aux_outputs": [{k: v.detach() for k, v in a.items()}
                                         for a in o["aux_outputs"]]} for o in batch["outputs"]],
            "ref_targets": batch["ref_targets"], "tar_targets": batch["tar_targets"]}


def commit_of(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree; expected 9ff576c)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sine_root", help="work tree of aim-uofa/SINE (9ff576c)")
    parser.add_argument("--out", default="tests/data/sine_loss_reference.pt")
    parser.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
    args = parser.parse_args()
    root = os.path.abspath(args.sine_root)
    if not os.path.isfile(os.path.join(root, "sine", "model", "criterion.py")):
        sys.exit(f"{root}: no sine/model/criterion.py (give a work tree of aim-uofa/SINE)")
    cases = []
    for case in CASES:
        batch = random_batch(case["data_seed"], case["aux_layers"])
        ref = run_original(root, case, batch)
        cases.append({**case, **WEIGHTS, **detached(batch), **ref})
        print(f"{case['name']}: total {ref['total'].item():.6f}, "
              f"{len(ref['losses'])} terms, {len(ref['grads'])} gradients")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"original_commit": args.commit or commit_of(root),
                "torch": str(torch.__version__), "cases": cases}, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
