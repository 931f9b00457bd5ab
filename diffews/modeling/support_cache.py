# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reuse support latents across episodes at inference.

The VAE is frozen and inference takes the posterior mean, so a support's latent (image latent
concatenated with mask latent) depends only on the image and mask pixels. Episodes of a benchmark
reuse supports (FSS-1000 draws them from 10 images per class; VOS and few-shot instance
segmentation reuse a fixed support set), and VAE encodes are most of an episode's FLOPs
(docs/PROTOCOLS.md section 4), so latents are kept in a small LRU cache keyed by a hash of the
pixels.
"""

import hashlib
from collections import OrderedDict
from typing import Callable, List

import torch


class SupportLatentCache:
    """LRU map from (support image, support mask) pixels to their (2C, h, w) latent.

    Args:
        capacity: number of supports kept; 0 disables the cache.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._latents: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor, mask: torch.Tensor) -> str:
        h = hashlib.sha1()
        for t in (image, mask):
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def encode(self, images: List[torch.Tensor], masks: List[torch.Tensor],
               encode_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Latents of N supports, encoding only those not cached.

        Args:
            images: N (3, H, W) support images; masks: N (H, W) support masks.
            encode_fn: (images (M, 3, H, W), masks (M, H, W)) -> (M, 2C, h, w) latents.
        Returns:
            (N, 2C, h, w) latents in the order given.
        """
        keys = [self.key(i, m) for i, m in zip(images, masks)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._latents))
        if missing:
            first = {k: keys.index(k) for k in missing}
            latents = encode_fn(torch.stack([images[first[k]] for k in missing]),
                                torch.stack([masks[first[k]] for k in missing]))
            for k, z in zip(missing, latents):
                self._latents[k] = z
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = []
        for k in keys:
            self._latents.move_to_end(k)
            out.append(self._latents[k])
        while len(self._latents) > self.capacity:
            self._latents.popitem(last=False)
        return torch.stack(out)
