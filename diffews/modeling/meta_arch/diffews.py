# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DiffewS meta-architecture: few-shot segmentation with one step of a Stable Diffusion UNet.

docs/METHOD.md sections 0-5. Per episode: the supports' image and mask latents go through the UNet
once (support pass), which yields a ``SupportSet`` (their keys/values in every self-attention
layer); the query image latent goes through it once more (query pass), every self-attention
attending to its own and the supports' keys/values. The output, negated, is the VAE latent of the
query mask, which the VAE decodes and a relative threshold binarises.

The building blocks (``encode_supports``, ``encode``, ``query_pass``, ``decode``, ``postprocess``,
in ``building_blocks.py``) are the one implementation of the method: ``forward`` (training and
benchmarks), ``DiffewSPredictor``, video object segmentation and instance segmentation all call
them.
"""

import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..kv_fusion import fused_layer_names, set_kv_fusion_processors
from ..presence_head import PresenceHead, head_in_weights, pooled_layers
from ..speed import (compile_for_inference, is_float32, set_inference_dtype,
                     warn_if_bf16_emulated)
from ..support_cache import SupportLatentCache
from ..unet import load_pretrained_unet
from ..vae import encode_empty_prompt, load_frozen_vae
from .building_blocks import DiffewSBlocks

logger = logging.getLogger(__name__)

__all__ = ["DiffewS"]


@META_ARCH_REGISTRY.register()
class DiffewS(DiffewSBlocks, nn.Module):
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
        presence_signal: str = "score",
        presence_threshold: float = -1.0,
        presence_from_weights: bool = True,
        presence_head: Optional[nn.Module] = None,
        presence_loss_weight: float = 1.0,
        absent_mask_loss: bool = True,
        train_head_only: bool = False,
    ):
        """
        Args:
            unet: diffusers ``UNet2DConditionModel`` with a support input conv
                (``modeling.unet.add_support_conv``); KV-fusion processors are installed here.
            vae: diffusers ``AutoencoderKL``; frozen.
            prompt_embeds_train: (1, T_train, D) text-encoder output of the empty prompt used in
                training (77 tokens for SD 2.1, docs/METHOD.md section 1.6).
            prompt_embeds_test: (1, T_test, D) the same for inference (2 tokens: BOS, EOS).
            timestep: diffusion timestep of both UNet passes.
            rel_threshold: mask = mean_RGB(pred) > rel_threshold * max(pred), pred in [0, 1].
            abs_threshold: if > 0, mask = mean_RGB(pred) > abs_threshold instead.
            support_cache_size: supports whose latents ``forward`` keeps for later episodes
                (``SupportLatentCache``; results are identical with or without it); 0 disables.
            inference_dtype: "float32", "float16" or "bfloat16" weights for inference, or
                "bfloat16_vae" (the VAE only)
                (``modeling/speed.py``).
            compile: ``torch.compile`` the VAE encoder and decoder for inference (``speed.py``).
            support_pass_batch: supports per support-pass call at inference (1: each alone).
            vae_channels_last: keep the VAE's weights in channels-last memory format (faster
                convolutions on CPUs; the same function up to float rounding).
            presence_signal, presence_threshold, presence_from_weights: the presence decision
                (``presence.py``; MODEL.DIFFEWS.PRESENCE_*).
            presence_head: a ``PresenceHead`` (MODEL.DIFFEWS.PRESENCE_HEAD), or None.
            presence_loss_weight: weight of its binary cross-entropy in training.
            absent_mask_loss: absent-target training episodes also train the UNet towards the
                empty mask's latent (False: they train the presence head only).
            train_head_only: freeze the UNet; training updates the presence head only.
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
        self.support_cache = (
            SupportLatentCache(support_cache_size) if support_cache_size > 0 else None
        )
        self.latent_scale = float(vae.config.scaling_factor)
        # the VAE halves the resolution in every block but the last, the UNet in every down block
        # but the last: inputs must be multiples of both
        self.size_divisibility = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (
            len(unet.config.block_out_channels) - 1
        )
        if support_pass_batch < 1:
            raise ValueError(
                f"MODEL.DIFFEWS.SUPPORT_PASS_BATCH must be >= 1, got {support_pass_batch}"
            )
        self.support_pass_batch = int(support_pass_batch)
        if vae_channels_last:
            self.vae.to(memory_format=torch.channels_last)
        self.inference_dtype, self.compiled = torch.float32, False
        set_inference_dtype(self, inference_dtype)
        if compile:
            compile_for_inference(self)
        self.presence_head = presence_head
        self.head_pooled = pooled_layers(self.fused_layers) if presence_head is not None else []
        self.presence_loss_weight = float(presence_loss_weight)
        self.absent_mask_loss = bool(absent_mask_loss)
        if train_head_only:
            if presence_head is None:
                raise ValueError("MODEL.DIFFEWS.PRESENCE_HEAD.TRAIN_ONLY needs "
                                 "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED")
            self.unet.requires_grad_(False)
        self.train_head_only = bool(train_head_only)
        self.presence_from_weights = bool(presence_from_weights)
        self.set_presence(presence_signal, presence_threshold)  # presence.py: readout

    @classmethod
    def from_config(cls, cfg):
        pretrained = cfg.MODEL.DIFFEWS.PRETRAINED
        if not pretrained:
            raise ValueError(
                "MODEL.DIFFEWS.PRETRAINED is empty: set it to a local Stable Diffusion folder in "
                "diffusers layout (unet/ vae/ text_encoder/ tokenizer/); see TRAINING.md"
            )
        warn_if_bf16_emulated(cfg.MODEL.DIFFEWS.INFERENCE_DTYPE, cfg.MODEL.DEVICE)
        unet = load_pretrained_unet(pretrained)
        if cfg.MODEL.DIFFEWS.GRADIENT_CHECKPOINTING:
            unet.enable_gradient_checkpointing()
        train_embeds, test_embeds = encode_empty_prompt(
            pretrained, pad_in_training=cfg.MODEL.DIFFEWS.PAD_PROMPT_IN_TRAINING
        )
        head = cfg.MODEL.DIFFEWS.PRESENCE_HEAD
        # weights trained with a head bring it, of their shape
        stored = head_in_weights(cfg.MODEL.WEIGHTS)
        shape = ({"hidden": int(stored["hidden"]), "prototype": bool(stored.get("prototype"))}
                 if stored else {"hidden": head.HIDDEN, "prototype": head.PROTOTYPE})
        presence_head = build_presence_head(unet, **shape) if head.ENABLED or stored else None
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
            "presence_signal": cfg.MODEL.DIFFEWS.PRESENCE_SIGNAL,
            "presence_threshold": cfg.MODEL.DIFFEWS.PRESENCE_THRESHOLD,
            "presence_from_weights": cfg.MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS,
            "presence_head": presence_head,
            "presence_loss_weight": head.LOSS_WEIGHT,
            "absent_mask_loss": cfg.MODEL.DIFFEWS.ABSENT_MASK_LOSS,
            "train_head_only": head.TRAIN_ONLY,
        }

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds_test.device

    def train(self, mode: bool = True):
        if mode and (not is_float32(self) or self.compiled):
            raise ValueError(
                "MODEL.DIFFEWS.INFERENCE_DTYPE and MODEL.DIFFEWS.COMPILE are inference "
                "settings; training runs in float32 eager mode with SOLVER.AMP"
            )
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
                * "image": (3, H, W) uint8 or float tensor, the query image, RGB in [0, 255],
                  already resized to the working size (INPUT.IMAGE_SIZE).
                * "support_images": (K, 3, H, W) the K support images, same convention and size.
                * "support_masks": (K, H, W) the support masks, non-zero = foreground.
                * "sem_seg": (H, W) the query mask (training only): 1 = foreground, 0 = background,
                  255 = ignore (counted as background for the target image).
                * "class_id": int, the episode's class (carried along, unused by the model).
                Episodes may have different K; those with equal K are batched together.
        Returns:
            In training, a dict of losses ``{"loss_mask_latent": scalar}`` (and
            ``"loss_presence"`` with a presence head). In inference, a list of dicts, one per
            episode, with
                * "pred_mask": (H, W) bool, the predicted query mask at the working size.
                * "pred_image": (3, H, W) uint8, the decoded RGB prediction before thresholding.
                * "score": scalar tensor in [0, 1], the prediction's confidence (``postprocess``).
                * "presence", "present", "signals": the presence readout (``presence.py``).
        """
        groups: Dict[int, List[int]] = {}
        for i, x in enumerate(batched_inputs):
            groups.setdefault(self._num_shots(x, i), []).append(i)
        if self.training:
            totals, count = {}, 0
            for shots, idx in groups.items():
                for name, loss in self.losses([batched_inputs[i] for i in idx], shots).items():
                    totals[name] = totals.get(name, 0.0) + loss * len(idx)
                count += len(idx)
            return {name: total / count for name, total in totals.items()}
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
                f"image size {tuple(size)} is not a multiple of {self.size_divisibility} "
                "(VAE x UNet downsampling); change INPUT.IMAGE_SIZE"
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

    def losses(self, batched_inputs: List[Dict], shots: int) -> Dict[str, torch.Tensor]:
        """Latent MSE between the output and minus the VAE-sampled query-mask latent
        (docs/METHOD.md section 4): ``{"loss_mask_latent"}``, plus ``"loss_presence"`` (binary
        cross-entropy of the presence head, target: the query's mask is not empty) for a model
        with a head.

        Every latent is a posterior *sample* (the reference's ``latent_dist.sample()``), and the
        support pass runs on all B*K supports at once, inside the autograd graph. An
        absent-target episode (empty query mask) has the empty mask's latent as its target, or
        no mask loss with ``absent_mask_loss`` False.
        """
        query, supports, masks = self._stack(batched_inputs)
        target_mask = torch.stack([(torch.as_tensor(x["sem_seg"]) == 1) for x in batched_inputs])
        z_query = self.encode(self.normalize(query), sample=True)
        z_support = torch.cat([self.encode(self.normalize(supports), sample=True),
                               self.encode(self.mask_to_image(masks), sample=True)], dim=1)
        z_target = self.encode(self.mask_to_image(target_mask), sample=True)
        support_set, support_out = self.support_pass(z_support, self.prompt_embeds_train)
        rows = [support_set[i * shots:(i + 1) * shots] for i in range(len(batched_inputs))]
        if self.presence_head is None:
            pred = self.query_pass(z_query, rows, self.prompt_embeds_train)
        else:
            pred, probe = self.query_pass_probed(z_query, rows, self.prompt_embeds_train)
        # the support output is unused, but keeping it in the graph lets DDP see every parameter
        # used (the reference adds ``support_out * 0``; the batch sizes differ here for K > 1)
        pred = pred + support_out.mean() * 0.0
        present = target_mask.flatten(1).any(dim=1).to(self.device)
        if self.absent_mask_loss:
            out = {"loss_mask_latent": F.mse_loss(pred.float(), (-z_target).float(),
                                                  reduction="mean")}
        else:  # absent-target episodes train the head only
            per = ((pred.float() + z_target.float()) ** 2).mean(dim=(1, 2, 3))
            w = present.float()
            out = {"loss_mask_latent": (per * w).sum() / w.sum().clamp(min=1.0)}
        if self.presence_head is not None:
            logits = self.presence_logits(probe).float()
            out["loss_presence"] = self.presence_loss_weight * F.binary_cross_entropy_with_logits(
                logits, present.float())
        return out

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """One-step prediction of episodes with equal K (docs/METHOD.md section 3): each episode's
        supports become a SupportSet (``encode_supports``), then one query pass for the whole
        batch."""
        query, _, _ = self._stack(batched_inputs)
        sets = [self.encode_supports(x["support_images"], x["support_masks"])
                for x in batched_inputs]
        z_query = self.encode(self.normalize(query), sample=False)
        if self.needs_measure:  # a presence signal measured in this pass (presence.py)
            pred, measured = self.query_pass_measured(z_query, sets, self.prompt_embeds_test)
            return self.postprocess(self.decode(-pred), measured)
        pred = self.query_pass(z_query, sets, self.prompt_embeds_test)
        return self.postprocess(self.decode(-pred))


def build_presence_head(unet: nn.Module, hidden: int, prototype: bool = False) -> PresenceHead:
    """A ``PresenceHead`` sized for ``unet``'s fused layers and its mid-block attention width."""
    fused = fused_layer_names(unet)
    pooled = sum(unet.get_submodule(n).to_out[0].out_features for n in pooled_layers(fused))
    return PresenceHead(len(fused), pooled, hidden, prototype)
