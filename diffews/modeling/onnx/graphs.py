# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The four traced functions of an ONNX export, each a thin ``nn.Module`` over a built ``DiffewS``.

Each one calls the model's own building blocks (``vae._encode``, ``support_pass``, ``_unet`` and
the KV-fusion processors), so the graphs compute what torch inference computes, not a copy of it.
"""

from typing import Dict, List, Tuple

import torch
from torch import nn

from ..kv_fusion import KVBank

__all__ = ["VaeEncoderGraph", "VaeDecoderGraph", "SupportPassGraph", "QueryPassGraph",
           "kv_names"]


def kv_names(layers: List[str], prefix: str = "") -> List[str]:
    """Graph tensor names of the fused layers' keys/values, in layer order: key_00, value_00, ..."""
    names = []
    for i in range(len(layers)):
        names += [f"{prefix}key_{i:02d}", f"{prefix}value_{i:02d}"]
    return names


class VaeEncoderGraph(nn.Module):
    """(N, 3, H, W) images in [-1, 1] -> (N, C, h, w) scaled posterior means, as
    ``DiffewS.encode(images, sample=False)`` computes them."""

    def __init__(self, model):
        super().__init__()
        self.vae = model.vae
        self.channels = int(model.vae.config.latent_channels)
        self.scale = float(model.latent_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.vae._encode(images)
        return moments[:, : self.channels] * self.scale


class VaeDecoderGraph(nn.Module):
    """(N, C, h, w) scaled latents -> (N, 3, H, W) float image (``DiffewS.decode`` before it maps
    to uint8; the backend does that mapping in torch so its rounding is torch's own)."""

    def __init__(self, model):
        super().__init__()
        self.vae = model.vae
        self.scale = float(model.latent_scale)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample


class SupportPassGraph(nn.Module):
    """(N, 2C, h, w) support latents -> every fused layer's keys then values, (N, heads, L, d).

    ``stop_early=True`` makes the last fused layer raise ``SupportPassDone`` once it has stored its
    keys/values, so the tracer never sees the rest of the UNet: the graph ends there.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        support_set, _ = self.model.support_pass(latents, self.model.prompt_embeds_test,
                                                 stop_early=True)
        out = []
        for name in self.model.fused_layers:
            out += [support_set.keys[name], support_set.values[name]]
        return tuple(out)


class _GraphBank(KVBank):
    """A read-mode bank over graph inputs: per layer, keys/values (G, K, heads, L, d) with G = 1
    (one SupportSet shared by the batch) or G = B (one per query).

    The K supports are flattened into one token sequence inside the graph, in shot order, as
    ``support_set.flatten_supports`` does; so a SupportSet's stored (K, heads, L, d) tensors feed
    the graph as they are (a view, no host-side copy), and one graph serves both batch layouts.
    """

    def __init__(self, kv: Dict[str, Tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self._inputs = kv

    @property
    def writable(self) -> bool:
        return False

    def read(self, name: str, batch_size: int):
        key, value = self._inputs[name]
        return _flatten(key, batch_size), _flatten(value, batch_size)


def _flatten(t: torch.Tensor, batch_size) -> torch.Tensor:
    g, k, heads, length, dim = t.shape
    t = t.permute(0, 2, 1, 3, 4).reshape(g, heads, k * length, dim)
    # ONNX Expand broadcasts a leading 1 to B and leaves G = B as it is
    return t.expand(batch_size, -1, -1, -1)


class QueryPassGraph(nn.Module):
    """(B, C, h, w) query latents and per fused layer the supports' keys, values
    (G, K, heads, L, d) -> (B, C, h, w), ``DiffewS.query_pass``'s output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, query_latents: torch.Tensor, *kv: torch.Tensor) -> torch.Tensor:
        layers = self.model.fused_layers
        if len(kv) != 2 * len(layers):
            raise ValueError(f"{len(kv)} key/value tensors for {len(layers)} fused layers")
        bank = _GraphBank({name: (kv[2 * i], kv[2 * i + 1]) for i, name in enumerate(layers)})
        return self.model._unet(query_latents, self.model.prompt_embeds_test, bank)
