# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DiffewS meta-architecture: few-shot segmentation with one step of a Stable Diffusion UNet.

METHOD.md sections 0-5. Per episode: the supports' image and mask latents go through the UNet once
(support pass), filling a KV bank; the query image latent goes through it once more (query pass),
every self-attention attending to its own and the supports' keys/values. The output, negated, is
the VAE latent of the query mask, which the VAE decodes and a relative threshold binarises.
"""

import logging
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..kv_fusion import KVBank, set_kv_fusion_processors
from ..support_cache import SupportLatentCache
from ..unet import load_pretrained_unet
from ..vae import encode_empty_prompt, load_frozen_vae

logger = logging.getLogger(__name__)

__all__ = ["DiffewS"]


@META_ARCH_REGISTRY.register()
class DiffewS(nn.Module):
    """Stable Diffusion UNet as a one-step few-shot segmenter with KV fusion."""

    @configurable
    def __init__(
        self,
        *,
        unet: nn.Module,
        vae: nn.Module,
        prompt_embeds_train: torch.Tensor,
        prompt_embeds_test: torch.Tensor,
        timestep: int = 1,
        rel_threshold: float = 0.25,
        abs_threshold: float = 0.0,
        support_cache_size: int = 0,
    ):
        """
        Args:
            unet: diffusers ``UNet2DConditionModel`` with a support input conv
                (``modeling.unet.add_support_conv``); KV-fusion processors are installed here.
            vae: diffusers ``AutoencoderKL``; frozen.
            prompt_embeds_train: (1, T_train, D) text-encoder output of the empty prompt used in
                training (77 tokens for SD 2.1, METHOD.md 1.6).
            prompt_embeds_test: (1, T_test, D) the same for inference (2 tokens: BOS, EOS).
            timestep: diffusion timestep of both UNet passes.
            rel_threshold: mask = mean_RGB(pred) > rel_threshold * max(pred), pred in [0, 1].
            abs_threshold: if > 0, mask = mean_RGB(pred) > abs_threshold instead.
            support_cache_size: supports whose latents inference keeps for later episodes
                (``SupportLatentCache``); 0 disables.
        """
        super().__init__()
        self.unet = unet
        self.num_fused_layers = set_kv_fusion_processors(unet)
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("prompt_embeds_train", prompt_embeds_train, persistent=False)
        self.register_buffer("prompt_embeds_test", prompt_embeds_test, persistent=False)
        self.timestep = timestep
        self.rel_threshold = rel_threshold
        self.abs_threshold = abs_threshold
        self.support_cache = SupportLatentCache(support_cache_size) if support_cache_size > 0 else None
        self.latent_scale = float(vae.config.scaling_factor)
        # the VAE halves the resolution in every block but the last, the UNet in every down block
        # but the last: inputs must be multiples of both
        self.size_divisibility = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (
            len(unet.config.block_out_channels) - 1
        )

    @classmethod
    def from_config(cls, cfg):
        pretrained = cfg.MODEL.DIFFEWS.PRETRAINED
        if not pretrained:
            raise ValueError(
                "MODEL.DIFFEWS.PRETRAINED is empty: set it to a local Stable Diffusion folder in "
                "diffusers layout (unet/ vae/ text_encoder/ tokenizer/); see TRAINING.md"
            )
        unet = load_pretrained_unet(pretrained)
        if cfg.MODEL.DIFFEWS.GRADIENT_CHECKPOINTING:
            unet.enable_gradient_checkpointing()
        train_embeds, test_embeds = encode_empty_prompt(
            pretrained, pad_in_training=cfg.MODEL.DIFFEWS.PAD_PROMPT_IN_TRAINING
        )
        return {
            "unet": unet,
            "vae": load_frozen_vae(pretrained),
            "prompt_embeds_train": train_embeds,
            "prompt_embeds_test": test_embeds,
            "timestep": cfg.MODEL.DIFFEWS.TIMESTEP,
            "rel_threshold": cfg.MODEL.DIFFEWS.REL_THRESHOLD,
            "abs_threshold": cfg.MODEL.DIFFEWS.ABS_THRESHOLD,
            "support_cache_size": cfg.MODEL.DIFFEWS.SUPPORT_CACHE_SIZE,
        }

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds_test.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen, always in eval mode
        return self

    def state_dict(self, *args, **kwargs):
        """Checkpoints hold the UNet only: the frozen VAE comes from MODEL.DIFFEWS.PRETRAINED."""
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if k[len(prefix):].startswith("vae.")]:
            del state[key]
        return state

    # ------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: a list of episodes, each a dict with
                * "image": (3, H, W) uint8 or float tensor, the query image, RGB in [0, 255], already
                  resized to the working size (INPUT.IMAGE_SIZE).
                * "support_images": (K, 3, H, W) the K support images, same convention and size.
                * "support_masks": (K, H, W) the support masks, non-zero = foreground.
                * "sem_seg": (H, W) the query mask (training only): 1 = foreground, 0 = background,
                  255 = ignore (counted as background for the target image).
                * "class_id": int, the episode's class (carried along, unused by the model).
                Episodes may have different K; those with equal K are batched together.
        Returns:
            In training, a dict of losses ``{"loss_mask_latent": scalar}``. In inference, a list of
            dicts, one per episode, with
                * "pred_mask": (H, W) bool, the predicted query mask at the working size.
                * "pred_image": (3, H, W) uint8, the decoded RGB prediction before thresholding.
        """
        groups: Dict[int, List[int]] = {}
        for i, x in enumerate(batched_inputs):
            groups.setdefault(self._num_shots(x, i), []).append(i)
        if self.training:
            total, count = 0.0, 0
            for shots, idx in groups.items():
                loss = self.losses([batched_inputs[i] for i in idx], shots)
                total = total + loss * len(idx)
                count += len(idx)
            return {"loss_mask_latent": total / count}
        results: List[Dict] = [None] * len(batched_inputs)
        for shots, idx in groups.items():
            for i, r in zip(idx, self.inference([batched_inputs[i] for i in idx], shots)):
                results[i] = r
        return results

    def _num_shots(self, x: Dict, i: int) -> int:
        k = len(x["support_images"])
        if k == 0 or len(x["support_masks"]) != k:
            raise ValueError(
                f"episode {i}: {k} support images and {len(x['support_masks'])} support masks; "
                "an episode needs at least one support, with one mask per image"
            )
        return k

    def _stack(self, batched_inputs: List[Dict], normalize_supports: bool = True):
        """Stack and normalise an episode batch: images to [-1, 1], masks to 3-channel {-1, +1}.

        With ``normalize_supports=False`` the supports are only checked, and (None, None) is
        returned for them (the support cache normalises just the ones it has to encode).
        """
        query = torch.stack([x["image"] for x in batched_inputs]).to(self.device)
        supports = torch.cat([x["support_images"] for x in batched_inputs]).to(self.device)
        masks = torch.cat([torch.as_tensor(x["support_masks"]) for x in batched_inputs])
        size = query.shape[-2:]
        if supports.shape[-2:] != size or masks.shape[-2:] != size:
            raise ValueError(
                f"query {tuple(size)}, supports {tuple(supports.shape[-2:])} and support masks "
                f"{tuple(masks.shape[-2:])} must share the working size"
            )
        if size[0] % self.size_divisibility or size[1] % self.size_divisibility:
            raise ValueError(
                f"image size {tuple(size)} is not a multiple of {self.size_divisibility} (VAE x UNet "
                "downsampling); change INPUT.IMAGE_SIZE"
            )
        if not normalize_supports:
            return self.normalize(query), None, None
        return self.normalize(query), self.normalize(supports), self.mask_to_image(masks)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 255] -> [-1, 1] (ToTensor then Normalize(0.5, 0.5) in the reference)."""
        return images.to(self.device, torch.float32) / 127.5 - 1.0

    def mask_to_image(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) mask, non-zero = foreground -> (N, 3, H, W) image, -1 background / +1 foreground."""
        m = (masks.to(self.device) > 0).to(torch.float32) * 2.0 - 1.0
        return m[:, None].expand(-1, 3, -1, -1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """VAE-encode (N, 3, H, W) images in [-1, 1] to scaled latents (N, C, H/f, W/f).

        ``sample=True`` draws from the posterior (training); False takes its mean (inference).
        """
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mean
        return z * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (N, 3, H, W) uint8 prediction, exactly as the reference maps it:
        clip to [-1, 1], to [0, 255], truncate (not round) to uint8."""
        image = self.vae.decode(latents.to(self.vae.dtype) / self.latent_scale).sample
        image = (image.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0
        return image.clamp(0, 255).to(torch.uint8)

    def predict_latents(self, query_latents, support_latents, shots: int, prompt) -> torch.Tensor:
        """Run the support pass then the query pass; returns the UNet output of the query pass.

        Args:
            query_latents: (B, C, h, w) query image latents.
            support_latents: (B*K, 2C, h, w) support image latents concatenated with mask latents,
                grouped by episode (the K supports of episode 0 first).
            shots: K.
            prompt: (1, T, D) empty-prompt embedding.
        Returns:
            (B, C, h, w): the prediction, read as minus the query-mask latent.
        """
        bank = KVBank(shots)
        support_out = self._unet(support_latents, prompt, bank, read=False)
        query_out = self._unet(query_latents, prompt, bank, read=True)
        # the support output is unused, but it keeps the support branch in the graph for DDP
        return query_out + support_out.mean() * 0.0 if self.training else query_out

    def _unet(self, latents, prompt, bank: KVBank, read: bool) -> torch.Tensor:
        n = latents.shape[0]
        t = torch.full((n,), self.timestep, device=latents.device, dtype=torch.long)
        context = prompt.expand(n, -1, -1)
        return self.unet(
            latents, t, encoder_hidden_states=context, cross_attention_kwargs={"kv_bank": bank, "kv_read": read}
        ).sample

    def losses(self, batched_inputs: List[Dict], shots: int) -> torch.Tensor:
        """Latent MSE between the output and minus the VAE-sampled query-mask latent (METHOD.md 4)."""
        query, supports, support_masks = self._stack(batched_inputs)
        target_mask = torch.stack([(torch.as_tensor(x["sem_seg"]) == 1) for x in batched_inputs])
        z_query = self.encode(query, sample=True)
        z_support = torch.cat(
            [self.encode(supports, sample=True), self.encode(support_masks, sample=True)], dim=1
        )
        z_target = self.encode(self.mask_to_image(target_mask), sample=True)
        pred = self.predict_latents(z_query, z_support, shots, self.prompt_embeds_train)
        return F.mse_loss(pred.float(), (-z_target).float(), reduction="mean")

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict], shots: int) -> List[Dict]:
        """One-step prediction and the reference's relative threshold (METHOD.md 3)."""
        cached = self.support_cache is not None
        query, supports, support_masks = self._stack(batched_inputs, normalize_supports=not cached)
        if not cached:
            z_support = self._support_latents(supports, support_masks)
        else:
            z_support = self.support_cache.encode(
                [s for x in batched_inputs for s in x["support_images"]],
                [torch.as_tensor(m) for x in batched_inputs for m in x["support_masks"]],
                lambda s, m: self._support_latents(self.normalize(s), self.mask_to_image(m)),
            )
        z_query = self.encode(query, sample=False)
        pred = self.predict_latents(z_query, z_support, shots, self.prompt_embeds_test)
        images = self.decode(-pred)
        return [{"pred_image": img, "pred_mask": self.threshold(img)} for img in images]

    def _support_latents(self, images: torch.Tensor, mask_images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised supports and mask images -> (N, 2C, h, w) posterior-mean latents."""
        return torch.cat([self.encode(images, sample=False), self.encode(mask_images, sample=False)], dim=1)

    def threshold(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 prediction -> (H, W) bool mask."""
        p = image.float() / 255.0
        mean = p.mean(dim=0)
        if self.abs_threshold > 0:
            return mean > self.abs_threshold
        return mean > self.rel_threshold * p.max()
