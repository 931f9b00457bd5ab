# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The method's building blocks, shared by ``DiffewS.forward``, ``DiffewSPredictor``, video object
segmentation and instance segmentation: normalising, VAE encoding, the support pass (a
``SupportSet``), the query pass, decoding and the mask readout (docs/METHOD.md sections 1-3).

``DiffewSBlocks`` is a mixin of ``DiffewS`` (``meta_arch/diffews.py``): it uses the attributes that
``DiffewS.__init__`` sets (``unet``, ``vae``, ``latent_scale``, ``timestep``, ``fused_layers``,
``support_cache``, ``support_pass_batch``, ``inference_dtype``, thresholds).

Inference backend (``MODEL.DIFFEWS.BACKEND``): with one attached (``use_backend``, done by
``checkpoint.load_inference_weights``), ``encode`` (posterior mean), the support pass stopped
early, the query pass and ``decode`` run its ONNX graphs; training, posterior sampling and
``query_pass_measured`` (the presence signals are measured inside torch's fused layers) stay torch.
"""

from typing import Dict, Optional, Sequence, Union

import torch

from ..kv_fusion import KVBank, SupportPassDone
from ..readout import prediction_score, relative_threshold
from ..support_set import SupportSet, model_signature
from .presence import PresenceBlocks


__all__ = ["DiffewSBlocks"]


class DiffewSBlocks(PresenceBlocks):
    """Encode, support pass, query pass, decode, readout: the one implementation of the method
    (the presence signals, readout and decision: ``PresenceBlocks``, ``presence.py``)."""

    # the attached inference backend (an ``onnx.attach.OnnxBackends``), None: torch
    inference_backend = None

    def use_backend(self, backends) -> None:
        """Run inference's encode, support pass, query pass and decode through ``backends``
        (``modeling.onnx.backend_from_config``); None runs them in torch."""
        self.inference_backend = backends

    def _backend(self, height: int, width: int, latent: bool = False, part: str = None):
        """The attached backend for ``part`` ("encode", "decode", "support_pass", "query_pass")
        on inputs of (height, width) pixels (latents with ``latent``), or None (run torch): none
        attached, training, a non-square size (the exports are square; another square size is
        exported on first use), or ``BACKEND auto`` chose torch for that part."""
        backends = self.inference_backend
        if backends is None or self.training or height != width:
            return None
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if latent else 1
        return backends.get(self, int(height) * factor, part)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 255] -> [-1, 1] (ToTensor then Normalize(0.5, 0.5) in the reference)."""
        return images.to(self.device, torch.float32) / 127.5 - 1.0

    def mask_to_image(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) mask, non-zero = foreground -> (N, 3, H, W) image, -1 background / +1
        foreground."""
        m = (torch.as_tensor(masks).to(self.device) > 0).to(torch.float32) * 2.0 - 1.0
        return m[:, None].expand(-1, 3, -1, -1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """VAE-encode (N, 3, H, W) images in [-1, 1] to scaled latents (N, C, H/f, W/f), in one
        VAE call. ``sample=True`` draws from the posterior (training); False takes its mean.

        The mean is read straight from the encoder's moments (what ``latent_dist.mean`` holds,
        bit for bit), without building the distribution (its std and variance are never used).
        """
        backend = None if sample else self._backend(*images.shape[-2:], part="encode")
        if backend is not None:
            return backend.encode(images).to(self.device)
        images = images.to(self.vae.dtype)
        if sample:
            z = self.vae.encode(images).latent_dist.sample()
        else:
            moments = self.vae._encode(images)  # encoder (+ quant_conv), with diffusers' tiling
            z = moments[:, : self.vae.config.latent_channels]
        # contiguous whatever the VAE's memory format, so that the UNet sees one layout (and
        # computes the same bits) however the latents were batched, cached or sliced; in the
        # UNet's dtype (INFERENCE_DTYPE bfloat16_vae: a bf16 VAE beside an fp32 UNet)
        return (z * self.latent_scale).to(self.inference_dtype).contiguous()

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
        backend = (self._backend(*latents.shape[-2:], latent=True, part="support_pass")
                   if stop_early and prompt is self.prompt_embeds_test else None)
        if backend is not None:
            return backend.support_pass(latents, signature, info).to(self.device), None
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
        backend = (self._backend(*query_latents.shape[-2:], latent=True, part="query_pass")
                   if prompt is self.prompt_embeds_test else None)
        if backend is not None:  # the empty prompt and the timestep are baked into its graph
            return backend.query_pass(query_latents, supports).to(self.device)
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
        backend = self._backend(*latents.shape[-2:], latent=True, part="decode")
        if backend is not None:
            return backend.decode(latents).to(self.device)
        image = self.vae.decode(latents.to(self.vae.dtype) / self.latent_scale).sample
        image = (image.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0
        return image.clamp(0, 255).to(torch.uint8)

    def threshold(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) or (N, 3, H, W) uint8 prediction -> bool mask (``readout.relative_threshold``
        with REL_THRESHOLD / ABS_THRESHOLD)."""
        return relative_threshold(image, self.rel_threshold, self.abs_threshold)

    score = staticmethod(prediction_score)

    def support_signature(self) -> Dict:
        """What a SupportSet must have been encoded with to be used by this model
        (``support_set.model_signature``)."""
        return model_signature(self)
