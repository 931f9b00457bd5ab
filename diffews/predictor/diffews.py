# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``DiffewSPredictor``: encode supports once, segment any number of queries.

In the spirit of segment-anything's ``SamPredictor``: a stateful object outside the ``nn.Module``
that loads the model once (eval mode) and calls the model's own building blocks
(``DiffewS.encode_supports``, ``encode``, ``query_pass``, ``decode``, ``postprocess``), so that it
computes exactly what ``DiffewS.forward`` computes on the same episode::

    predictor = DiffewSPredictor.from_pretrained("weight/stable-diffusion-2-1-ref8inchannels-"
                                                 "tag4inchannels", "weight/coco_fold0")
    supports = predictor.encode_supports(["dog1.jpg", "dog2.jpg"], ["dog1.png", "dog2.png"])
    for r in predictor.predict(["a.jpg", "b.jpg"], supports):
        print(r["score"], r["mask"].shape)

Images are resized as the benchmarks resize them: to the square working size with PIL bilinear
(aspect ratio ignored), masks with nearest (``F.interpolate``); predicted masks are resized back to
each query's original size with nearest.
"""

import logging
import os
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..modeling.support_set import SupportSet
from ..utils.errors import SupportSetError, UsageError
from ..utils.image import ImageReadError, as_mask, as_rgb, resize_image, resize_mask
from ..utils.inputs import EncodedImage
from ..utils.inputs import as_list as _as_list
from ..utils.inputs import chunks as _chunks
from ..utils.inputs import chunks_iter as _chunks_iter
from ..utils.inputs import input_name as _name
from .base import Predictor
from .diffews_video import DiffewSVideoTracker
from .instances import CLASS_SCORES, MODES, predictions_to_instances
from .masks import is_annotations, union_mask

logger = logging.getLogger(__name__)

__all__ = ["DiffewSPredictor"]


class DiffewSPredictor(Predictor):
    """Few-shot segmentation with supports encoded once (the ``Predictor`` of DiffewS).

    Args:
        model: a built ``DiffewS`` with its weights loaded (``from_config``/``from_pretrained``
            build and load it); it is put in eval mode.
        cfg: the config it was built from (``load_weights`` reloads through it).
        image_size: square working size S (INPUT.IMAGE_SIZE; 512 for the released weights).
        instances: how ``predict_instances`` turns a class's mask into instances
            (``TEST.FSOD``: "mode" INSTANCE_MODE, "min_area" MIN_AREA, "topk" TOPK,
            "class_score" CLASS_SCORE; ``instances.py``); defaults are the config's defaults.
    """

    architecture = "DiffewS"

    def __init__(self, model, image_size: int, instances: Optional[Dict] = None, cfg=None):
        self.model = model.eval()
        self.cfg = cfg
        self.weights = cfg.MODEL.WEIGHTS if cfg is not None else ""
        self.image_size = int(image_size)
        model.check_size((self.image_size, self.image_size))
        self.signature = model.support_signature()
        factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
        self.latent_size = self.image_size // factor
        self.instances = {"mode": "mask+components", "min_area": 16, "topk": 100,
                          "class_score": "none", **(instances or {})}

    @classmethod
    def from_config(cls, cfg) -> "DiffewSPredictor":
        """Build the model of a detectron2 config and load ``MODEL.WEIGHTS`` (an empty value is
        an error unless ``MODEL.DIFFEWS.ALLOW_UNTRAINED``)."""
        from detectron2.modeling import build_model

        from ..checkpoint import load_inference_weights, require_inference_weights

        require_inference_weights(cfg)
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; "
                             "use device 'cpu'")
        model = build_model(cfg)
        load_inference_weights(model, cfg)
        logger.info("DiffewSPredictor: %s on %s, working size %d", cfg.MODEL.WEIGHTS or "untrained",
                    cfg.MODEL.DEVICE, cfg.INPUT.IMAGE_SIZE)
        f = cfg.TEST.FSOD
        return cls(model, cfg.INPUT.IMAGE_SIZE,
                   {"mode": f.INSTANCE_MODE, "min_area": int(f.MIN_AREA), "topk": int(f.TOPK),
                    "class_score": f.CLASS_SCORE}, cfg=cfg.clone())

    def load_weights(self, weights: str) -> None:
        """``load_inference_weights`` of ``weights`` (the inference backend re-attached for
        them); the support-set signature is recomputed from the new weights."""
        from ..checkpoint import DiffewSCheckpointer, load_inference_weights

        if self.cfg is None:
            DiffewSCheckpointer(self.model).load(weights)
        else:
            self.cfg.defrost()
            self.cfg.MODEL.WEIGHTS = weights
            self.cfg.freeze()
            load_inference_weights(self.model, self.cfg)
        self.model.eval()
        self.signature = self.model.support_signature()
        self.weights = weights

    path_keys = ("MODEL.DIFFEWS.PRETRAINED",)
    presence_key = "MODEL.DIFFEWS.PRESENCE_THRESHOLD"
    support_set_class = SupportSet

    @classmethod
    def model_files(cls, cfg) -> List[str]:
        """``MODEL.DIFFEWS.PRETRAINED``'s ``unet/`` and ``vae/`` (the parts the model uses)."""
        local = cfg.MODEL.DIFFEWS.PRETRAINED
        return [os.path.join(local, d) for d in ("unet", "vae")
                if local and os.path.isdir(os.path.join(local, d))]

    @classmethod
    def check_config(cls, cfg) -> None:
        """``TEST.FSOD.INSTANCE_MODE`` / ``CLASS_SCORE`` / ``TOPK`` / ``MIN_AREA``."""
        f = cfg.TEST.FSOD
        if f.INSTANCE_MODE not in MODES:
            raise UsageError(f"TEST.FSOD.INSTANCE_MODE must be one of {MODES}, got "
                             f"{f.INSTANCE_MODE!r}")
        if f.CLASS_SCORE not in CLASS_SCORES:
            raise UsageError(f"TEST.FSOD.CLASS_SCORE must be one of {CLASS_SCORES}, got "
                             f"{f.CLASS_SCORE!r}")
        if f.TOPK < 1:
            raise UsageError(f"TEST.FSOD.TOPK must be >= 1, got {f.TOPK}")
        if f.MIN_AREA < 0:
            raise UsageError(f"TEST.FSOD.MIN_AREA must be >= 0, got {f.MIN_AREA}")

    @classmethod
    def from_pretrained(cls, pretrained_dir: str, weights: Optional[str], device: str = "cuda",
                        image_size: int = 512, allow_untrained: bool = False,
                        opts: Sequence = ()) -> "DiffewSPredictor":
        """
        Args:
            pretrained_dir: local Stable Diffusion folder (diffusers layout), e.g. the release's
                ``weight/stable-diffusion-2-1-ref8inchannels-tag4inchannels``, or a hub id
                (``hf://ORG/NAME[/SUB][@REV]``, ``modelscope://...``: ``diffews/utils/hub.py``).
            weights: a released DiffewS UNet (``weight/coco_fold0``), a trainer ``.pth`` or a
                hub id. None only with ``allow_untrained=True``.
            device: "cuda", "cuda:1", "cpu", ...
            image_size: working size S.
            opts: further config overrides, ``[KEY, VALUE, ...]``.
        """
        from ..config import build_config

        cfg = build_config(opts=["MODEL.DIFFEWS.PRETRAINED", pretrained_dir, "MODEL.WEIGHTS",
                                 weights or "", "MODEL.DEVICE", device, "INPUT.IMAGE_SIZE",
                                 int(image_size), "MODEL.DIFFEWS.ALLOW_UNTRAINED",
                                 bool(allow_untrained), *opts])
        return cls.from_config(cfg)

    # -- inputs --------------------------------------------------------------------------------
    def _working_image(self, image, what: str) -> Tuple[np.ndarray, Tuple[int, int]]:
        rgb = as_rgb(image, what)
        return resize_image(rgb, self.image_size), rgb.shape[:2]

    @torch.no_grad()
    def _encode_arrays(self, arrays: List[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
        return self.model.encode(self.model.normalize(x), sample=False)

    def encode_images(self, images: Iterable, batch_size: int = 8) -> List[EncodedImage]:
        """VAE-encode images (paths, HxWx3 uint8 arrays or PIL images) once, in batches."""
        out: List[EncodedImage] = []
        for chunk in _chunks(list(images), batch_size):
            out.extend(self._encode_chunk(chunk, len(out)))
        return out

    def _encode_chunk(self, chunk: List, start: int) -> List[EncodedImage]:
        encoded: List[Optional[EncodedImage]] = [x if isinstance(x, EncodedImage) else None
                                                 for x in chunk]
        todo = [i for i, e in enumerate(encoded) if e is None]
        if todo:
            names = [_name(chunk[i], "image", start + i) for i in todo]
            loaded = [self._working_image(chunk[i], n) for i, n in zip(todo, names)]
            latents = self._encode_arrays([a for a, _ in loaded])
            for j, i in enumerate(todo):
                encoded[i] = EncodedImage(latents[j], tuple(loaded[j][1]), names[j])
        for e in encoded:
            if tuple(e.latent.shape[-2:]) != (self.latent_size, self.latent_size):
                raise ValueError(f"{e.name}: encoded at another working size (latent "
                                 f"{tuple(e.latent.shape[-2:])}, this predictor uses "
                                 f"{self.latent_size}x{self.latent_size})")
        return encoded

    # -- supports ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_supports(self, images: Sequence, masks: Sequence,
                        dtype: Optional[torch.dtype] = None, warn_empty: bool = True,
                        task: str = "fss") -> SupportSet:
        """Encode K annotated supports into a ``SupportSet`` (VAE latents and the keys/values of
        every fused self-attention layer), computed once for any number of queries.

        Args:
            images: K images: file paths, HxWx3 uint8 arrays, PIL images or ``EncodedImage``
                (whose latent is reused).
            masks: K masks: file paths, PIL images or HxW arrays (non-zero = foreground), each of
                its image's size, or COCO annotations of the image's instances (``masks.py``;
                their union is the mask).
            dtype: storage dtype of the keys/values (e.g. ``torch.float16`` halves the memory).
            warn_empty: log a warning for a mask without foreground (it is encoded anyway; video
                memories, where a vanished object's empty mask is normal, turn it off).
            task: what the set is for ("fss" or "fsis"); DiffewS encodes both the same way.
        """
        images, masks = list(_as_list(images)), list(_as_list(masks))
        if not images:
            raise ValueError("encode_supports needs at least one support image and mask")
        if len(images) != len(masks):
            raise ValueError(f"encode_supports: {len(images)} images but {len(masks)} masks")
        arrays, latents, resized, info = [], [], [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            name = _name(image, "support", i)
            if isinstance(image, EncodedImage):
                size = image.size
                latents.append(self._encode_chunk([image], i)[0].latent)
            else:
                array, size = self._working_image(image, name)
                arrays.append(array)
            if is_annotations(mask):
                m = union_mask(mask, tuple(size), f"{name}'s annotations")
            else:
                m = as_mask(mask, _name(mask, f"support {i} mask", i))
            if m.shape != tuple(size):
                raise ImageReadError(f"{_name(mask, f'support {i} mask', i)}: mask is "
                                     f"{m.shape[1]}x{m.shape[0]} but its image {name} is "
                                     f"{size[1]}x{size[0]}")
            if warn_empty and not m.any():
                logger.warning("%s: empty support mask (no foreground pixel); encoding anyway",
                               _name(mask, f"support {i} mask", i))
            resized.append(torch.from_numpy(resize_mask(m.astype(np.uint8), self.image_size)))
            source = name if isinstance(image, (str, os.PathLike, EncodedImage)) \
                else f"<{type(image).__name__}>"
            info.append({"source": source, "size": [int(size[0]), int(size[1])],
                         "mask_fraction": float(m.mean())})
        if latents and arrays:
            raise ValueError("encode_supports: give all supports as EncodedImage or none")
        image_tensor = (torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
                        if arrays else None)
        support_set = self.model.encode_supports(
            image_tensor, torch.stack(resized),
            image_latents=torch.stack(latents) if latents else None,
            signature=self.signature, info=info, use_cache=False)
        return support_set.to(dtype=dtype) if dtype is not None else support_set

    def fit_supports(self, supports: SupportSet) -> SupportSet:
        """Encoded at this predictor's working size, on its device."""
        if tuple(supports.latents.shape[-2:]) != (self.latent_size, self.latent_size):
            raise SupportSetError(
                f"the SupportSet was encoded at another working size (latent "
                f"{tuple(supports.latents.shape[-2:])}, this predictor uses "
                f"{self.latent_size}x{self.latent_size})")
        return supports if supports.device == self.device else supports.to(self.device)

    # -- queries -------------------------------------------------------------------------------
    def predict(self, queries: Iterable, supports: SupportSet, batch_size: int = 8,
                presence_threshold: Optional[float] = None) -> List[Dict]:
        """Segment each query with the same supports (``iter_predict`` as a list).

        ``presence_threshold``: judge a query absent below it (None: MODEL.DIFFEWS.
        PRESENCE_THRESHOLD when >= 0, else the threshold the weights were calibrated with,
        ``MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS``; < 0: no decision, every mask kept as it is).

        Returns:
            one dict per query:
                * "mask": (H, W) bool at the query's original size;
                * "mask_working": (S, S) bool at the working size;
                * "pred_image": (S, S, 3) uint8, the decoded prediction;
                * "score": float in [0, 1], the contrast of the prediction between its mask
                  and the rest (``diffews.prediction_score``; 0 for an empty mask);
                * "presence": float, higher = more likely present (MODEL.DIFFEWS.PRESENCE_SIGNAL,
                  or the weights' calibrated signal);
                * "present": True (judged present), False (judged absent, or nothing found:
                  "mask" is then empty) or None (no decision was made);
                * "signals": every presence signal measured, by name;
                * "name": the query's path or description.
        """
        return list(self.iter_predict(queries, supports, batch_size, presence_threshold))

    @torch.no_grad()
    def iter_predict(self, queries: Iterable, supports: SupportSet, batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> Iterator[Dict]:
        """``predict`` one batch at a time (for folders of thousands of queries)."""
        supports = self.check_supports(supports)
        queries = _as_list(queries)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        start = 0
        for chunk in _chunks_iter(queries, batch_size):
            encoded = self._encode_chunk(chunk, start)
            start += len(chunk)
            z = torch.stack([e.latent for e in encoded])
            yield from self._results(z, supports, encoded, presence_threshold)

    @torch.no_grad()
    def predict_many(self, query, support_sets: Sequence[SupportSet], batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> List[Dict]:
        """One query against several support sets (e.g. one per class): the query is encoded
        once; sets with the same number of supports share a query pass of up to ``batch_size``.

        Returns:
            one ``predict`` dict per support set, in order.
        """
        sets = [self.check_supports(s) for s in support_sets]
        (encoded,) = self._encode_chunk([query], 0)
        results: List[Optional[Dict]] = [None] * len(sets)
        by_shots: Dict[int, List[int]] = {}
        for i, s in enumerate(sets):
            by_shots.setdefault(len(s), []).append(i)
        for idx in by_shots.values():
            for chunk in _chunks(idx, batch_size):
                z = encoded.latent[None].expand(len(chunk), -1, -1, -1)
                for i, r in zip(chunk, self._results(z, [sets[i] for i in chunk],
                                                     [encoded] * len(chunk), presence_threshold)):
                    results[i] = r
        return results

    def _results(self, z: torch.Tensor, supports, encoded: List[EncodedImage],
                 presence_threshold: Optional[float]) -> Iterator[Dict]:
        """Query pass (measuring the presence signals inside it only when one is used),
        decode, readout, and the masks back at each query's size."""
        model, measured = self.model, None
        if model.needs_measure:
            pred, measured = model.query_pass_measured(z, supports, model.prompt_embeds_test)
        else:
            pred = model.query_pass(z, supports, model.prompt_embeds_test)
        if presence_threshold is None:  # the configured one, else the weights' calibrated one
            presence_threshold = model.default_presence_threshold()
        outputs = model.postprocess(model.decode(-pred), measured, presence_threshold)
        for e, out in zip(encoded, outputs):
            working = out["pred_mask"].cpu().numpy()
            yield {
                "mask": resize_mask(working.astype(np.uint8), e.size).astype(bool),
                "mask_working": working,
                "pred_image": out["pred_image"].permute(1, 2, 0).cpu().numpy(),
                "score": float(out["score"]),
                "presence": out["presence"],
                "present": out["present"],
                "signals": out["signals"],
                "name": e.name,
            }

    # -- instances and video ---------------------------------------------------------------------
    def predict_instances(self, image, support_sets: Sequence[SupportSet], batch_size: int = 8,
                          presence_threshold: Optional[float] = None):
        """Each class's mask split into scored instances (``instances.py``, TEST.FSOD.*): one
        ``predict_many`` of the image against every class's set; a class judged absent gives
        no instance."""
        (encoded,) = self.encode_images([image], batch_size=1)
        results = self.predict_many(encoded, support_sets, batch_size, presence_threshold)
        return predictions_to_instances(results, encoded.size, **self.instances)

    def video_tracker(self, mem_size: int, decay_ratio: float, reuse_supports: bool = True,
                      batch_size: int = 8) -> DiffewSVideoTracker:
        """DiffewS's rules for a video (``diffews_video.py``)."""
        return DiffewSVideoTracker(self, mem_size, decay_ratio, reuse_supports, batch_size)

    @contextmanager
    def measuring_signals(self):
        """Also measure the query pass's signals ("attention": the share of its fused attention
        on the support tokens; "head": the presence head's, for a model with one), which costs
        a measured query pass."""
        model = self.model
        model.measure_attention = True
        try:
            yield
        finally:
            model.measure_attention = False
