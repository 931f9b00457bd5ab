# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Warm up a tiny random VAE as an autoencoder, so that it can represent masks.

DiffewS reads its prediction through the (frozen) SD VAE: the decoded query-mask latent is the
mask. SD's VAE reconstructs black/white mask images well; a tiny random one does not. The quick
start therefore trains the tiny VAE for a short while on images and ±1 mask images of the
synthetic benchmark's *training* classes (reconstruction MSE + a small KL term), saves it into the
tiny SD folder once, and reuses it. With real SD weights nothing of this runs.
"""

import logging
import time

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _batches(records, label_format, size, batch, rng):
    from ..data.records import load_sample
    from ..utils.image import resize_image, resize_mask

    while True:
        images, masks = [], []
        for i in rng.randint(len(records), size=batch):
            rec = records[i]
            image, label = load_sample(rec, rec["classes"][0], label_format)
            images.append(resize_image(image, size))
            masks.append(resize_mask((label == 1).astype(np.uint8), size))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        m = torch.from_numpy(np.stack(masks)).float()[:, None].expand(-1, 3, -1, -1) * 2 - 1
        yield torch.cat([x, m])  # half images, half masks


def warmup_vae(vae, records, label_format: str, size: int, steps: int = 300, batch: int = 8,
               lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0):
    """Train ``vae`` in place as an autoencoder; returns the final reconstruction MSE on masks.

    Args:
        records: image records to draw from (e.g. ``synthetic_fss_train``).
        size: image size.
        steps, batch, lr, kl_weight: optimisation settings (AdamW, cosine decay).
    """
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = _batches(records, label_format, size, batch, rng)
    start = time.perf_counter()
    for step in range(steps):
        x = next(data)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = torch.mean((recon - x) ** 2) + kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("VAE warm-up step %d/%d: loss %.4f (%.0f s)", step + 1, steps, loss.item(),
                        time.perf_counter() - start)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = next(data)
        masks = x[batch:]
        recon = vae.decode(vae.encode(masks).latent_dist.mean).sample.clamp(-1, 1)
        iou = ((recon.mean(1) > 0) & (masks[:, 0] > 0)).sum() / (
            (recon.mean(1) > 0) | (masks[:, 0] > 0)
        ).sum()
    logger.info("VAE warm-up done: mask reconstruction IoU %.3f", iou.item())
    return iou.item()
