# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``MODEL.DIFFEWS.BACKEND``: the runtime of each inference part of a built ``DiffewS``.

``backend_from_config`` is called once the weights are loaded (``checkpoint.
load_inference_weights``): the export depends on them. "onnxruntime" exports the model at
``INPUT.IMAGE_SIZE`` (or finds the cached export; a stale one is rebuilt with a log line) and runs
every part there; "auto" (the default) runs each part (VAE encoder, decoder, support pass, query
pass) where it measured faster on this host (``auto.py``; measured once per model, size and host,
the choice kept beside the exports), exporting only when some part is worth measuring in ONNX
Runtime. Both return an ``OnnxBackends``, which the model's building blocks
(``meta_arch/building_blocks.py``) ask for the backend of each part and input size; another square
size is exported (and, for "auto", measured) on first use. "torch" attaches nothing.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch

from .auto import PARTS, cached_choice, choice_path, host_fingerprint, measure_choice, save_choice
from .cache import cached_export

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "OnnxBackends", "backend_from_config", "default_providers",
           "config_providers", "auto_unavailable"]

BACKENDS = ("auto", "torch", "onnxruntime")


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
    the cache under ``cache_root``) on first use; with ``auto``, the runtime of each part chosen
    by measurement at each size (``auto.py``) and only the parts ONNX Runtime won run there.

    Args:
        cache_root: the weights file or folder, or a cache folder (``cached_export``).
        providers, threads, optimization: see ``OnnxRuntimeBackend``.
        check: check a new export against torch (``export_model``).
        auto: choose per part by measurement (``BACKEND auto``); False: every part in ONNX
            Runtime (``BACKEND onnxruntime``).
        shots, min_part_gflop, reps: the measurement's (``auto.measure_choice``).
    """

    def __init__(self, cache_root: str, providers: Optional[Sequence] = None,
                 threads: Optional[int] = None, optimization: str = "all", check: bool = True,
                 auto: bool = False, shots: int = 1, min_part_gflop: float = 1.0, reps: int = 5):
        self.cache_root = cache_root
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads, self.optimization, self.check = threads, optimization, check
        self.auto, self.shots, self.min_part_gflop, self.reps = auto, shots, min_part_gflop, reps
        self._by_size: Dict[int, object] = {}
        self.choices: Dict[int, Dict] = {}  # auto: size -> choice (auto.measure_choice)

    def get(self, model, image_size: int, part: Optional[str] = None):
        """The backend of ``model`` for ``image_size`` px square inputs, or None where ``part``
        (one of ``auto.PARTS``) runs in torch (``auto`` chose it)."""
        size = int(image_size)
        if self.auto and part is not None:
            if part not in PARTS:
                raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
            if self.choose(model, size)["parts"][part] == "torch":
                return None
        return self._backend(model, size)

    def choose(self, model, image_size: int) -> Dict:
        """The per-part choice at ``image_size``: this process's, the host's cached one, or
        measured now (and cached)."""
        size = int(image_size)
        if size not in self.choices:
            fingerprint = host_fingerprint(self.providers, model.device)
            path = choice_path(self.cache_root, model, size, fingerprint)
            choice = cached_choice(path)
            if choice is not None:
                logger.info("BACKEND auto at %d px, measured %s on this host (%s): %s", size,
                            choice.get("date"), path, choice["parts"])
            else:
                choice = measure_choice(model, size, lambda: self._backend(model, size),
                                        shots=self.shots, reps=self.reps,
                                        min_part_gflop=self.min_part_gflop)
                try:
                    save_choice(choice, path, fingerprint)
                except OSError as e:
                    logger.warning("BACKEND auto: the choice could not be kept in %s (%s); it "
                                   "is measured again next time", path, e)
            self.choices[size] = choice
        return self.choices[size]

    def _backend(self, model, size: int):
        if size not in self._by_size:
            from .runtime import OnnxRuntimeBackend

            folder = cached_export(model, self.cache_root, size, check=self.check,
                                   providers=self.providers)
            # cached_export has just checked the export against the model (signature, weights
            # digest, size): not checked again here
            # no spinning: torch's parts and ONNX Runtime's alternate on the same cores, and
            # ORT's intra-op threads spinning after each run took them from the torch calls that
            # followed (torch 10-100x slower right after an ORT run on this 2-core host)
            self._by_size[size] = OnnxRuntimeBackend(
                folder, image_size=size, providers=self.providers, threads=self.threads,
                optimization=self.optimization, spinning=False)
            logger.info("ONNX Runtime backend at %d px: %s", size, self._by_size[size])
        return self._by_size[size]

    @property
    def sizes(self) -> List[int]:
        return sorted(self._by_size)

    def __repr__(self) -> str:
        mode = "auto" if self.auto else "onnxruntime"
        return f"OnnxBackends({mode}, {self.cache_root}, sizes {self.sizes}, {self.providers})"


def auto_unavailable(cfg) -> str:
    """Why ``BACKEND auto`` must run everything in torch ('' if it can measure): onnx or
    onnxruntime missing, or a setting the float32 eager graphs do not compute."""
    d = cfg.MODEL.DIFFEWS
    if d.INFERENCE_DTYPE != "float32":
        return f"INFERENCE_DTYPE {d.INFERENCE_DTYPE} (the graphs are float32)"
    if d.COMPILE:
        return "COMPILE True (the graphs are of the eager model)"
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed"
    return ""


def _cache_root(cfg, weights: str, required: bool = True) -> str:
    """Where exports (and auto's choices) are kept; '' when not writable and not ``required``."""
    d = cfg.MODEL.DIFFEWS
    if d.ONNX_CACHE_DIR:
        return d.ONNX_CACHE_DIR
    root = weights or d.PRETRAINED
    folder = os.path.dirname(os.path.abspath(root)) if os.path.isfile(root) else root
    if not os.access(folder, os.W_OK):
        if not required:
            return ""
        raise OSError(f"{folder}: not writable, so the ONNX export cannot be kept beside the "
                      "weights; set MODEL.DIFFEWS.ONNX_CACHE_DIR to a writable folder")
    return root


def backend_from_config(model, cfg, weights: str = "") -> Optional[OnnxBackends]:
    """The backends that ``MODEL.DIFFEWS.BACKEND`` asks for (None for "torch", or for "auto"
    where it cannot measure or chose torch for every part), with the export (and auto's choice) at
    ``INPUT.IMAGE_SIZE`` made or found now, so that its cost and log line come at load time.

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
    auto = d.BACKEND == "auto"
    if auto:
        why = auto_unavailable(cfg)
        root = "" if why else _cache_root(cfg, weights, required=False)
        if not why and not root:
            why = "no writable folder for the exports (set MODEL.DIFFEWS.ONNX_CACHE_DIR)"
        if why:
            logger.info("BACKEND auto: every part in torch (%s)", why)
            return None
    else:
        root = _cache_root(cfg, weights)
    backends = OnnxBackends(root, config_providers(cfg, model.device),
                            threads=d.ONNX_THREADS or None, optimization=d.ONNX_OPTIMIZATION,
                            auto=auto, shots=cfg.TEST.FSS.SHOT,
                            min_part_gflop=d.AUTO_MIN_PART_GFLOP)
    if not auto:
        backends.get(model, cfg.INPUT.IMAGE_SIZE)
        return backends
    choice = backends.choose(model, cfg.INPUT.IMAGE_SIZE)
    # every part torch at the working size: nothing attached (another size measures on first use
    # only with a backend attached, so a model whose parts all stay torch keeps no overhead)
    return backends if "onnxruntime" in choice["parts"].values() else None
