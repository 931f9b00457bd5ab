#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The original DiffewS code (aim-uofa/DiffewS d12c396) run as a timing worker for
``tools/benchmark.py --original`` (``diffews/benchmark/original_side.py`` starts it).

It runs under the ORIGINAL's interpreter and packages (diffusers 0.25.0, transformers 4.36.2; see
tools/BENCHMARKS.md for making that environment) and imports only the original checkout given
with --checkout, never this repository's ``diffews``. It builds the original's pipeline the way
``evaluation_util/main_oss.py`` l.315-358 does (its custom UNet, the VAE, tokenizer and text
encoder of one weights folder, the repository's ``scheduler_1.0_1.0`` scheduler, ``test_timestep``
1), then answers one request per line on stdin: an episode index; it runs that episode as
``test_diffusion`` (``main_oss.py`` l.85-143) does with the scripts' settings (``scripts/eval_*``:
``--denoise_steps 1 --ensemble_size 1 --bsz 1 --threshold 0 --r_threshold 0.25``) and writes one
JSON line on its protocol stream: the seconds the episode took and the mask (packed bits).

One change, for the CPU: ``main_oss.py`` l.363-368 insists on xformers, which has no CPU kernels.
The fused self-attention layers keep the original's own xformers processor
(``MyXFormersAttnProcessor``, ``attention_processor.py`` l.195-285: the only one of its processors
that flattens K supports into the token axis, docs/METHOD.md section 1.4), with
``xformers.ops.memory_efficient_attention`` replaced by ``torch.nn.functional.
scaled_dot_product_attention`` (the same function); the other attention layers keep diffusers'
default SDPA processor, which is what xformers replaced on a GPU.
"""

import argparse
import base64
import json
import os
import sys
import time
import types


def _protocol_stream():
    """The real stdout for the protocol; everything the original prints goes to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    return out


def _sdpa_xformers():
    import torch.nn.functional as F

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias,
                                              dropout_p=p, scale=scale)

    return types.SimpleNamespace(ops=types.SimpleNamespace(
        memory_efficient_attention=memory_efficient_attention))


def build_pipeline(checkout: str, weights: str):
    """The original's pipeline on ``weights`` (a diffusers folder: unet/ with conv_in_ref, vae/,
    text_encoder/, tokenizer/), as ``main_oss.py`` builds it."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    import diffews.models.attention_processor as processors
    from diffews.marigold_pipeline_rgb_latent_noise import MarigoldPipelineRGBLatentNoise
    from diffews.models.unet_2d_condition import MyUNet2DConditionModel
    from marigold.util.scheduler_customized import DDIMSchedulerCustomized

    unet = MyUNet2DConditionModel.from_pretrained(weights, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(weights, subfolder="vae")
    tokenizer = CLIPTokenizer.from_pretrained(weights, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(weights, subfolder="text_encoder")
    scheduler = DDIMSchedulerCustomized.from_pretrained(
        os.path.join(checkout, "scheduler_1.0_1.0"), subfolder="scheduler")
    pipe = MarigoldPipelineRGBLatentNoise(
        unet=unet, vae=vae, scheduler=scheduler, tokenizer=tokenizer, text_embeds=None,
        text_encoder=text_encoder, image_encoder=None, image_projector=None, controlnet=None,
        customized_head=None).to(torch.device("cpu"))
    pipe.test_timestep = 1
    processors.xformers = _sdpa_xformers()
    fused = 0
    for module in unet.modules():
        if isinstance(module, processors.MyAttention):
            module.set_processor(processors.MyXFormersAttnProcessor(attention_op=None))
            fused += 1
    if not fused:
        raise RuntimeError(f"{checkout}: no MyAttention layer in the original's UNet")
    return pipe


def run_episode(pipe, episode, query_path: str):
    """``test_diffusion``'s loop body for one episode; returns the (H, W) bool mask."""
    import torch
    from torchvision import transforms

    image = episode["image"].float()[None] / 255.0  # ToTensor, then Normalize(0.5, 0.5)
    query_img = (image - 0.5) / 0.5
    support_imgs = (episode["support_images"].float()[None] / 255.0 - 0.5) / 0.5
    support_masks = (episode["support_masks"] > 0).float()[None]  # [1, K, H, W] in {0, 1}
    support_masks = support_masks.unsqueeze(2).repeat(1, 1, 3, 1, 1) * 2 - 1
    support_imgs = support_imgs.reshape(-1, *support_imgs.shape[-3:])
    support_masks = support_masks.reshape(-1, *support_masks.shape[-3:])
    size = int(episode["image"].shape[-1])
    with torch.no_grad():
        out = pipe([support_imgs, query_img, support_masks], denoising_steps=1, ensemble_size=1,
                   processing_res=size, batch_size=1, show_progress_bar=False, mode="seg",
                   rgb_paths=[query_path], seed=0)
    pred = transforms.functional.to_tensor(out.seg_colored)
    if len(pred.shape) == 3:
        pred = pred[None]
    threshold = pred.max() * 0.25  # --r_threshold 0.25, --threshold 0
    return (pred.mean(dim=1) > threshold)[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", required=True, help="the original DiffewS checkout (d12c396)")
    p.add_argument("--weights", required=True, help="diffusers folder written for both sides")
    p.add_argument("--episodes", required=True, help="torch file: list of episode dicts")
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    protocol = _protocol_stream()
    checkout = os.path.abspath(args.checkout)
    sys.path = [checkout] + [d for d in sys.path
                             if os.path.abspath(d or ".") != os.path.dirname(__file__)]
    os.chdir(checkout)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    pipe = build_pipeline(checkout, args.weights)
    data = torch.load(args.episodes, weights_only=False)
    episodes, query_paths = data["episodes"], data["query_paths"]
    protocol.write(json.dumps({"ready": True, "torch": torch.__version__,
                               "diffusers": __import__("diffusers").__version__,
                               "transformers": __import__("transformers").__version__}) + "\n")
    for line in sys.stdin:
        i = int(line)
        start = time.perf_counter()
        mask = run_episode(pipe, episodes[i], query_paths[i])
        seconds = time.perf_counter() - start
        bits = np.packbits(mask.numpy().astype(np.uint8).reshape(-1))
        protocol.write(json.dumps({"i": i, "seconds": seconds, "shape": list(mask.shape),
                                   "mask": base64.b64encode(bits.tobytes()).decode()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
