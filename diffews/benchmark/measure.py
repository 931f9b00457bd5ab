# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Measuring instruments of the benchmark: the device's peak rate and wall time per inference stage
(VAE encode/decode, UNet support/query pass). FLOPs of a call: ``diffews.utils.flops``; peak
memory and device synchronisation: ``diffews.utils.timing``."""

import time
from typing import Callable, Dict

import torch

from ..utils.timing import sync

__all__ = ["device_peak_gflops", "StageTimer", "profile_path"]

# dense peak TFLOP/s of common GPUs, for "% of peak" (fp32 without TF32 / bf16 tensor cores)
GPU_PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0),
                   "L40S": (91.6, 362.0), "4090": (82.6, 165.0), "A6000": (38.7, 155.0)}


def device_peak_gflops(device: torch.device, dtype=torch.float32) -> float:
    """The device's peak GFLOP/s: a GPU's datasheet figure if known, else (CPU, unknown GPU) the
    measured throughput of a large matrix product in ``dtype``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (fp32, bf16) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return 1000.0 * (fp32 if dtype == torch.float32 else bf16)
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(8):  # the fastest of several products: a peak, not a mean under noise
        sync(device)
        start = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


class StageTimer:
    """Wall time per stage of inference: VAE encoder and decoder (forward hooks), UNet support
    pass (8 input channels) and query pass (``DiffewS._unet`` wrapped, so that a support pass
    stopped early is timed too); "other" is the rest (pre- and post-processing, Python).
    ONNX Runtime backends' graph runs are timed under the same stage names."""

    # backend method -> stage (``OnnxRuntimeBackend``: the methods the model's blocks call)
    BACKEND_STAGES = {"encode": "vae encode", "decode_float": "vae decode",
                      "support_pass": "unet support pass", "query_pass": "unet query pass"}

    def __init__(self, model, vaes=(), backends=()):
        """``vaes``: further VAEs to time as the model's (e.g. ``plain_vae(model)``);
        ``backends``: ``OnnxRuntimeBackend`` objects whose graph runs are timed by stage."""
        self.model, self.times, self._start, self._hooks = model, {}, {}, []
        self._backends = list(backends)
        for backend in self._backends:
            for method, stage in self.BACKEND_STAGES.items():
                setattr(backend, method, self._timed(getattr(backend, method), stage))
        for vae in (model.vae, *vaes):
            for name, module in (("vae encode", vae.encoder), ("vae decode", vae.decoder)):
                self._hooks.append(module.register_forward_pre_hook(self._pre(name)))
                self._hooks.append(module.register_forward_hook(self._post(name)))
        plain = model._unet

        def timed(latents, prompt, bank):
            stage = "unet support pass" if bank.writable else "unet query pass"
            sync(model.device)
            start = time.perf_counter()
            try:
                return plain(latents, prompt, bank)
            finally:
                sync(model.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start

        model._unet = timed

    def _timed(self, fn, stage):
        def timed(*args, **kwargs):
            sync(self.model.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.model.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
        return timed

    def _pre(self, name):
        def hook(module, args):
            sync(self.model.device)
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            sync(self.model.device)
            self.times[name] = (
                self.times.get(name, 0.0) + time.perf_counter() - self._start.pop(name)
            )

        return hook

    def remove(self):
        for h in self._hooks:
            h.remove()
        del self.model._unet  # back to the class's method
        for backend in self._backends:
            for method in self.BACKEND_STAGES:
                delattr(backend, method)


def profile_path(model, fn: Callable[[], object], reps: int = 3, vaes=(), backends=()
                 ) -> Dict[str, float]:
    """Seconds per call of ``fn`` by stage (``StageTimer``), averaged over ``reps`` calls."""
    fn()
    timer = StageTimer(model, vaes, backends)
    try:
        sync(model.device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(model.device)
        total = (time.perf_counter() - start) / reps
    finally:
        timer.remove()
    out = {k: v / reps for k, v in timer.times.items()}
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out
