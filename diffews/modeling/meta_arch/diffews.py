# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DiffewS meta-architecture: few-shot segmentation with one step of a Stable Diffusion UNet.

METHOD.md sections 0-5. Per episode: the supports' image and mask latents go through the UNet once
(support pass), which yields a ``SupportSet`` (their keys/values in every self-attention layer);
the query image latent goes through it once more (query pass), every self-attention attending to
its own and the supports' keys/values. The output, negated, is the VAE latent of the query mask,
which the VAE decodes and a relative threshold binarises.

The building blocks below (``encode_supports``, ``encode``, ``query_pass``, ``decode``,
``postprocess``) are the one implementation of the method: ``forward`` (training and benchmarks),
``DiffewSPredictor``, video object segmentation and instance segmentation all call them.
"""

import logging
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..kv_fusion import KVBank, SupportPassDone, fused_layer_names, set_kv_fusion_processors
from ..speed import compile_for_inference, set_inference_dtype
from ..support_cache import SupportLatentCache
from ..readout import prediction_score, relative_threshold
from ..support_set import SupportSet, model_signature
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
        inference_dtype: str = "float32",
        compile: bool = False,
        support_pass_batch: int = 8,
        vae_channels_last: bool = True,
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
            support_cache_size: supports whose latents ``forward`` keeps for later episodes
                (``SupportLatentCache``; results are identical with or without it); 0 disables.
            inference_dtype: "float32", "float16" or "bfloat16" weights for inference
                (``modeling/speed.py``).
            compile: ``torch.compile`` the VAE encoder and decoder for inference (``speed.py``).
            support_pass_batch: supports per support-pass call at inference (1: each alone).
            vae_channels_last: keep the VAE's weights in channels-last memory format (faster
                convolutions on CPUs; the same function up to float rounding).
        """
        super().__init__()
        self.unet = unet
        self.num_fused_layers = set_kv_fusion_processors(unet)
        self.fused_layers = fused_layer_names(unet)
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
        if support_pass_batch < 1:
            raise ValueError(f"MODEL.DIFFEWS.SUPPORT_PASS_BATCH must be >= 1, got {support_pass_batch}")
        self.support_pass_batch = int(support_pass_batch)
        if vae_channels_last:
            self.vae.to(memory_format=torch.channels_last)
        self.inference_dtype, self.compiled = torch.float32, False
        set_inference_dtype(self, inference_dtype)
        if compile:
            compile_for_inference(self)

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
            "inference_dtype": cfg.MODEL.DIFFEWS.INFERENCE_DTYPE,
            "compile": cfg.MODEL.DIFFEWS.COMPILE,
            "support_pass_batch": cfg.MODEL.DIFFEWS.SUPPORT_PASS_BATCH,
            "vae_channels_last": cfg.MODEL.DIFFEWS.VAE_CHANNELS_LAST,
        }

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds_test.device

    def train(self, mode: bool = True):
        if mode and (self.inference_dtype != torch.float32 or self.compiled):
            raise ValueError("MODEL.DIFFEWS.INFERENCE_DTYPE and MODEL.DIFFEWS.COMPILE are inference "
                             "settings; training runs in float32 eager mode with SOLVER.AMP")
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
                * "score": scalar tensor in [0, 1], the prediction's confidence (``postprocess``).
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
            for i, r in zip(idx, self.inference([batched_inputs[i] for i in idx])):
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

    def check_size(self, size) -> None:
        """Raise if (H, W) is not a multiple of the VAE x UNet downsampling."""
        if size[0] % self.size_divisibility or size[1] % self.size_divisibility:
            raise ValueError(
                f"image size {tuple(size)} is not a multiple of {self.size_divisibility} (VAE x UNet "
                "downsampling); change INPUT.IMAGE_SIZE"
            )

    def _stack(self, batched_inputs: List[Dict]):
        """Query images (B, 3, H, W) and all supports (B*K, 3, H, W), masks (B*K, H, W), checked
        to share one working size (not normalised)."""
        query = torch.stack([torch.as_tensor(x["image"]) for x in batched_inputs])
        supports = torch.cat([torch.as_tensor(x["support_images"]) for x in batched_inputs])
        masks = torch.cat([torch.as_tensor(x["support_masks"]) for x in batched_inputs])
        size = query.shape[-2:]
        if supports.shape[-2:] != size or masks.shape[-2:] != size:
            raise ValueError(
                f"query {tuple(size)}, supports {tuple(supports.shape[-2:])} and support masks "
                f"{tuple(masks.shape[-2:])} must share the working size"
            )
        self.check_size(size)
        return query, supports, masks

    def losses(self, batched_inputs: List[Dict], shots: int) -> torch.Tensor:
        """Latent MSE between the output and minus the VAE-sampled query-mask latent (METHOD.md 4).

        Every latent is a posterior *sample* (the reference's ``latent_dist.sample()``), and the
        support pass runs on all B*K supports at once, inside the autograd graph.
        """
        query, supports, masks = self._stack(batched_inputs)
        target_mask = torch.stack([(torch.as_tensor(x["sem_seg"]) == 1) for x in batched_inputs])
        z_query = self.encode(self.normalize(query), sample=True)
        z_support = torch.cat([self.encode(self.normalize(supports), sample=True),
                               self.encode(self.mask_to_image(masks), sample=True)], dim=1)
        z_target = self.encode(self.mask_to_image(target_mask), sample=True)
        support_set, support_out = self.support_pass(z_support, self.prompt_embeds_train)
        rows = [support_set[i * shots:(i + 1) * shots] for i in range(len(batched_inputs))]
        pred = self.query_pass(z_query, rows, self.prompt_embeds_train)
        # the support output is unused, but keeping it in the graph lets DDP see every parameter
        # used (the reference adds ``support_out * 0``; the batch sizes differ here for K > 1)
        pred = pred + support_out.mean() * 0.0
        return F.mse_loss(pred.float(), (-z_target).float(), reduction="mean")

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """One-step prediction of episodes with equal K (METHOD.md 3): each episode's supports
        become a SupportSet (``encode_supports``), then one query pass for the whole batch."""
        query, _, _ = self._stack(batched_inputs)
        sets = [self.encode_supports(x["support_images"], x["support_masks"])
                for x in batched_inputs]
        z_query = self.encode(self.normalize(query), sample=False)
        pred = self.query_pass(z_query, sets, self.prompt_embeds_test)
        return self.postprocess(self.decode(-pred))

    # ---- the method's building blocks --------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 255] -> [-1, 1] (ToTensor then Normalize(0.5, 0.5) in the reference)."""
        return images.to(self.device, torch.float32) / 127.5 - 1.0

    def mask_to_image(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) mask, non-zero = foreground -> (N, 3, H, W) image, -1 background / +1 foreground."""
        m = (torch.as_tensor(masks).to(self.device) > 0).to(torch.float32) * 2.0 - 1.0
        return m[:, None].expand(-1, 3, -1, -1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """VAE-encode (N, 3, H, W) images in [-1, 1] to scaled latents (N, C, H/f, W/f), in one
        VAE call. ``sample=True`` draws from the posterior (training); False takes its mean.

        The mean is read straight from the encoder's moments (what ``latent_dist.mean`` holds,
        bit for bit), without building the distribution (its std and variance are never used).
        """
        images = images.to(self.vae.dtype)
        if sample:
            z = self.vae.encode(images).latent_dist.sample()
        else:
            moments = self.vae._encode(images)  # encoder (+ quant_conv), with diffusers' tiling
            z = moments[:, : self.vae.config.latent_channels]
        # contiguous whatever the VAE's memory format, so that the UNet sees one layout (and
        # computes the same bits) however the latents were batched, cached or sliced
        return (z * self.latent_scale).contiguous()

    def support_latents(self, images: torch.Tensor, masks: torch.Tensor,
                        image_latents: Optional[torch.Tensor] = None,
                        use_cache: bool = True) -> torch.Tensor:
        """Posterior-mean support latents, image latent then mask latent: (N, 2C, h, w).

        Each image and each mask is VAE-encoded in its own call (as the reference does), so a
        support's latent never depends on which other supports are encoded with it: a SupportSet
        built one support at a time equals one built at once, and the latent cache changes no bit.

        Args:
            images: (N, 3, H, W) in [0, 255]; ignored where ``image_latents`` is given.
            masks: (N, H, W), non-zero = foreground.
            image_latents: optional (N, C, h, w) image latents already computed (e.g. a video
                frame encoded as a query), so that only the masks are encoded.
            use_cache: look the supports up in the model's ``SupportLatentCache`` (episodes of a
                benchmark); the predictor keeps whole SupportSets instead and passes False.
        """
        def encode_all(imgs, ms, lat=None):
            out = []
            for i in range(len(ms)):
                z_img = (lat[i:i + 1].to(self.device) if lat is not None
                         else self.encode(self.normalize(imgs[i:i + 1]), sample=False))
                z_mask = self.encode(self.mask_to_image(ms[i:i + 1]), sample=False)
                out.append(torch.cat([z_img, z_mask], dim=1))
            return torch.cat(out)

        if self.support_cache is None or image_latents is not None or not use_cache:
            return encode_all(images, masks, image_latents)
        return self.support_cache.encode(list(images), [torch.as_tensor(m) for m in masks],
                                         encode_all)

    def support_pass(self, latents: torch.Tensor, prompt: torch.Tensor, signature=None, info=None,
                     stop_early: bool = False):
        """Run the UNet on support latents (N, 2C, h, w), each attending to itself only.

        Args:
            stop_early: stop right after the last fused self-attention layer has stored its
                keys/values (inference: the rest of the UNet only computes the support pass's
                output, which the method never uses); the output is then None.
        Returns:
            (SupportSet of the N supports, UNet output (N, C, h, w) or None).
        """
        bank = KVBank(stop_after=self.fused_layers[-1] if stop_early else None)
        try:
            out = self._unet(latents, prompt, bank)
        except SupportPassDone:
            out = None
        return bank.to_support_set(latents, signature, info), out

    @torch.no_grad()
    def encode_supports(self, images: Optional[torch.Tensor], masks: torch.Tensor,
                        image_latents: Optional[torch.Tensor] = None, signature=None,
                        info=None, use_cache: bool = True) -> SupportSet:
        """Inference: supports at the working size -> ``SupportSet``.

        Args:
            images: (N, 3, S, S) support images in [0, 255] (None if ``image_latents`` given).
            masks: (N, S, S) support masks, non-zero = foreground.
            image_latents: optional (N, C, s, s) precomputed image latents (``support_latents``).
            signature: the model signature to stamp on the set (``support_signature()``).
            info: per-support dicts kept in the set.
            use_cache: see ``support_latents``.
        Returns:
            the N supports' SupportSet. Latents never depend on the other supports (one VAE call
            each); the support pass runs ``support_pass_batch`` supports at a time (the
            reference runs all K of an episode at once), so keys/values of a support encoded
            alone differ from those encoded with others by float rounding only (about 1e-6).
        """
        latents = self.support_latents(images, masks, image_latents, use_cache)
        n = self.support_pass_batch
        sets = [self.support_pass(latents[i:i + n], self.prompt_embeds_test, stop_early=True)[0]
                for i in range(0, len(latents), n)]
        out = SupportSet.cat(sets)
        return SupportSet(out.latents, out.keys, out.values, signature, info)

    def query_pass(self, query_latents: torch.Tensor,
                   supports: Union[SupportSet, Sequence[SupportSet]], prompt: torch.Tensor
                   ) -> torch.Tensor:
        """The query pass: every fused self-attention attends to [own ; supports' K/V].

        Args:
            query_latents: (B, C, h, w) query image latents.
            supports: one SupportSet shared by all B queries, or a list of B SupportSets with the
                same K (one per query).
            prompt: (1, T, D) empty-prompt embedding.
        Returns:
            (B, C, h, w): the UNet output, read as minus the query-mask latent.
        """
        return self._unet(query_latents, prompt, KVBank(supports))

    def _unet(self, latents, prompt, bank: KVBank) -> torch.Tensor:
        n = latents.shape[0]
        t = torch.full((n,), self.timestep, device=latents.device, dtype=torch.long)
        context = prompt.to(self.inference_dtype).expand(n, -1, -1)
        return self.unet(latents.to(self.inference_dtype), t, encoder_hidden_states=context,
                         cross_attention_kwargs={"kv_bank": bank}).sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (N, 3, H, W) uint8 prediction, exactly as the reference maps it:
        clip to [-1, 1], to [0, 255], truncate (not round) to uint8."""
        image = self.vae.decode(latents.to(self.vae.dtype) / self.latent_scale).sample
        image = (image.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0
        return image.clamp(0, 255).to(torch.uint8)

    def threshold(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) or (N, 3, H, W) uint8 prediction -> bool mask (``readout.relative_threshold``
        with REL_THRESHOLD / ABS_THRESHOLD)."""
        return relative_threshold(image, self.rel_threshold, self.abs_threshold)

    score = staticmethod(prediction_score)

    def postprocess(self, images: torch.Tensor) -> List[Dict]:
        """(N, 3, H, W) decoded predictions -> per image {"pred_image", "pred_mask", "score"}."""
        masks = self.threshold(images)
        scores = self.score(images, masks)
        return [{"pred_image": img, "pred_mask": m, "score": s}
                for img, m, s in zip(images, masks, scores)]

    def support_signature(self) -> Dict:
        """What a SupportSet must have been encoded with to be used by this model
        (``support_set.model_signature``)."""
        return model_signature(self)
