# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny random Stable Diffusion components, saved in the real diffusers layout.

No Stable Diffusion weights can be downloaded on CPU-only CI machines. The tests and the quick start
therefore build tiny models from config dicts (as diffusers' own tests do) and write them with
``save_pretrained``, so that every run goes through the same ``from_pretrained`` code that loads
SD 2.1 on a GPU machine.
"""

import json
import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD 2.1-like in structure (cross-attention down/up blocks, linear projections, upcast attention)
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
    upcast_attention=True,
)

# 4 levels: 8x downsampling, as SD's VAE
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.18215,
)

TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    vocab_size=8,
    bos_token_id=3,
    eos_token_id=4,
    pad_token_id=0,
    projection_dim=32,
)

# the empty prompt only needs BOS, EOS and the pad token ("!" with id 0, as in SD 2.1)
TINY_VOCAB = {"!": 0, "a": 1, "a</w>": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}


def build_tiny_sd(folder: str, seed: int = 0, unet: dict = None, vae: dict = None) -> str:
    """Write a tiny random SD pipeline folder: ``unet/ vae/ text_encoder/ tokenizer/``.

    Args:
        folder: output folder (created).
        seed: torch seed set before each component, so equal seeds give equal weights.
        unet, vae: overrides of ``TINY_UNET`` / ``TINY_VAE``.
    Returns:
        str: ``folder``.
    """
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    UNet2DConditionModel(**{**TINY_UNET, **(unet or {})}).save_pretrained(
        os.path.join(folder, "unet")
    )
    torch.manual_seed(seed)
    AutoencoderKL(**{**TINY_VAE, **(vae or {})}).save_pretrained(os.path.join(folder, "vae"))
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).save_pretrained(os.path.join(folder, "text_encoder"))
    tok = CLIPTokenizer(vocab=dict(TINY_VOCAB), merges=[], pad_token="!", model_max_length=77)
    tok.save_pretrained(os.path.join(folder, "tokenizer"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(
            {"_class_name": "StableDiffusionPipeline", "_note": "tiny random, DiffewS tests"}, f
        )
    return folder


def main():
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random Stable Diffusion folder.")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_sd(args.output, args.seed))


if __name__ == "__main__":
    main()
