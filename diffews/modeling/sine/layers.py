# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The Matching Transformer's layers (docs/SINE.md section 3), sequence-first ``(L, B, C)``.

Module and parameter names are those of the released state dict (aim-uofa/SINE
inference_fss/model/transformer_decoder/mformer.py l.41-363, the same in the other copies):
``self_attn`` / ``multihead_attn`` (``nn.MultiheadAttention``), ``norm``, ``linear1`` /
``linear2``, ``mask_embed.layers.<i>``, ``transformer_{self,cross}_attention_layer``,
``transformer_ffn_layer{,1,2}``. Dropout is 0 everywhere in SINE and is left out. Every weight
matrix starts Xavier-uniform (mformer.py l.56-59), which only matters before weights load.
"""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionLayer", "FFNLayer", "MLP", "FusionLayer", "DecoderLayer", "sine_position"]


def _xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _plus(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class AttentionLayer(nn.Module):
    """Residual multi-head attention with a LayerNorm before (``pre_norm``) or after it.

    Args:
        dim, heads: width and heads.
        pre_norm: normalise the queries (self-attention: also keys/values) before attending;
            else normalise the residual sum.
        cross: cross-attention (the module is ``multihead_attn``, keys/values from ``memory``)
            instead of self-attention (``self_attn``).
    """

    def __init__(self, dim: int, heads: int, pre_norm: bool, cross: bool):
        super().__init__()
        attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.cross = cross
        if cross:
            self.multihead_attn = attn
        else:
            self.self_attn = attn
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, pos: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (L, B, C) queries.
            memory: (S, B, C) keys/values of a cross-attention (ignored for self-attention).
            attn_mask: bool (B * heads, L, S), True = may not attend.
            pos: (S, B, C) added to the keys of a cross-attention.
            query_pos: (L, B, C) added to the queries (and self-attention keys).
        Returns:
            (L, B, C).
        """
        h = self.norm(x) if self.pre_norm else x
        if self.cross:
            out = self.multihead_attn(_plus(h, query_pos), _plus(memory, pos), memory,
                                      attn_mask=attn_mask)[0]
        else:
            q = _plus(h, query_pos)
            out = self.self_attn(q, q, h, attn_mask=attn_mask)[0]
        x = x + out
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    """Residual two-layer ReLU FFN with a pre- or post-LayerNorm (mformer.py l.162-202)."""

    def __init__(self, dim: int, hidden: int, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(L, B, C) -> (L, B, C)."""
        h = self.norm(x) if self.pre_norm else x
        x = x + self.linear2(F.relu(self.linear1(h)))
        return x if self.pre_norm else self.norm(x)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``mask_embed.layers.<i>``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FusionLayer(nn.Module):
    """Self-attention, cross-attention and FFN, always post-norm, no masks, no positions: used
    both ways between the pooled reference queries and the target features (mformer.py
    l.230-286, called at l.562-572)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.transformer_self_attention_layer = AttentionLayer(dim, heads, False, cross=False)
        self.transformer_cross_attention_layer = AttentionLayer(dim, heads, False, cross=True)
        self.transformer_ffn_layer = FFNLayer(dim, mlp_dim, False)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x (L, B, C) attends to itself, then to ``other`` (S, B, C); returns (L, B, C)."""
        x = self.transformer_self_attention_layer(x)
        x = self.transformer_cross_attention_layer(x, other)
        return self.transformer_ffn_layer(x)


class DecoderLayer(nn.Module):
    """One Matching Transformer decoder layer over the three query groups (mformer.py
    l.288-363): ID (nm), instance (nq) and class (nc + 1) queries.

    Self-attention runs over all of them (with the mask that keeps ID queries apart);
    cross-attention to the target features only for ID and instance queries (masked by the
    previous prediction); ``transformer_ffn_layer1`` serves ID and instance queries,
    ``transformer_ffn_layer2`` the class queries.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, pre_norm: bool):
        super().__init__()
        self.transformer_self_attention_layer = AttentionLayer(dim, heads, pre_norm, cross=False)
        self.transformer_cross_attention_layer = AttentionLayer(dim, heads, pre_norm, cross=True)
        self.transformer_ffn_layer1 = FFNLayer(dim, mlp_dim, pre_norm)
        self.transformer_ffn_layer2 = FFNLayer(dim, mlp_dim, pre_norm)

    def forward(self, queries: List[torch.Tensor], positions: List[torch.Tensor],
                image: torch.Tensor, image_pos: torch.Tensor, sa_mask: torch.Tensor,
                ca_mask: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            queries: [id (nm, B, C), instance (nq, B, C), class (nc+1, B, C)].
            positions: their query positions, same shapes.
            image: (HW, B, C) target features; image_pos: (HW, B, C) their positions.
            sa_mask: bool (B * heads, N, N), N = nm + nq + nc + 1.
            ca_mask: bool (B * heads, nm + nq, HW).
        Returns:
            the three updated groups.
        """
        sizes = [q.shape[0] for q in queries]
        x = self.transformer_self_attention_layer(torch.cat(queries), attn_mask=sa_mask,
                                                  query_pos=torch.cat(positions))
        q_id, q_ins, q_cls = torch.split(x, sizes)
        matched = self.transformer_cross_attention_layer(
            torch.cat([q_id, q_ins]), image, attn_mask=ca_mask, pos=image_pos,
            query_pos=torch.cat(positions[:2]))
        q_id, q_ins = torch.split(matched, sizes[:2])
        return [self.transformer_ffn_layer1(q_id), self.transformer_ffn_layer1(q_ins),
                self.transformer_ffn_layer2(q_cls)]


def sine_position(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """DETR's normalised sine position encoding of an unpadded ``height`` x ``width`` grid
    (temperature 10000, scale 2 pi, eps 1e-6; aim-uofa/SINE
    inference_fss/model/transformer_decoder/position_encoding.py l.12-53, built with
    num_pos_feats = dim / 2 and normalize=True at mformer.py l.412-413).

    Returns:
        (1, dim, height, width) float32: the y encoding in the first dim/2 channels, x after,
        each interleaving sin (even) and cos (odd) frequencies.
    """
    feats = dim // 2
    ones = torch.ones(1, height, width, device=device)
    y = ones.cumsum(1, dtype=torch.float32)
    x = ones.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    freq = torch.arange(feats, dtype=torch.float32, device=device)
    freq = 10000 ** (2 * torch.div(freq, 2, rounding_mode="floor") / feats)

    def encode(t: torch.Tensor) -> torch.Tensor:
        t = t[..., None] / freq
        return torch.stack([t[..., 0::2].sin(), t[..., 1::2].cos()], dim=4).flatten(3)

    return torch.cat([encode(y), encode(x)], dim=3).permute(0, 3, 1, 2)
