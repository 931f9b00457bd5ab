# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``SINEPredictor``: the ``Predictor`` of SINE (docs/SINE.md), on the model's building blocks.

Each task follows its original's pre- and post-processing (``modeling/sine/preprocess.py`` and
``inference.py``; aim-uofa/SINE at 9ff576c):

* ``predict`` / ``predict_many`` (the demo, the web demo): few-shot semantic segmentation as
  tools/eval_fss.py runs it: images square-resized to ``MODEL.SINE.IMAGE_SIZE`` (PIL bilinear),
  masks legacy-nearest, one ID query per support and one class query pooled over them; the mask
  at the working size is ``sem_seg > MODEL.SINE.SCORE_THRESHOLD`` (the benchmark's), the mask at
  the query's original size is the model's own ``sem_seg_postprocess`` to that size thresholded
  the same way. ``score`` and ``presence`` are the best class probability over the instance
  queries (softmax over class + "no object"): how sure the best-matching query is that the
  supports' object is there.
* ``encode_supports(..., task="fsis")`` / ``predict_instances``: few-shot instance segmentation
  as inference_fsod does it: images resized as detectron2's ``ResizeShortestEdge``
  (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) in ``INPUT.FORMAT`` channel order, polygons
  rasterised at the resized size, one class query per support set pooled over all its instances;
  one decoder call for all classes; the top ``TEST.FSOD.TOPK`` (query, class) pairs, kept when
  their score is > ``MODEL.SINE.SCORE_THRESHOLD``.
* ``video_tracker``: tools/eval_vos.py's memory loop (``sine_video.py``).
* ``predict_episodes``: FSS benchmark episodes through ``SINE.forward``.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..modeling.sine import SINESupportSet
from ..modeling.sine import preprocess as P
from ..modeling.sine.inference import fsis_instances, fss_sem_seg
from ..utils.errors import SupportSetError, UsageError
from ..utils.image import as_rgb
from ..utils.inputs import as_list as _as_list
from ..utils.inputs import chunks_iter as _chunks_iter
from ..utils.inputs import input_name as _name
from .base import Predictor
from .masks import annotation_list, instance_masks, is_annotations

logger = logging.getLogger(__name__)

__all__ = ["SINEPredictor", "SINEEncoded"]


@dataclass
class SINEEncoded:
    """An image encoded once for few-shot semantic segmentation (square working size).

    Attributes:
        features: (1, C, h, w) neck features of the padded image, on the model's device.
        size: the image's original (height, width).
        name: its file path or a description.
    """

    features: torch.Tensor
    size: Tuple[int, int]
    name: str


class SINEPredictor(Predictor):
    """SINE behind the ``Predictor`` interface (module docstring).

    Args:
        model: a built ``SINE`` with its weights loaded; put in eval mode.
        cfg: the config it was built from (working sizes, thresholds, FSIS and VOS settings).
    """

    architecture = "SINE"
    path_keys = ("MODEL.SINE.ENCODER.WEIGHTS",)
    presence_key = "MODEL.SINE.PRESENCE_THRESHOLD"
    support_set_class = SINESupportSet

    def __init__(self, model, cfg):
        self.model = model.eval()
        self.cfg = cfg.clone()
        self.image_size = int(model.image_size)
        self.weights = cfg.MODEL.WEIGHTS
        self.signature = model.support_signature()
        self.threshold = float(cfg.MODEL.SINE.SCORE_THRESHOLD)
        self.presence_threshold = float(cfg.MODEL.SINE.PRESENCE_THRESHOLD)
        self.fsis = {"min_size": int(cfg.INPUT.MIN_SIZE_TEST),
                     "max_size": int(cfg.INPUT.MAX_SIZE_TEST), "format": cfg.INPUT.FORMAT,
                     "topk": int(cfg.TEST.FSOD.TOPK)}
        self.frame_size = int(cfg.TEST.VOS.FRAME_SIZE)

    @classmethod
    def from_config(cls, cfg) -> "SINEPredictor":
        """Build the SINE of ``cfg`` and load ``MODEL.WEIGHTS`` (empty: an error unless
        ``MODEL.SINE.ALLOW_UNTRAINED``)."""
        from detectron2.modeling import build_model

        from ..checkpoint import load_inference_weights, require_inference_weights

        require_inference_weights(cfg)
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; "
                             "use device 'cpu'")
        model = build_model(cfg)
        load_inference_weights(model, cfg)
        logger.info("SINEPredictor: %s on %s, working size %d, padded to %d",
                    cfg.MODEL.WEIGHTS or "untrained", cfg.MODEL.DEVICE, model.image_size,
                    model.pad_size)
        return cls(model, cfg)

    @classmethod
    def model_files(cls, cfg) -> List[str]:
        """``MODEL.SINE.ENCODER.WEIGHTS`` when set (the DINOv2 checkpoint)."""
        return [cfg.MODEL.SINE.ENCODER.WEIGHTS] if cfg.MODEL.SINE.ENCODER.WEIGHTS else []

    @classmethod
    def check_config(cls, cfg) -> None:
        """``INPUT.FORMAT``, the FSIS resize sizes and ``TEST.FSOD.TOPK``."""
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise UsageError(f"INPUT.FORMAT must be RGB or BGR for SINE, got {cfg.INPUT.FORMAT!r}")
        for key in ("MIN_SIZE_TEST", "MAX_SIZE_TEST"):
            if int(cfg.INPUT[key]) < 1:
                raise UsageError(f"INPUT.{key} must be >= 1, got {cfg.INPUT[key]}")
        if cfg.TEST.FSOD.TOPK < 1:
            raise UsageError(f"TEST.FSOD.TOPK must be >= 1, got {cfg.TEST.FSOD.TOPK}")

    def load_weights(self, weights: str) -> None:
        """``MODEL.WEIGHTS`` = ``weights`` loaded into the same model; the signature follows."""
        from ..checkpoint import load_inference_weights

        self.cfg.defrost()
        self.cfg.MODEL.WEIGHTS = weights
        self.cfg.freeze()
        load_inference_weights(self.model, self.cfg)
        self.model.eval()
        self.signature = self.model.support_signature()
        self.weights = weights

    def _fsis_image(self, rgb: np.ndarray, what: str) -> np.ndarray:
        """``rgb`` resized as few-shot instance segmentation resizes it (INPUT.MIN_SIZE_TEST /
        MAX_SIZE_TEST, INPUT.FORMAT); an error naming the keys when it would not fit the
        padding."""
        h, w = P.fsis_size(rgb.shape[0], rgb.shape[1], self.fsis["min_size"],
                           self.fsis["max_size"])
        if max(h, w) > self.model.pad_size:
            raise UsageError(f"{what}: resized to {w}x{h} by INPUT.MIN_SIZE_TEST "
                             f"{self.fsis['min_size']} / MAX_SIZE_TEST {self.fsis['max_size']}, "
                             f"larger than MODEL.SINE.PAD_SIZE {self.model.pad_size}; SINE's "
                             "instance segmentation config (configs/sine/sine_dinov2l_fsis.yaml) "
                             "sets both to the padded size")
        return P.fsis_image(rgb, self.fsis["min_size"], self.fsis["max_size"],
                            self.fsis["format"])

    # -- inputs ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, units: Sequence[torch.Tensor]) -> torch.Tensor:
        """(3, h, w) images in [0, 1] -> (n, C, h', w') features of the padded images."""
        return self.model.encode(self.model.prepare(list(units)))

    def encode_images(self, images: Iterable, batch_size: int = 8) -> List[SINEEncoded]:
        """Images (paths, H x W x 3 uint8 arrays, PIL images) square-resized and encoded once."""
        out: List[SINEEncoded] = []
        for chunk in _chunks_iter(_as_list(images), max(int(batch_size), 1)):
            todo, rgbs = [], []
            for i, x in enumerate(chunk):
                if not isinstance(x, SINEEncoded):
                    todo.append(i)
                    rgbs.append(as_rgb(x, _name(x, "image", len(out) + i)))
            feats = self._features([P.to_unit(P.fss_image(r, self.image_size)) for r in rgbs]) \
                if rgbs else None
            for i, x in enumerate(chunk):
                if isinstance(x, SINEEncoded):
                    out.append(x)
                else:
                    j = todo.index(i)
                    out.append(SINEEncoded(feats[j:j + 1], tuple(rgbs[j].shape[:2]),
                                           _name(x, "image", len(out))))
        return out

    # -- supports ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_supports(self, images: Sequence, masks: Sequence,
                        dtype: Optional[torch.dtype] = None, warn_empty: bool = True,
                        task: str = "fss") -> SINESupportSet:
        """K supports -> a ``SINESupportSet`` pooled by ``task``'s rule ("fss": one ID query per
        support; "fsis": one per instance, masks given as COCO annotations keep their
        instances and polygons are rasterised at the resized size)."""
        images, masks = list(_as_list(images)), list(_as_list(masks))
        if not images:
            raise ValueError("encode_supports needs at least one support image and mask")
        if len(images) != len(masks):
            raise ValueError(f"encode_supports: {len(images)} images but {len(masks)} masks")
        if task not in ("fss", "fsis"):
            raise ValueError(f"encode_supports: task must be 'fss' or 'fsis', got {task!r}")
        feats, padded, info = [], [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            name = _name(image, "support", i)
            if isinstance(image, SINEEncoded):
                raise ValueError(f"{name}: SINE encodes support images from their pixels (give "
                                 "the image, not an encoded one)")
            rgb = as_rgb(image, name)
            shape = rgb.shape[:2]
            inst = instance_masks(mask, shape, _name(mask, f"support {i} mask", i))
            if warn_empty and not any(m.any() for m in inst):
                logger.warning("%s: empty support mask (no foreground pixel); encoding anyway",
                               _name(mask, f"support {i} mask", i))
            if task == "fss":
                union = np.logical_or.reduce(inst)
                feats.append(self._features([P.to_unit(P.fss_image(rgb, self.image_size))])[0])
                padded.append(self.model.pad_masks(P.fss_mask(union, self.image_size)[None]))
                info.append({"source": name, "size": [int(shape[0]), int(shape[1])],
                             "mask_fraction": float(union.mean())})
            else:
                resized = self._fsis_image(rgb, name)
                feats.append(self._features([P.to_unit(resized)])[0])
                size = resized.shape[:2]
                if is_annotations(mask):
                    polys = [a["segmentation"] for a in annotation_list(mask)]
                    rs = [P.fsis_polygon_mask(p, shape, size) if isinstance(p, list) and p
                          else P.fsis_mask(m, size) for p, m in zip(polys, inst)]
                else:
                    rs = [P.fsis_mask(m, size) for m in inst]
                padded.append(self.model.pad_masks(torch.stack(rs)))
                info += [{"source": name, "size": [int(shape[0]), int(shape[1])],
                          "mask_fraction": float(m.mean())} for m in inst]
        s = self.model.encode_support_set(task, feats, padded, 0, info)
        return s.to(dtype=dtype) if dtype is not None else s

    def fit_supports(self, supports: SINESupportSet) -> SINESupportSet:
        """On this predictor's device, in float32."""
        return supports.to(self.device, torch.float32)

    # -- few-shot semantic segmentation ------------------------------------------------------------
    def iter_predict(self, queries: Iterable, supports, batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> Iterator[Dict]:
        """One result per query (the module docstring's FSS rules), a batch at a time."""
        supports = self.check_supports(supports)
        for chunk in _chunks_iter(_as_list(queries), max(int(batch_size), 1)):
            for encoded in self.encode_images(chunk, batch_size):
                yield self._result(encoded, supports, presence_threshold)

    def predict_many(self, query, support_sets: Sequence, batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> List[Dict]:
        """One query (encoded once) against several support sets, each decoded on its own."""
        sets = [self.check_supports(s) for s in support_sets]
        (encoded,) = self.encode_images([query], 1)
        return [self._result(encoded, s, presence_threshold) for s in sets]

    @torch.no_grad()
    def _result(self, e: SINEEncoded, supports: SINESupportSet,
                presence_threshold: Optional[float]) -> Dict:
        s, pad = self.image_size, (self.model.pad_size, self.model.pad_size)
        out = self.model.decode(e.features, supports)
        working = fss_sem_seg(out, pad, (s, s), (s, s))[0]
        full = fss_sem_seg(out, pad, (s, s), e.size)[0]
        probs = torch.softmax(out["pred_ins_logits"][0].float(), dim=-1)[:, 0]
        presence = float(probs.max())
        t = self.presence_threshold if presence_threshold is None else float(presence_threshold)
        # None: no decision made (no threshold), which is not "found"
        present = None if t < 0 else presence >= t
        mask = (full > self.threshold).cpu().numpy()
        mask_working = (working > self.threshold).cpu().numpy()
        if present is False:
            mask, mask_working = np.zeros_like(mask), np.zeros_like(mask_working)
        grey = (working.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return {"mask": mask, "mask_working": mask_working,
                "pred_image": np.repeat(grey[..., None], 3, axis=2), "sem_seg": working.cpu(),
                "score": presence, "presence": presence, "present": present,
                "signals": {"class_prob": presence}, "name": e.name}

    # -- few-shot instance segmentation ------------------------------------------------------------
    @torch.no_grad()
    def predict_instances(self, image, support_sets: Sequence, batch_size: int = 8,
                          presence_threshold: Optional[float] = None) -> Instances:
        """All classes in one decoder call (class i = ``support_sets[i]``, pooled with
        ``task="fsis"``); instances as inference_fsod's test: boxes ``[xmin, ymin, xmax, ymax]`` of
        the mask pixels (no +1). With a presence threshold (>= 0) a class whose best class
        probability is below it gives no instance."""
        sets = [self.check_supports(s) for s in support_sets]
        for i, s in enumerate(sets):
            if s.rule != "fsis":
                raise SupportSetError(f"support set {i} was pooled for {s.rule!r}; SINE's "
                                      "instance segmentation needs encode_supports(..., "
                                      "task='fsis')")
        support = SINESupportSet.cat([s.relabel(i) for i, s in enumerate(sets)])
        rgb = as_rgb(image, _name(image, "image", 0))
        resized = self._fsis_image(rgb, _name(image, "image", 0))
        pixels = self.model.prepare([P.to_unit(resized)])
        out = self.model.decode(self.model.encode(pixels), support)
        found = fsis_instances(out, pixels.shape[-2:], resized.shape[:2], rgb.shape[:2],
                               support.class_labels, self.fsis["topk"], self.threshold)
        t = self.presence_threshold if presence_threshold is None else float(presence_threshold)
        if t >= 0:
            best = torch.softmax(out["pred_ins_logits"][0].float(), dim=-1)[:, :-1].max(0).values
            keep = best[found["classes"]] >= t
            found = {k: v[keep] for k, v in found.items()}
        inst = Instances(tuple(rgb.shape[:2]))
        inst.pred_masks = found["masks"].cpu()
        inst.pred_boxes = Boxes(found["boxes"].reshape(-1, 4).float())
        inst.scores = found["scores"].float().cpu()
        inst.pred_classes = found["classes"].to(torch.int64).cpu()
        return inst

    # -- video -------------------------------------------------------------------------------------
    def video_tracker(self, mem_size: int, decay_ratio: float, reuse_supports: bool = True,
                      batch_size: int = 8):
        """tools/eval_vos.py's loop for a video (``sine_video.py``)."""
        from .sine_video import SINEVideoTracker

        return SINEVideoTracker(self, mem_size, decay_ratio)
