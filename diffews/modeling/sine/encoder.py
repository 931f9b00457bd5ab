# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's image encoder: a frozen DINOv2 ViT (timm) and the neck (docs/SINE.md section 2).

The ViT is timm's ``vit_*_patch14_dinov2``, whose parameter names are the official DINOv2 layout
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>.{norm1,attn,ls1,norm2,mlp,ls2}``,
``norm``), so the released SINE file loads into ``image_encoder.encoder.*`` by prefix. What SINE
does differently from timm's own forward, and we therefore do here:

- the patch tokens are taken BEFORE the final LayerNorm (DINOv2's ``x_prenorm``;
  aim-uofa/SINE inference_fss/model/image_encoder/dinov2.py l.63);
- the position embedding is resized with DINOv2's own rule (facebookresearch/dinov2 at 44abdbe,
  dinov2/models/vision_transformer.py l.164-191), not timm's: ``interpolate_pos_embed`` below;
- DINOv2's ``mask_token`` (used only in DINOv2's masked training) is kept as a parameter so that
  the released state dict loads without unexpected keys.
"""

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.layers.batch_norm import LayerNorm
from torch import nn

__all__ = ["ARCHS", "PATCH_SIZE", "DINOv2Encoder", "build_dinov2", "interpolate_pos_embed",
           "build_neck"]

PATCH_SIZE = 14
# the position grid of every DINOv2 release: 37 x 37 patches (img_size 518; the original builds
# its ViT with img_size=518, inference_fss/model/model.py l.161-170)
POS_GRID_IMG_SIZE = 518
# our arch names (the original's dinov2 builders) -> timm model names
ARCHS = {
    "vit_small": "vit_small_patch14_dinov2",
    "vit_base": "vit_base_patch14_dinov2",
    "vit_large": "vit_large_patch14_dinov2",
    "vit_giant2": "vit_giant_patch14_dinov2",
}


def build_dinov2(arch: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> nn.Module:
    """A randomly initialised DINOv2 ViT in the official parameter layout.

    Args:
        arch: one of ``ARCHS``. vit_giant2 has DINOv2's SwiGLU FFN, as the official checkpoint
            (the original's eval scripts would build it with a plain MLP FFN, docs/SINE.md 2).
        embed_dim, depth, num_heads: overrides; 0 keeps the arch's own value.
    Returns:
        timm ``VisionTransformer`` (patch 14, position grid 37 x 37, layer scale 1e-5, no head)
        with an extra ``mask_token`` parameter of shape (1, embed_dim).
    """
    import timm

    if arch not in ARCHS:
        raise ValueError(f"MODEL.SINE.ENCODER.ARCH: {arch!r} is not one of {sorted(ARCHS)}")
    overrides = {k: v for k, v in (("embed_dim", embed_dim), ("depth", depth),
                                   ("num_heads", num_heads)) if v}
    vit = timm.create_model(ARCHS[arch], pretrained=False, num_classes=0,
                            img_size=POS_GRID_IMG_SIZE, **overrides)
    if vit.embed_dim % vit.blocks[0].attn.num_heads:
        raise ValueError(f"MODEL.SINE.ENCODER: EMBED_DIM {vit.embed_dim} is not a multiple of "
                         f"NUM_HEADS {vit.blocks[0].attn.num_heads}")
    # any input size that is a multiple of the patch (the position embedding is resized)
    vit.patch_embed.strict_img_size = False
    vit.mask_token = nn.Parameter(torch.zeros(1, vit.embed_dim))
    return vit


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """DINOv2's position embedding for a ``grid_h`` x ``grid_w`` patch grid (dinov2 44abdbe
    vision_transformer.py l.164-191).

    The stored embedding is returned as it is when the grid is the stored square; otherwise its
    patch part is resized bicubically (no antialias) with ``scale_factor`` ((grid_h + 0.1) / n,
    (grid_w + 0.1) / n), n = sqrt(number of stored patches): the scale factor, not the output
    size, sets the sampling positions, which is what the released model saw.

    Args:
        pos_embed: (1, 1 + n*n, C) class position then patch positions.
        grid_h, grid_w: patch rows and columns of the input.
    Returns:
        (1, 1 + grid_h * grid_w, C) in ``pos_embed``'s dtype.
    """
    n_stored = pos_embed.shape[1] - 1
    if grid_h * grid_w == n_stored and grid_h == grid_w:
        return pos_embed
    dim = pos_embed.shape[-1]
    side = math.sqrt(n_stored)
    patch = pos_embed.float()[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
                          mode="bicubic")
    if patch.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"position embedding resized to {tuple(patch.shape[-2:])}, expected "
                         f"({grid_h}, {grid_w})")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([pos_embed.float()[:, :1], patch], dim=1).to(pos_embed.dtype)


def build_neck(embed_dim: int, out_chans: int, use_fc: bool) -> nn.Module:
    """The neck from ViT width to the decoder width, without biases (aim-uofa/SINE
    inference_fss/model/image_encoder/dinov2.py l.34-58): one 1x1 conv if ``use_fc``, else 1x1
    conv, channel LayerNorm (eps 1e-6), 3x3 conv, channel LayerNorm."""
    if use_fc:
        return nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False)
    return nn.Sequential(
        nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
        LayerNorm(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm(out_chans),
    )


class DINOv2Encoder(nn.Module):
    """Frozen DINOv2 (``self.encoder``, no gradient) followed by the trainable ``self.neck``.

    Args:
        encoder: a ViT from ``build_dinov2``.
        out_chans: neck output channels (``MODEL.SINE.FEAT_CHANS``).
        use_fc: neck as a single 1x1 conv (``MODEL.SINE.ENCODER_USE_FC``).
    """

    def __init__(self, encoder: nn.Module, out_chans: int = 256, use_fc: bool = False):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.patch_size = PATCH_SIZE
        self.embed_dim = int(encoder.embed_dim)
        self.neck = build_neck(self.embed_dim, out_chans, use_fc)

    def grid(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Patch grid of an input of ``size`` (H, W); raises unless both are multiples of 14."""
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"SINE input {tuple(size)} is not a multiple of the patch size "
                             f"{self.patch_size}; MODEL.SINE.PAD_SIZE must be")
        return size[0] // self.patch_size, size[1] // self.patch_size

    @torch.no_grad()
    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """DINOv2's pre-norm patch tokens (``x_prenorm[:, 1:]``) as a feature map.

        Args:
            pixels: (B, 3, H, W) normalised, padded images; H, W multiples of 14.
        Returns:
            (B, embed_dim, H/14, W/14) float features, final LayerNorm NOT applied.
        """
        vit = self.encoder
        grid_h, grid_w = self.grid(pixels.shape[-2:])
        x = vit.patch_embed(pixels)  # (B, N, C)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + interpolate_pos_embed(vit.pos_embed, grid_h, grid_w).to(x.dtype)
        for block in vit.blocks:
            x = block(x)
        tokens = x[:, 1:]
        return tokens.permute(0, 2, 1).reshape(x.shape[0], -1, grid_h, grid_w)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised padded images -> (B, out_chans, H/14, W/14) neck features."""
        return self.neck(self.patch_tokens(pixels))
