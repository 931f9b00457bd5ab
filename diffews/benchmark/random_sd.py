# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Random-weight DiffewS models of three sizes, built in memory, for benchmarks.

* ``tiny``: the test suite's tiny UNet and VAE (``tiny_sd.py``).
* ``mid``: Stable Diffusion 2.1's structure (4 UNet levels, 2 layers per block, 16 fused layers,
  4-level VAE with its mid-block attention) at a quarter of its widths.
* ``sd21``: Stable Diffusion 2.1 exactly (the published ``stabilityai/stable-diffusion-2-1``
  component configs below: 866M-parameter UNet, 84M-parameter VAE), random weights.

No download and no text encoder: the empty-prompt embeddings are random tensors of the right
shape (the text encoder runs once at load time in real use and never during inference).
"""

import copy
from typing import Dict

import torch

from ..quickstart.tiny_sd import TINY_UNET, TINY_VAE

__all__ = ["SD21_UNET", "SD21_VAE", "MODEL_CONFIGS", "build_random_diffews"]

# stabilityai/stable-diffusion-2-1 unet/config.json and vae/config.json (diffusers layout)
SD21_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0,
    in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    num_class_embeds=None, only_cross_attention=False, out_channels=4, sample_size=96,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    use_linear_projection=True, upcast_attention=True,
)
SD21_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, in_channels=3, latent_channels=4,
    layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=768, scaling_factor=0.18215,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
MID_UNET = dict(SD21_UNET, block_out_channels=[80, 160, 320, 320], attention_head_dim=[1, 2, 4, 4],
                cross_attention_dim=256, norm_num_groups=16)
MID_VAE = dict(SD21_VAE, block_out_channels=[32, 64, 128, 128], norm_num_groups=16)

MODEL_CONFIGS: Dict[str, Dict] = {
    "tiny": {"unet": TINY_UNET, "vae": TINY_VAE},
    "mid": {"unet": MID_UNET, "vae": MID_VAE},
    "sd21": {"unet": SD21_UNET, "vae": SD21_VAE},
}


def build_random_diffews(name: str, seed: int = 0, presence_hidden: int = 0, **kwargs):
    """A ``DiffewS`` of ``MODEL_CONFIGS[name]`` with random weights (eval mode, CPU, fp32).

    Args:
        presence_hidden: > 0 adds a presence head of this width (``presence_head.py``).
        kwargs: further ``DiffewS`` arguments (``rel_threshold``, ``support_cache_size``, ...).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..modeling import DiffewS
    from ..modeling.meta_arch.diffews import build_presence_head
    from ..modeling.unet import add_support_conv

    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_CONFIGS)}")
    config = copy.deepcopy(MODEL_CONFIGS[name])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"])
    add_support_conv(unet)
    vae = AutoencoderKL(**config["vae"])
    g = torch.Generator().manual_seed(seed)
    dim = config["unet"]["cross_attention_dim"]
    train = torch.randn(1, 77, dim, generator=g)
    if presence_hidden > 0:
        kwargs["presence_head"] = build_presence_head(unet, presence_hidden)
    return DiffewS(unet=unet, vae=vae, prompt_embeds_train=train,
                   prompt_embeds_test=train[:, :2].clone(), **kwargs).eval()
