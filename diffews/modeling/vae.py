# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The frozen parts of Stable Diffusion: the VAE and the empty-prompt text embedding."""

import logging
import os
from typing import Tuple

import torch
from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)


def _require(folder: str, what: str) -> None:
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} not found: MODEL.DIFFEWS.PRETRAINED must hold {what} (diffusers layout: "
            "unet/ vae/ text_encoder/ tokenizer/)"
        )


def load_frozen_vae(pretrained: str) -> AutoencoderKL:
    """``AutoencoderKL`` from ``<pretrained>/vae``, in eval mode with gradients off."""
    _require(os.path.join(pretrained, "vae"), "the VAE")
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_empty_prompt(
    pretrained: str, pad_in_training: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encode the empty prompt once; the text encoder is then released.

    Training uses ``[BOS, EOS, pad x 75]`` (docs/METHOD.md section 1.6), inference the
    unpadded ``[BOS, EOS]`` (docs/METHOD.md section 1.6). The CLIP text encoder is causal, so the
    first two training embeddings equal the inference ones.

    Returns:
        (train, test): (1, T_train, D) and (1, 2, D) float32 tensors.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    _require(os.path.join(pretrained, "tokenizer"), "the tokenizer")
    _require(os.path.join(pretrained, "text_encoder"), "the text encoder")
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder").eval()
    short = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
    test = text_encoder(short)[0].float()
    if not pad_in_training:
        return test.clone(), test
    long = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    train = text_encoder(long)[0].float()
    return train, test
