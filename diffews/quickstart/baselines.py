# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start's pieces: a tiny SD folder with a warmed-up VAE, trivial baselines, the table
(``run.py`` puts them together)."""

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.data import DatasetCatalog
from torch import nn

from ..evaluation import evaluate_episodes

from .tiny_sd import TINY_UNET, TINY_VAE, build_tiny_sd

logger = logging.getLogger(__name__)

# Narrower than the test VAE, so that it warms up in about a minute on 2 CPU cores, and with 3
# levels (4x downsampling, 16x16 latents at 64 px): the synthetic objects are ~17 px wide, which
# 8x8 latents would cover with about 2x2 cells.
QUICK_VAE = dict(TINY_VAE, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                 norm_num_groups=4)
QUICK_UNET = dict(TINY_UNET)
MARKER = "quickstart.json"


def prepare_tiny_sd(folder: str, image_size: int = 64, vae_steps: int = 300, seed: int = 0) -> str:
    """Write the tiny SD folder once (random UNet and text encoder, VAE warmed up as an
    autoencoder on the synthetic *training* classes); later calls reuse it."""
    marker = os.path.join(folder, MARKER)
    if os.path.isfile(marker):
        logger.info("Reusing the tiny SD folder %s (%s)", folder, open(marker).read().strip())
        return folder
    from diffusers import AutoencoderKL

    from .vae_warmup import warmup_vae

    build_tiny_sd(folder, seed=seed, unet=QUICK_UNET, vae=QUICK_VAE)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    iou = warmup_vae(vae, DatasetCatalog.get("synthetic_fss_train"), "synthetic", image_size,
                     steps=vae_steps, seed=seed)
    vae.save_pretrained(os.path.join(folder, "vae"))
    with open(marker, "w") as f:
        json.dump({"vae_warmup_steps": vae_steps, "mask_reconstruction_iou": round(iou, 4)}, f)
    return folder


class AllForeground(nn.Module):
    """Baseline: every query pixel is foreground."""

    def forward(self, batched_inputs: List[Dict]):
        return [
            {"pred_mask": torch.ones(x["image"].shape[-2:], dtype=torch.bool)}
            for x in batched_inputs
        ]


class SupportMaskCopy(nn.Module):
    """Baseline: the (union of the) support mask(s) copied onto the query."""

    def forward(self, batched_inputs: List[Dict]):
        return [{"pred_mask": (x["support_masks"] > 0).any(dim=0)} for x in batched_inputs]


# the model's presence numbers (FSSEvaluator keys) and the table's headers for them
PRESENCE_COLUMNS = (("presence-AUROC", "presence AUROC"),
                    ("absent-empty-at-threshold", "absent: empty %"),
                    ("present-empty-at-threshold", "present: empty %"))


def evaluate_with_baselines(models: Dict[str, nn.Module], loader_fn, evaluator_fn,
                            presence: Optional[Tuple[Callable, Callable]] = None
                            ) -> Dict[str, Dict]:
    """Score the models (name -> model in eval mode) and both baselines on the same episodes;
    returns {method: {"mIoU", "FB-IoU"}}.

    ``presence``: (loader, evaluator) factories of the same episodes followed by absent-target
    ones (``presence.presence_loader``): the models run on those instead, their mIoU and FB-IoU
    taken over the episodes whose query holds the object (the same episodes as the
    baselines'), with the ``PRESENCE_COLUMNS`` numbers beside them.
    """
    results = {}
    for name, m in models.items():
        if presence is None:
            res = evaluate_episodes(m, loader_fn(), evaluator_fn(), desc=name)["fss"]
            results[name] = {k: res[k] for k in ("mIoU", "FB-IoU")}
            continue
        res = evaluate_episodes(m, presence[0](), presence[1](), desc=name)["fss"]
        results[name] = {"mIoU": res["mIoU-present"], "FB-IoU": res["FB-IoU-present"],
                         **{k: res[k] for k, _ in PRESENCE_COLUMNS},
                         "presence-threshold": res["presence-threshold"]}
    for name, m in (("all foreground", AllForeground()), ("support mask copied",
                                                          SupportMaskCopy())):
        res = evaluate_episodes(m, loader_fn(), evaluator_fn(), desc=name)
        results[name] = {k: res["fss"][k] for k in ("mIoU", "FB-IoU")}
    return results


def format_table(results: Dict[str, Dict]) -> str:
    from tabulate import tabulate

    extra = [(k, h) for k, h in PRESENCE_COLUMNS if any(k in r for r in results.values())]
    rows = [(name, f"{r['mIoU']:.1f}", f"{r['FB-IoU']:.1f}",
             *[f"{r[k]:.1f}" if k in r else "-" for k, _ in extra])
            for name, r in results.items()]
    headers = ["method", "mIoU", "FB-IoU", *[h for _, h in extra]]
    # the numbers as formatted (one decimal), right-aligned
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=["left"] + ["right"] * (len(headers) - 1))
