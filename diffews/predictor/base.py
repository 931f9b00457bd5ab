# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``Predictor``: the one interface through which the tasks and the web demo use a model.

Each model (``MODEL.META_ARCHITECTURE``) has one implementation (``DiffewSPredictor``, ...), built
from a config by ``build_predictor`` (``predictor/build.py``). Nothing above this floor (tasks/,
web_demo/, the tools) reads a model's modules or a support set's tensors: they call these methods,
so that a new model plugs into every task by implementing them.

The words:

* a **support set** (``encode_supports``) is what a query needs from K annotated supports,
  computed once and reused for any number of queries. Whatever a model stores in it, it behaves as
  a list of supports (``len``, ``info``: one dict per support), has ``nbytes``, ``.to(device,
  dtype)`` and ``save(path)``, and carries the encoding model's signature: ``load_support_set``
  refuses a set of another model or working size with a one-line ``SupportSetError``.
* an **encoded image** (``encode_images``) is a query or support image encoded once; it can be
  given wherever an image is taken (video frames are encoded once for every object).
* a **result** (``predict``, ``predict_many``) is a dict with at least:
  ``mask`` (H, W) bool at the query's original size, ``mask_working`` (S, S) bool, ``pred_image``
  (S, S, 3) uint8 (a picture of the model's prediction before thresholding), ``score`` (float in
  [0, 1], how clean the prediction is), ``presence`` (float, higher = more likely that the
  supports' object is in the query), ``present`` (True: judged present; False: judged absent or
  nothing found, the mask then empty; None: no decision was made, which every consumer must
  treat as "not decided", never as "found"), ``signals`` (every presence signal by name) and
  ``name``.
"""

import abc
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..utils.errors import SupportSetError

__all__ = ["Predictor"]


class Predictor(abc.ABC):
    """A loaded model in eval mode behind the interface of the module docstring.

    Attributes:
        model: the meta-architecture (``nn.Module``); tasks never read it.
        image_size: the square working size S.
        signature: what identifies the model that encodes support sets (architecture, sizes, a
            fingerprint of the weights).
        weights: the ``MODEL.WEIGHTS`` loaded ("" when untrained or unknown).
    """

    #: the ``MODEL.META_ARCHITECTURE`` this predictor serves
    architecture: str = ""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg) -> "Predictor":
        """Build the model of ``cfg`` and load ``MODEL.WEIGHTS``."""

    #: config keys naming files the model reads besides MODEL.WEIGHTS (their identity, not
    #: their path, is part of a resumable run's fingerprint: ``model_files``)
    path_keys: Tuple[str, ...] = ()

    #: the config key of the presence threshold (< 0: no decision; ``configured_presence``)
    presence_key: str = ""

    @classmethod
    def configured_presence(cls, cfg) -> Optional[float]:
        """The presence threshold ``cfg`` sets for this model (>= 0), else None (not set: the
        model's default, e.g. the threshold calibrated weights carry)."""
        node = cfg
        for part in cls.presence_key.split(".") if cls.presence_key else ():
            node = node.get(part, None) if node is not None else None
        return None if node is None or float(node) < 0 else float(node)

    @classmethod
    def model_files(cls, cfg) -> List[str]:
        """The files and folders the model reads besides ``MODEL.WEIGHTS`` (empty: none)."""
        return []

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ``UsageError`` (one line naming the key) for model-specific settings that nothing
        should discover after the model is built. Called by the tasks' checks."""

    @property
    def device(self) -> torch.device:
        return self.model.device

    @abc.abstractmethod
    def load_weights(self, weights: str) -> None:
        """Load other weights (a ``MODEL.WEIGHTS`` value, local) into the same model, e.g. the
        next fold's; the signature follows the weights."""

    # -- supports ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_supports(self, images: Sequence, masks: Sequence,
                        dtype: Optional[torch.dtype] = None, warn_empty: bool = True,
                        task: str = "fss"):
        """K support images (paths, H x W x 3 uint8 arrays, PIL images or encoded images) and their
        masks (paths or H x W arrays, non-zero = foreground, or COCO annotations of the image's
        instances: ``masks.py``) -> a support set. ``task`` says what the set is for: "fss"
        (``predict``, ``predict_many``) or "fsis" (``predict_instances``); a model whose tasks
        pre-process supports differently (SINE) encodes each as its task does."""

    #: the support-set class this predictor encodes, loads and concatenates (``load``, ``cat``)
    support_set_class: type = type(None)

    def load_support_set(self, path: str):
        """A saved support set, checked against this model (signature, working size), on this
        predictor's device. Raises ``SupportSetError`` (one line) when it does not fit."""
        return self.check_supports(self.support_set_class.load(path))

    def cat_support_sets(self, sets: Sequence):
        """The supports of ``sets`` in order, as one set."""
        return self.support_set_class.cat(sets)

    def check_supports(self, supports):
        """``supports`` if it is a non-empty set of this model (its signature), made ready for
        it (``fit_supports``); a wrong type is a TypeError, the rest ``SupportSetError``."""
        name = self.support_set_class.__name__
        if not isinstance(supports, self.support_set_class):
            raise TypeError(f"supports must be a {name} (from encode_supports or {name}.load), "
                            f"got {type(supports).__name__}")
        if len(supports) == 0:
            raise SupportSetError(f"the {name} is empty: a query needs at least one support")
        supports.check_compatible(self.signature, "this predictor's model")
        return self.fit_supports(supports)

    def fit_supports(self, supports):
        """A checked set made ready for this model (its working size, device, dtype)."""
        return supports

    # -- queries -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_images(self, images: Iterable, batch_size: int = 8) -> List:
        """Images encoded once, usable as queries and as support images of this predictor."""

    @abc.abstractmethod
    def iter_predict(self, queries: Iterable, supports, batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> Iterator[Dict]:
        """One result per query against the same support set, a batch at a time.
        ``presence_threshold``: None = the model's default (configured, or what its weights
        were calibrated with); < 0 = no decision."""

    def predict(self, queries: Iterable, supports, batch_size: int = 8,
                presence_threshold: Optional[float] = None) -> List[Dict]:
        """``iter_predict`` as a list."""
        return list(self.iter_predict(queries, supports, batch_size, presence_threshold))

    @abc.abstractmethod
    def predict_many(self, query, support_sets: Sequence, batch_size: int = 8,
                     presence_threshold: Optional[float] = None) -> List[Dict]:
        """One query (encoded once) against several support sets (e.g. one per class): one
        result per set, in order."""

    @abc.abstractmethod
    def predict_instances(self, image, support_sets: Sequence, batch_size: int = 8,
                          presence_threshold: Optional[float] = None):
        """Few-shot instance segmentation of one image (H x W x 3 uint8 or encoded), one support
        set per class: detectron2 ``Instances`` at the image's size with ``pred_masks`` (N, H, W)
        bool, ``pred_boxes`` (XYXY), ``scores`` and ``pred_classes`` (index into
        ``support_sets``), by decreasing score, at most the configured number per image."""

    def predict_episodes(self, batch: List[Dict]) -> List[Dict]:
        """Benchmark episodes (``data.episodes.EpisodeMapper`` dicts at the working size) -> one
        dict per episode with "pred_mask" (S, S) bool: the published protocol's own path."""
        with torch.no_grad():
            return self.model(batch)

    # -- video object segmentation ---------------------------------------------------------------
    @abc.abstractmethod
    def video_tracker(self, mem_size: int, decay_ratio: float, reuse_supports: bool = True,
                      batch_size: int = 8):
        """A new video's tracker: an object with ``frame(t, image, name, ann) -> dict`` that
        segments frame ``t`` (``image`` (H, W, 3) uint8, ``ann`` the (H, W) object ids given on
        it or None) and keeps each object's memory of references by this model's rules
        (``mem_size`` references, the first frame included; ``decay_ratio`` their linear decay).
        The dict: "label_map" (H, W) int64, "given", "scores", "shots", "present", "presence",
        "entered", "memory" (``diffews.tasks.vos.VOSEngine.segment_video``)."""

    # -- presence ----------------------------------------------------------------------------------
    @contextmanager
    def measuring_signals(self):
        """Within the block, every result's ``signals`` holds every presence signal (some cost
        extra work; by default only the configured one is measured)."""
        yield
