# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The SINE meta-architecture (arXiv 2410.04842, aim-uofa/SINE at 9ff576c; docs/SINE.md).

A frozen DINOv2 ViT and a neck encode every image (``encode``); the supports' features are
pooled under their masks into ID and class queries (``encode_support_set`` / ``pooling.py``,
kept in a ``SINESupportSet``); the Matching Transformer decodes a target from those queries
(``decode``); one readout per task turns its output into a semantic map (FSS), instances (FSIS)
or object masks (VOS) (``inference.py``). ``forward`` runs FSS benchmark episodes in DiffewS's
episode schema at inference, and returns the training loss of in-context samples in training
mode (``training.py``). Pre-processing per task is in ``preprocess.py``.

Parameter names are the released training model's (``image_encoder.encoder.*``,
``image_encoder.neck.*``, ``transformer_decoder.*``), so its state dict loads as it is
(``weights.py``).
"""

import hashlib
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from . import preprocess as P
from .build_criterion import build_sine_criterion
from .decoder import MatchingTransformer
from .encoder import DINOv2Encoder, build_dinov2
from .inference import fss_sem_seg
from .pooling import pool_fsis, pool_fss, pool_vos
from .support_set import SINESupportSet
from .training import training_losses

logger = logging.getLogger(__name__)

__all__ = ["SINE"]


@META_ARCH_REGISTRY.register()
class SINE(nn.Module):
    """Frozen DINOv2 + neck + Matching Transformer (inference and training: see ``forward``)."""

    @configurable
    def __init__(self, *, image_encoder: DINOv2Encoder, transformer_decoder: MatchingTransformer,
                 encoder_arch: str, image_size: int = 518, pad_size: int = 896,
                 score_threshold: float = 0.7, use_id_query: bool = True,
                 criterion: Optional[nn.Module] = None, encoder_weights: str = ""):
        """
        Args:
            image_encoder: DINOv2 and neck (``encoder.DINOv2Encoder``).
            transformer_decoder: the Matching Transformer (``decoder.MatchingTransformer``).
            encoder_arch: the ViT's arch name (``MODEL.SINE.ENCODER.ARCH``), for signatures.
            image_size: FSS square working size (``MODEL.SINE.IMAGE_SIZE``).
            pad_size: images are zero-padded to pad_size^2 (``MODEL.SINE.PAD_SIZE``, a
                multiple of 14).
            score_threshold: FSS foreground = sem_seg > it (``MODEL.SINE.SCORE_THRESHOLD``).
            use_id_query: decode with the supports' ID queries (False for FSIS).
            criterion: the training loss (``build_sine_criterion``; None: inference only). Its
                ``empty_weight`` buffer is the released file's ``criterion.empty_weight``.
            encoder_weights: where the frozen DINOv2 weights came from
                (``MODEL.SINE.ENCODER.WEIGHTS``; "" = random or loaded later). Training
                checkpoints leave the encoder out and name this source instead
                (``engine/sine_checkpoint.py``); ``weights.load_sine_weights`` clears it when a
                file replaces the encoder with other weights.
        """
        super().__init__()
        self.image_encoder = image_encoder
        self.transformer_decoder = transformer_decoder
        self.encoder_arch = encoder_arch
        if pad_size % image_encoder.patch_size:
            raise ValueError(f"MODEL.SINE.PAD_SIZE {pad_size} is not a multiple of the patch "
                             f"size {image_encoder.patch_size}")
        self.image_size, self.pad_size = int(image_size), int(pad_size)
        self.score_threshold = float(score_threshold)
        self.use_id_query = bool(use_id_query)
        self.criterion = criterion
        self.encoder_weights = encoder_weights
        # ImageNet mean/std on [0, 1] values, applied after the /255 as torchvision's Normalize
        # in the original (tools/eval_fss.py l.37-40); not part of the state dict
        self.register_buffer("pixel_mean", torch.tensor(P.IMAGENET_MEAN).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(P.IMAGENET_STD).view(3, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s = cfg.MODEL.SINE
        vit = build_dinov2(s.ENCODER.ARCH, s.ENCODER.EMBED_DIM, s.ENCODER.DEPTH,
                           s.ENCODER.NUM_HEADS)
        if s.ENCODER.WEIGHTS:  # as the original's build_model (inference_fss/model/model.py l.174)
            from .weights import load_encoder_weights

            load_encoder_weights(vit, s.ENCODER.WEIGHTS)
        d = s.DECODER
        return {
            "image_encoder": DINOv2Encoder(vit.eval(), s.FEAT_CHANS, s.ENCODER_USE_FC),
            "transformer_decoder": MatchingTransformer(
                s.FEAT_CHANS, d.DEPTH, d.NHEADS, d.MLP_DIM, d.MASK_DIM, d.FUSION_DEPTH,
                d.NUM_QUERIES, d.PRE_NORM),
            "encoder_arch": s.ENCODER.ARCH,
            "image_size": s.IMAGE_SIZE,
            "pad_size": s.PAD_SIZE,
            "score_threshold": s.SCORE_THRESHOLD,
            "use_id_query": s.USE_ID_QUERY,
            "criterion": build_sine_criterion(cfg, d.DEPTH),
            "encoder_weights": s.ENCODER.WEIGHTS,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_encoder.encoder.eval()  # frozen
        return self

    # -- building blocks ----------------------------------------------------------------------
    def prepare(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(3, h, w) float images in [0, 1] (each at most pad_size) -> (B, 3, P, P) normalised,
        zero-padded bottom/right, on the model's device."""
        return torch.stack([P.pad(P.normalize(torch.as_tensor(x).to(self.device, torch.float32),
                                              self.pixel_mean, self.pixel_std), self.pad_size)
                            for x in images])

    def encode(self, pixels: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
        """(B, 3, P, P) normalised padded images -> (B, C, P/14, P/14) neck features, in
        chunks of ``batch_size`` images (0: all at once)."""
        step = batch_size or max(len(pixels), 1)
        return torch.cat([self.image_encoder(pixels[i:i + step])
                          for i in range(0, len(pixels), step)])

    def pad_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(n, h, w) {0, 1} masks -> (n, P, P) float zero-padded, on the model's device."""
        return P.pad(torch.as_tensor(masks).to(self.device, torch.float32), self.pad_size)

    def support_signature(self) -> Dict:
        """What a ``SINESupportSet`` depends on: the encoder's shape, the neck width, the padded
        size and a fingerprint of the encoder and neck weights."""
        vit = self.image_encoder.encoder
        return {"encoder": {"arch": self.encoder_arch, "embed_dim": int(vit.embed_dim),
                            "depth": len(vit.blocks),
                            "num_heads": int(vit.blocks[0].attn.num_heads)},
                "feat_chans": int(self.transformer_decoder.dim), "pad_size": self.pad_size,
                "weights": self.weights_fingerprint()}

    @torch.no_grad()
    def weights_fingerprint(self) -> str:
        """A short hash of the patch embedding, the first block's layer scale, the final norm
        and the neck: differs between DINOv2 sizes, releases and trainings."""
        vit = self.image_encoder.encoder
        tensors = [vit.patch_embed.proj.weight, vit.blocks[0].ls1.gamma, vit.norm.weight,
                   *self.image_encoder.neck.parameters()]
        h = hashlib.sha1()
        for t in tensors:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode_support_set(self, rule: str, features: Sequence[torch.Tensor],
                           masks: Sequence[torch.Tensor], label: int = 0,
                           info: Optional[List[Dict]] = None,
                           labels: Optional[Sequence[int]] = None,
                           signature: bool = True) -> SINESupportSet:
        """Pool supports into a ``SINESupportSet`` by one task's rule (``pooling.py``).

        Args:
            rule: "fss" (one class, one instance per support image), "fsis" (one class, any
                number of instances per image) or "vos" (every object of a frame's memory).
            features: per support image (VOS: per reference frame), (C, h, w) neck features
                (``encode``).
            masks: per support image, (n_i, P, P) padded masks ("fss", "vos": n_i = 1).
            label: the class id of the set ("fss", "fsis").
            info: one dict per ID query, kept in the set.
            labels: "vos": the object id of each reference.
            signature: attach ``support_signature()`` (False for transient sets).
        Returns:
            the set; "vos" sets hold one query per object (ids ascending) as both its ID and its
            class query, and are pooled again each frame (not merged with ``cat``).
        """
        masks = [m.reshape(-1, *m.shape[-2:]) for m in masks]
        sig = self.support_signature() if signature else None
        if rule == "vos":
            if labels is None or len(labels) != len(features):
                raise ValueError("encode_support_set('vos'): one object id per reference needed")
            objects, queries = pool_vos(torch.stack(list(features)), torch.cat(masks),
                                        torch.as_tensor(list(labels), dtype=torch.int64))
            return SINESupportSet(queries, objects, queries, objects, queries,
                                  torch.ones(len(objects)), "vos", sig, info)
        if rule == "fss":
            ids, cls, sums, area = pool_fss(torch.stack(list(features)), torch.cat(masks))
        elif rule == "fsis":
            ids, cls, sums, area = pool_fsis(features, masks)
        else:
            raise ValueError(f"encode_support_set: rule {rule!r} is not 'fss', 'fsis' or 'vos'")
        return SINESupportSet(ids, torch.full((len(ids),), label, dtype=torch.int64),
                              cls, torch.tensor([label]), sums[None], area.reshape(1),
                              rule, sig, info)

    def decode(self, target: torch.Tensor, support_set: SINESupportSet,
               use_id_query: Optional[bool] = None) -> Dict:
        """Matching Transformer on one target (``decoder.MatchingTransformer.forward``).

        Args:
            target: (1, C, h, w) neck features of the padded target.
            support_set: pooled queries; class columns of the output follow its
                ``class_labels``.
            use_id_query: decode with its ID queries (None: the model's setting).
        Returns:
            the decoder's output dict: "pred_ins_logits" (1, Q, M+1), "pred_ins_masks"
            (1, Q, 4h, 4w), "pred_id_logits" (1, N, 2), "pred_id_masks" (1, N, 4h, 4w) (N = 0
            without ID queries), "aux_outputs" (``inference.py`` reads them).
        """
        use_id = self.use_id_query if use_id_query is None else use_id_query
        ids = support_set.id_queries.to(target)
        if not use_id:
            ids = ids[:0]
        classes = support_set.class_queries.to(target)
        return self.transformer_decoder(target, ids[None], classes[None])

    # -- FSS benchmark episodes -----------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """FSS episodes at the working size, in DiffewS's episode schema (inference), or the
        training loss of in-context samples (training mode, ``training.training_losses``).

        Args:
            batched_inputs: a list of episodes, each a dict with
                * "image": (3, S, S) uint8 or float tensor, the query image, RGB in [0, 255],
                  already resized to S = MODEL.SINE.IMAGE_SIZE (``preprocess.fss_image``).
                * "support_images": (K, 3, S, S) the K support images, same convention.
                * "support_masks": (K, S, S) the support masks, non-zero = foreground
                  (``preprocess.fss_mask``).
            In training mode: in-context samples ``{"ref_dict", "tar_dict"}`` (schema in
            ``diffews/data/incontext/source.py``; images already normalised and padded).
        Returns:
            In training mode, ``{loss name: weighted scalar}`` (``training.py``). At
            inference, per episode a dict with
                * "pred_mask": (S, S) bool, ``sem_seg > SCORE_THRESHOLD`` (strict, as
                  tools/eval_fss.py l.107-109).
                * "sem_seg": (S, S) float, the semantic map (a sum over queries; can exceed 1).
                * "score": scalar tensor in [0, 1], the prediction's confidence: the largest
                  class probability (softmax over class + "no object") among the instance
                  queries, i.e. how sure the best-matching query is that it shows the class.
        """
        if self.training:
            return training_losses(self, batched_inputs)
        return [self._episode(x, i) for i, x in enumerate(batched_inputs)]

    @torch.no_grad()
    def _episode(self, x: Dict, index: int) -> Dict:
        s = self.image_size
        query = torch.as_tensor(x["image"])
        supports = torch.as_tensor(x["support_images"])
        masks = torch.as_tensor(x["support_masks"])
        k = len(supports)
        if k == 0 or len(masks) != k:
            raise ValueError(f"episode {index}: {k} support images and {len(masks)} support "
                             "masks; an episode needs at least one support, one mask per image")
        for name, t in (("image", query), ("support_images", supports),
                        ("support_masks", masks)):
            if tuple(t.shape[-2:]) != (s, s):
                raise ValueError(f"episode {index}: {name} is {tuple(t.shape[-2:])}, SINE's FSS "
                                 f"works at MODEL.SINE.IMAGE_SIZE {s}x{s}: set INPUT.IMAGE_SIZE "
                                 f"{s} (or resize with diffews.modeling.sine.preprocess.fss_image)")
        pixels = self.prepare([P.to_unit(t) for t in [query, *supports]])
        features = self.encode(pixels)
        support_set = self.encode_support_set(
            "fss", features[1:], self.pad_masks((masks != 0).float())[:, None], signature=False)
        out = self.decode(features[:1], support_set)
        sem = fss_sem_seg(out, pixels.shape[-2:], (s, s), (s, s))[0]
        probs = torch.softmax(out["pred_ins_logits"][0], dim=-1)[:, 0]
        return {"pred_mask": sem > self.score_threshold, "sem_seg": sem,
                "score": probs.max()}
