# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A learned presence signal: a small head on what the query pass computes (issue 28, design b).

DiffewS is trained only on queries that hold the supports' object, so nothing in the published
method says "not here". The head reads, from the one query pass (no extra UNet pass):

* per fused self-attention layer (``kv_fusion``), the attention mass the query tokens put on
  the supports' keys and on the supports' *foreground* keys (each support token weighted by its
  mask's foreground, read from the support's mask latent: ``mask_foreground``), pooled over
  tokens: the mean share on support keys, and the mean, maximum and top-5% mean of the
  foreground share (4 numbers per layer);
* with ``prototype`` heads, per fused layer, the cosine similarity of every query token's key to
  the supports' foreground prototype (the foreground-weighted mean of their keys, per attention
  head; the few-shot "prior" of PFENet-style methods): its maximum, top-5% mean and mean over
  the query tokens, and the maximum of (foreground minus background prototype similarity)
  (4 more numbers per layer);
* the mid-block's fused attention output, mean- and max-pooled over its tokens (2 x channels);
* the query pass's output read as a mask (``mask_foreground`` of minus the output, the predicted
  query-mask latent): its mean, maximum and top-5% mean foreground (3 numbers), what a model
  trained on absent-target episodes leaves empty.

``PresenceHead`` maps them to one logit (LayerNorm, Linear, GELU, Linear); its sigmoid is the
"head" presence signal (``readout.PRESENCE_SIGNALS``). It is trained with a binary
cross-entropy on present / absent-target training episodes (``INPUT.FEW_SHOT.NEGATIVE_RATIO``),
jointly with the UNet or alone on top of frozen weights (``MODEL.DIFFEWS.PRESENCE_HEAD``).
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PresenceHead", "QueryProbe", "mask_foreground", "pooled_layers", "head_in_weights",
           "LAYER_STATS"]

LAYER_STATS = 4  # per fused layer: support share, mean / max / top-5% mean foreground share
OUTPUT_STATS = 3  # of the predicted mask: mean / max / top-5% mean foreground
TOP_FRACTION = 0.05


def _pool_stats(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, 3): mean, maximum and mean of the top ``TOP_FRACTION`` (at least one)."""
    k = max(1, int(round(TOP_FRACTION * x.shape[-1])))
    return torch.stack([x.mean(-1), x.amax(-1), x.topk(k, dim=-1).values.mean(-1)], dim=-1)


def pooled_layers(fused_layers: Sequence[str]) -> List[str]:
    """The fused layers whose attention output the head pools: the mid block's."""
    return [n for n in fused_layers if n.startswith("mid_block")]


class QueryProbe:
    """What a read-mode ``KVBank`` measures in each fused layer of a query pass.

    Args:
        support_fg: None (only the support share, the "attention" signal), or the supports'
            foreground weights in [0, 1] at the latent resolution, (1 or B, K, h, w) (one row
            shared by every query, or one per query), in shot order.
        pooled: layer names whose attention output is pooled (``pooled_layers``).
    """

    def __init__(self, support_fg: Optional[torch.Tensor] = None, pooled: Sequence[str] = ()):
        self.support_fg = support_fg
        self.pooled_names = set(pooled)
        self.shares: Dict[str, torch.Tensor] = {}
        self.stats: Dict[str, torch.Tensor] = {}
        self.prototype: Dict[str, torch.Tensor] = {}
        self.pooled: Dict[str, torch.Tensor] = {}
        self.output_stats: Optional[torch.Tensor] = None

    def record(self, name: str, query: torch.Tensor, key: torch.Tensor, own: int,
               output: Optional[torch.Tensor] = None) -> None:
        """One fused layer: ``query`` (B, heads, Lq, d), ``key`` (B, heads, own + K*Ls, d) (own
        keys first), ``output`` the layer's attention output (B, Lq, C) (pooled if asked)."""
        b, heads, lq, _ = query.shape
        cols = 1 if self.support_fg is None else 2
        weights = torch.zeros(b, heads, key.shape[2], cols, dtype=query.dtype,
                              device=query.device)
        weights[:, :, own:, 0] = 1
        if cols == 2:
            fg = self._tokens(key.shape[2] - own, b).to(query.dtype)  # (B, K*Ls)
            weights[:, :, own:, 1] = fg[:, None, :]
        # a separate SDPA whose values are the weights: its output is the attention mass on
        # them per query token; the layer's own attention is left as it is
        mass = F.scaled_dot_product_attention(query, key, weights).float().mean(dim=1)
        self.shares[name] = mass[..., 0].mean(dim=-1)
        if cols == 2:
            self.stats[name] = torch.cat([mass[..., 0].mean(-1, keepdim=True),
                                          _pool_stats(mass[..., 1])], dim=-1)
            self.prototype[name] = _prototype_stats(key[:, :, :own].float(),
                                                    key[:, :, own:].float(), fg.float())
        if name in self.pooled_names and output is not None:
            self.pooled[name] = torch.cat([output.float().mean(1), output.float().amax(1)], -1)

    def _tokens(self, support_tokens: int, batch: int) -> torch.Tensor:
        """(B, K*Ls) foreground weight of every support token of a layer (avg-pooled from the
        latent resolution to the layer's)."""
        fg = self.support_fg
        rows, k, h, w = fg.shape
        per = support_tokens // k
        factor = int(round((h * w / per) ** 0.5))
        if factor < 1 or (h // factor) * (w // factor) != per:
            raise ValueError(f"support tokens {support_tokens} do not match {k} supports of a "
                             f"{h}x{w} latent")
        pooled = F.avg_pool2d(fg.reshape(rows * k, 1, h, w).float(), factor) if factor > 1 \
            else fg.reshape(rows * k, 1, h, w).float()
        out = pooled.reshape(rows, k * per)
        return out.expand(batch, -1) if rows == 1 else out

    def record_output(self, foreground: torch.Tensor) -> None:
        """The query pass's output read as a mask: (B, h, w) foreground in [0, 1]."""
        self.output_stats = _pool_stats(foreground.flatten(1).float())

    def support_share(self) -> torch.Tensor:
        """(B,) share of the query tokens' attention mass on the supports' keys, averaged over
        the fused layers (each layer: over heads and query tokens)."""
        if not self.shares:
            raise RuntimeError("no support share was recorded: the query pass needs "
                               "KVBank(supports, probe=QueryProbe(...))")
        return torch.stack(list(self.shares.values())).float().mean(dim=0)

    def features(self, layers: Sequence[str], pooled: Sequence[str],
                 prototype: bool = False) -> torch.Tensor:
        """(B, LAYER_STATS * len(layers) (x 2 with ``prototype``) + 2 x pooled channels +
        OUTPUT_STATS) head input: the layers' statistics in layer order (then their prototype
        statistics), the pooled outputs, the output's statistics."""
        missing = [n for n in list(layers) + list(pooled)
                   if n not in (self.stats if n in layers else self.pooled)]
        if missing or self.output_stats is None:
            raise RuntimeError(f"the query pass recorded no presence features for "
                               f"{missing[0] if missing else 'its output'}")
        protos = [self.prototype[n] for n in layers] if prototype else []
        return torch.cat([self.stats[n] for n in layers] + protos
                         + [self.pooled[n] for n in pooled] + [self.output_stats], -1)


def _prototype_stats(query_keys: torch.Tensor, support_keys: torch.Tensor,
                     fg: torch.Tensor) -> torch.Tensor:
    """(B, 4): max, top-5% mean and mean over query tokens of the cosine similarity of their keys
    (B, heads, Lq, d) to the foreground prototype of the support keys (B, heads, Ls, d) under
    the weights ``fg`` (B, Ls), and the max of (foreground minus background similarity); each
    token's similarity is averaged over the attention heads."""
    w = fg[:, None, :, None]
    proto_fg = (support_keys * w).sum(2) / w.sum(2).clamp(min=1e-6)
    proto_bg = (support_keys * (1 - w)).sum(2) / (1 - w).sum(2).clamp(min=1e-6)
    sim_fg = F.cosine_similarity(query_keys, proto_fg[:, :, None], dim=-1).mean(1)  # (B, Lq)
    sim_bg = F.cosine_similarity(query_keys, proto_bg[:, :, None], dim=-1).mean(1)
    return torch.cat([_pool_stats(sim_fg)[:, [1, 2, 0]],
                      (sim_fg - sim_bg).amax(-1, keepdim=True)], dim=-1)


class PresenceHead(nn.Module):
    """Query-pass features (``QueryProbe.features``) -> one presence logit per query.

    Args:
        num_layers: fused layers (``LAYER_STATS`` numbers each, twice with ``prototype``).
        pooled_channels: total channels of the pooled layers (2 numbers each).
        hidden: width of the hidden layer.
        prototype: also read the prototype-similarity statistics.
    """

    def __init__(self, num_layers: int, pooled_channels: int, hidden: int = 64,
                 prototype: bool = False):
        super().__init__()
        self.hparams = {"num_layers": int(num_layers), "pooled_channels": int(pooled_channels),
                        "hidden": int(hidden), "prototype": bool(prototype)}
        dim = (LAYER_STATS * num_layers * (2 if prototype else 1) + 2 * pooled_channels
               + OUTPUT_STATS)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B,) logits."""
        return self.net(features.to(self.net[1].weight.dtype)).squeeze(-1)


def mask_foreground(mask_latents: torch.Tensor, background: torch.Tensor,
                    foreground: torch.Tensor) -> torch.Tensor:
    """Per-pixel foreground weight in [0, 1] of mask latents: the projection of each latent
    pixel on the segment from an all-background mask's latent to an all-foreground one's.

    Args:
        mask_latents: (N, C, h, w) VAE latents of mask images.
        background, foreground: (C,) latents of a uniform background / foreground mask image.
    Returns:
        (N, h, w) float32.
    """
    d = (foreground - background).float()
    z = mask_latents.float() - background.float()[None, :, None, None]
    t = (z * d[None, :, None, None]).sum(1) / d.pow(2).sum().clamp(min=1e-12)
    return t.clamp(0, 1)


def head_in_weights(path: str) -> Optional[Dict]:
    """The presence head's hyper-parameters a trainer checkpoint (``.pth``) records (its
    "presence_head" entry, written by ``DiffewSCheckpointer.save``), or None (another file, a
    released UNet folder, no head)."""
    if not path or not os.path.isfile(path) or not path.endswith(".pth"):
        return None
    try:
        # the whole file, as the checkpointer reads it (optimizer and scheduler states hold
        # objects), memory-mapped: only the small "presence_head" entry is read
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable here: the checkpointer names the file later
        return None
    entry = state.get("presence_head") if isinstance(state, dict) else None
    return dict(entry) if isinstance(entry, dict) else None
