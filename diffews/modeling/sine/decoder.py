# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The Matching Transformer (MFormer), given pooled reference queries (docs/SINE.md section 3).

The four copies of the original decoder (aim-uofa/SINE ``*/transformer_decoder/mformer.py``;
line numbers here are inference_fss/model/transformer_decoder/mformer.py's) share everything
after the reference pooling (``forward_per_image`` from "fusion reference and target", l.557-690);
they differ only in how the ID and class queries are pooled, which lives in
``pooling.py``. ``MatchingTransformer.forward`` is that shared part:

1. fusion: pooled queries and target features attend to each other (shared weights, plus an
   extra residual around each fusion layer, l.562-572);
2. ID positions: each ID query's cosine correlation with the fused target features, damped by a
   Gaussian (sigma 10 patches) around its peak, softmax with the learnable ``temp``, gives a
   distribution over target positions whose expectation of the sine encoding is its position;
3. queries: ID (the fused ID queries), instance (``query_feat`` / ``query_embed``) and class
   (fused class queries plus the learnable "no object" ``neg_class_embed``, position 0), each
   group plus its ``query_grained_embed`` row;
4. prediction heads before the first layer and after each layer. The masks of the FIRST
   prediction (from the initial queries), resized to the feature grid, mask the cross-attention
   of EVERY layer (``sigmoid < 0.5`` blocked; a query blocked everywhere is released): the
   original computes each later prediction's mask into a variable that no layer reads
   (mformer.py l.633 vs l.660, the same in all four copies, training included), and the
   released model was trained that way, so we keep it.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers.batch_norm import LayerNorm
from torch import nn

from .layers import MLP, DecoderLayer, FusionLayer, sine_position

__all__ = ["MatchingTransformer"]


class MatchingTransformer(nn.Module):
    """SINE's decoder (``transformer_decoder.*`` in the released state dict).

    Args:
        dim: width (``MODEL.SINE.FEAT_CHANS``).
        depth: decoder layers. heads: attention heads. mlp_dim: FFN width.
        mask_dim: mask embedding width; must equal ``dim`` (einsum with the mask features).
        fusion_depth: fusion layers. num_queries: learnable instance queries.
        pre_norm: pre-norm decoder layers (fusion layers are post-norm regardless).
        temp: initial ``temp`` of the ID position softmax (30, mformer.py l.389).
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, mask_dim: int,
                 fusion_depth: int = 1, num_queries: int = 200, pre_norm: bool = True,
                 temp: float = 30.0):
        super().__init__()
        if mask_dim != dim:
            raise ValueError(f"MODEL.SINE.DECODER.MASK_DIM ({mask_dim}) must equal "
                             f"MODEL.SINE.FEAT_CHANS ({dim}): mask embeddings meet the features")
        if dim % heads:
            raise ValueError(f"MODEL.SINE.FEAT_CHANS {dim} is not a multiple of "
                             f"MODEL.SINE.DECODER.NHEADS {heads}")
        self.dim, self.num_heads, self.num_queries = dim, heads, num_queries
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        self.fusion_layers = nn.ModuleList(FusionLayer(dim, heads, mlp_dim)
                                           for _ in range(fusion_depth))
        self.transformer_layers = nn.ModuleList(DecoderLayer(dim, heads, mlp_dim, pre_norm)
                                                for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(dim)
        # 4x upsampling of the target features into the mask features
        self.mask_feat_layer = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            LayerNorm(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim, kernel_size=2, stride=2),
        )
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.query_grained_embed = nn.Embedding(3, dim)  # rows: ID, instance, class
        self.id_class_embed = nn.Linear(dim, 2)
        self.neg_class_embed = nn.Embedding(1, dim)
        self.mask_embed = MLP(dim, dim, mask_dim, 3)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    # ------------------------------------------------------------------------------------------
    def mask_features(self, target: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) target features -> (B, C, 4h, 4w) mask features."""
        return self.mask_feat_layer(target)

    def fuse(self, queries: torch.Tensor, image: torch.Tensor):
        """Fusion layers both ways with the extra residual. queries (Q, B, C), image (HW, B, C)."""
        for layer in self.fusion_layers:
            new_queries = layer(queries, image)
            new_image = layer(image, queries)
            queries, image = new_queries + queries, new_image + image
        return queries, image

    @staticmethod
    def damped_correlation(corr: torch.Tensor, side: int, sigma: float = 10.0) -> torch.Tensor:
        """Multiply each row of ``corr`` (B, Q, side*side) by a Gaussian of ``sigma`` patches
        centred on the row's maximum (mformer.py l.502-522; the grid must be square)."""
        b, q = corr.shape[:2]
        center = corr.max(dim=2)[1]
        cy, cx = torch.div(center, side, rounding_mode="floor"), center % side
        coords = torch.arange(side, dtype=torch.float32, device=corr.device)
        dy = coords.view(1, 1, side) - cy.unsqueeze(2)  # (B, Q, side): row offsets
        dx = coords.view(1, 1, side) - cx.unsqueeze(2)
        dist2 = dy.unsqueeze(3).pow(2) + dx.unsqueeze(2).pow(2)  # (B, Q, side, side)
        gauss = torch.exp(-dist2 / (2 * sigma ** 2))
        return (gauss * corr.view(b, q, side, side)).view(b, q, corr.shape[2])

    def heads(self, queries: List[torch.Tensor], mask_features: torch.Tensor,
              grid: Optional[Tuple[int, int]] = None) -> Dict:
        """Class logits and masks of the current queries, and their cross-attention mask.

        Args:
            queries: [id (nm, B, C), instance (nq, B, C), class (nc+1, B, C)].
            mask_features: (B, C, 4h, 4w). grid: (h, w) of the attention mask; None: no mask.
        Returns:
            dict with "id_logits" (B, nm, 2), "ins_logits" (B, nq, nc+1) (cosine similarity to
            the class queries times min(exp(logit_scale), 100)), "id_masks" (B, nm, 4h, 4w),
            "ins_masks" (B, nq, 4h, 4w), "attn_mask" bool (B*heads, nm+nq, h*w) (None
            without ``grid``), and
            "mask_embed" [(B, nm, C), (B, nq, C)].
        """
        q_id, q_ins, q_cls = [self.decoder_norm(q).transpose(0, 1) for q in queries]
        scale = torch.clamp(self.logit_scale.exp(), max=100)
        ins_logits = scale * torch.einsum("bqc,bnc->bqn", F.normalize(q_ins, dim=-1),
                                          F.normalize(q_cls, dim=-1))
        emb_id, emb_ins = self.mask_embed(q_id), self.mask_embed(q_ins)
        masks = torch.cat([torch.einsum("bqc,bchw->bqhw", emb_id, mask_features),
                           torch.einsum("bqc,bchw->bqhw", emb_ins, mask_features)], dim=1)
        blocked = None
        if grid is not None:
            small = F.interpolate(masks, size=grid, mode="bilinear", align_corners=False)
            blocked = small.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1)
            blocked = (blocked.flatten(0, 1) < 0.5).detach()
        nm = q_id.shape[1]
        return {"id_logits": self.id_class_embed(q_id), "ins_logits": ins_logits,
                "id_masks": masks[:, :nm], "ins_masks": masks[:, nm:], "attn_mask": blocked,
                "mask_embed": [emb_id, emb_ins]}

    def forward(self, target: torch.Tensor, id_queries: torch.Tensor,
                class_queries: torch.Tensor) -> Dict:
        """Decode one target image from pooled reference queries.

        Args:
            target: (1, C, h, w) neck features of the padded target (h == w).
            id_queries: (1, nm, C) pooled ID queries (nm may be 0: no ID queries).
            class_queries: (1, nc, C) pooled class queries.
        Returns:
            dict with the last layer's "pred_id_logits" (1, nm, 2), "pred_ins_logits"
            (1, nq, nc+1) (last = no object), "pred_id_masks" (1, nm, 4h, 4w),
            "pred_ins_masks" (1, nq, 4h, 4w) (logits at the mask-feature size), and
            "aux_outputs": the same four keys for the earlier predictions (training).
        """
        bs, _, h, w = target.shape
        if h != w:
            raise ValueError(f"SINE's decoder needs a square feature grid, got {h}x{w}: pad "
                             "the images to MODEL.SINE.PAD_SIZE square")
        mask_features = self.mask_features(target)
        nm = id_queries.shape[1]
        pooled = torch.cat([id_queries, class_queries], dim=1).permute(1, 0, 2)  # (Q, B, C)
        image = target.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        pooled, image = self.fuse(pooled, image)
        image, pooled = image.permute(1, 0, 2), pooled.permute(1, 0, 2)  # batch first
        q_id, q_cls = pooled[:, :nm], pooled[:, nm:]
        image_pos = sine_position(h, w, self.dim, target.device).to(target.dtype)
        image_pos = image_pos.flatten(2).permute(0, 2, 1).repeat(bs, 1, 1)  # (B, HW, C)

        # ID positions: expected position under the damped correlation with the target
        corr = torch.einsum("nac,nbc->nab", F.normalize(q_id, dim=-1, p=2),
                            F.normalize(image, dim=-1, p=2))
        dist = torch.softmax(self.damped_correlation(corr, h) * self.temp, dim=-1)
        pos_id = torch.einsum("nab,nbc->nac", dist, image_pos)
        q_ins = self.query_feat.weight.unsqueeze(0).repeat(bs, 1, 1)
        pos_ins = self.query_embed.weight.unsqueeze(0).repeat(bs, 1, 1)
        q_cls = torch.cat([q_cls, self.neg_class_embed.weight[None].repeat(bs, 1, 1)], dim=1)
        pos_cls = torch.zeros_like(q_cls)
        grained = self.query_grained_embed.weight
        queries = [q_id + grained[0][None, None], q_ins + grained[1][None, None],
                   q_cls + grained[2][None, None]]
        queries = [q.permute(1, 0, 2) for q in queries]
        positions = [p.permute(1, 0, 2) for p in (pos_id, pos_ins, pos_cls)]
        image, image_pos = image.permute(1, 0, 2), image_pos.permute(1, 0, 2)

        # ID queries see only each other; instance and class queries see each other
        n = sum(q.shape[0] for q in queries)
        sa_mask = torch.ones((n, n), dtype=torch.bool, device=target.device)
        sa_mask[:nm, :nm] = False
        sa_mask[nm:, nm:] = False
        sa_mask = sa_mask[None].repeat(bs * self.num_heads, 1, 1)

        preds = [self.heads(queries, mask_features, (h, w))]
        ca_mask = preds[0]["attn_mask"]  # the first prediction's, for every layer (see above)
        ca_mask[ca_mask.sum(-1) == ca_mask.shape[-1]] = False
        for layer in self.transformer_layers:
            queries = layer(queries, positions, image, image_pos, sa_mask, ca_mask)
            preds.append(self.heads(queries, mask_features))
        keys = {"pred_id_logits": "id_logits", "pred_ins_logits": "ins_logits",
                "pred_id_masks": "id_masks", "pred_ins_masks": "ins_masks"}
        out = {k: preds[-1][v] for k, v in keys.items()}
        out["aux_outputs"] = [{k: p[v] for k, v in keys.items()} for p in preds[:-1]]
        out["mask_embed"] = preds[-1]["mask_embed"]
        return out
