# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``MODEL.DIFFEWS.BACKEND``: the ONNX Runtime backend attached to a built ``DiffewS``.

``backend_from_config`` is called once the weights are loaded (``checkpoint.
load_inference_weights``): the export depends on them. It exports the model at
``INPUT.IMAGE_SIZE`` (or finds the cached export; a stale one is rebuilt with a log line) and
returns an ``OnnxBackends``, which the model's building blocks (``meta_arch/building_blocks.py``) ask for
the backend of each input size; another square size is exported on first use.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch

from .cache import cached_export

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "OnnxBackends", "backend_from_config", "default_providers",
           "config_providers"]

BACKENDS = ("torch", "onnxruntime")


def default_providers(device: torch.device) -> List[str]:
    """CPU execution provider for a CPU model, CUDA (with CPU fallback) for a GPU model."""
    if torch.device(device).type == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def config_providers(cfg, device) -> List:
    """``MODEL.DIFFEWS.ONNX_PROVIDERS``, or the device's default providers when empty."""
    providers = [p for p in cfg.MODEL.DIFFEWS.ONNX_PROVIDERS if p]
    return providers or default_providers(device)


class OnnxBackends:
    """One ``OnnxRuntimeBackend`` per square working size of one model, exported (or found in
    the cache under ``cache_root``) on first use.

    Args:
        cache_root: the weights file or folder, or a cache folder (``cached_export``).
        providers, threads, optimization: see ``OnnxRuntimeBackend``.
        check: check a new export against torch (``export_model``).
    """

    def __init__(self, cache_root: str, providers: Optional[Sequence] = None,
                 threads: Optional[int] = None, optimization: str = "all", check: bool = True):
        self.cache_root = cache_root
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads, self.optimization, self.check = threads, optimization, check
        self._by_size: Dict[int, object] = {}

    def get(self, model, image_size: int):
        """The backend of ``model`` for ``image_size`` px square inputs."""
        size = int(image_size)
        if size not in self._by_size:
            from .runtime import OnnxRuntimeBackend

            folder = cached_export(model, self.cache_root, size, check=self.check,
                                   providers=self.providers)
            # cached_export has just checked the export against the model (signature, weights
            # digest, size): not checked again here
            self._by_size[size] = OnnxRuntimeBackend(
                folder, image_size=size, providers=self.providers, threads=self.threads,
                optimization=self.optimization)
            logger.info("ONNX Runtime backend at %d px: %s", size, self._by_size[size])
        return self._by_size[size]

    @property
    def sizes(self) -> List[int]:
        return sorted(self._by_size)

    def __repr__(self) -> str:
        return f"OnnxBackends({self.cache_root}, sizes {self.sizes}, {self.providers})"


def _cache_root(cfg, weights: str) -> str:
    d = cfg.MODEL.DIFFEWS
    if d.ONNX_CACHE_DIR:
        return d.ONNX_CACHE_DIR
    root = weights or d.PRETRAINED
    folder = os.path.dirname(os.path.abspath(root)) if os.path.isfile(root) else root
    if not os.access(folder, os.W_OK):
        raise OSError(f"{folder}: not writable, so the ONNX export cannot be kept beside the "
                      "weights; set MODEL.DIFFEWS.ONNX_CACHE_DIR to a writable folder")
    return root


def backend_from_config(model, cfg, weights: str = "") -> Optional[OnnxBackends]:
    """The backends that ``MODEL.DIFFEWS.BACKEND`` asks for (None for "torch"), with the export
    at ``INPUT.IMAGE_SIZE`` made or found now, so that its cost and log line come at load time.

    Args:
        weights: the local path the weights were loaded from ("" when untrained: the export is
            kept beside ``MODEL.DIFFEWS.PRETRAINED``); ``ONNX_CACHE_DIR`` overrides both.
    """
    d = cfg.MODEL.DIFFEWS
    if d.BACKEND == "torch":
        return None
    if d.BACKEND not in BACKENDS:
        raise ValueError(f"MODEL.DIFFEWS.BACKEND must be one of {list(BACKENDS)}, got "
                         f"{d.BACKEND!r}")
    backends = OnnxBackends(_cache_root(cfg, weights), config_providers(cfg, model.device),
                            threads=d.ONNX_THREADS or None, optimization=d.ONNX_OPTIMIZATION)
    backends.get(model, cfg.INPUT.IMAGE_SIZE)
    return backends
