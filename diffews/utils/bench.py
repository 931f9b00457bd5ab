# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Side-by-side inference benchmark of three paths on the same episodes (``tools/benchmark.py
--compare``).

* (a) ``reference``: the original implementation's per-episode work, written with plain diffusers
  calls: every support image, every support mask and the query VAE-encoded in its own call
  (``latent_dist.mean``), the full support pass on the K supports every episode, the query pass,
  the decode, batch 1.
* (b) ``default``: ``DiffewS.forward`` on the episode, as the benchmarks run it (support latent
  cache off, so every episode encodes its supports).
* (c) ``reuse``: one ``SupportSet`` encoded once (its cost reported apart), then per query only
  the query encode, the query pass and the decode (the video / instance-segmentation case).

All episodes share one support set (so that (c) applies) and have their own query. Paths run
interleaved episode by episode in a rotating order, so that drift of the machine's speed hits all
three alike. Masks are compared with path (a)'s.
"""

import time
from typing import Callable, Dict, List

import numpy as np
import torch

from ..modeling.kv_fusion import KVBank

__all__ = ["PATHS", "reference_episode", "default_episode", "reuse_query", "compare_paths",
           "device_peak_gflops", "count_flops", "peak_memory_of"]

PATHS = ("reference", "default", "reuse")
# dense peak TFLOP/s of common GPUs, for "% of peak" (fp32 without TF32 / bf16 tensor cores)
GPU_PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0),
                   "L40S": (91.6, 362.0), "4090": (82.6, 165.0), "A6000": (38.7, 155.0)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def reference_episode(model, episode: Dict) -> torch.Tensor:
    """(a): the original's per-episode work; returns the (H, W) bool mask."""
    def enc(x):
        return model.vae.encode(x.to(model.vae.dtype)).latent_dist.mean * model.latent_scale

    images, masks = episode["support_images"], episode["support_masks"]
    z_support = torch.cat([torch.cat([enc(model.normalize(images[i:i + 1])),
                                      enc(model.mask_to_image(masks[i:i + 1]))], dim=1)
                           for i in range(len(images))])
    z_query = enc(model.normalize(episode["image"][None]))
    prompt = model.prompt_embeds_test
    bank = KVBank()
    model._unet(z_support, prompt, bank)  # full support pass on all K supports
    pred = model._unet(z_query, prompt, KVBank(bank.to_support_set(z_support)))
    return model.threshold(model.decode(-pred)[0])


@torch.no_grad()
def default_episode(model, episode: Dict) -> torch.Tensor:
    """(b): ``DiffewS.forward`` on the episode."""
    return model([episode])[0]["pred_mask"]


@torch.no_grad()
def reuse_query(model, support_set, episode: Dict) -> torch.Tensor:
    """(c): the query only, against an already encoded SupportSet."""
    z = model.encode(model.normalize(episode["image"][None]), sample=False)
    pred = model.query_pass(z, support_set, model.prompt_embeds_test)
    return model.postprocess(model.decode(-pred))[0]["pred_mask"]


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call, by torch's FLOP counter (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


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
    _sync(device)
    start, reps = time.perf_counter(), 3 if device.type == "cpu" else 20
    for _ in range(reps):
        a @ a
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def peak_memory_of(fn: Callable[[], object], device: torch.device) -> float:
    """GiB above the baseline while ``fn`` runs: CUDA's allocator peak, or on the CPU (Linux) the
    process's peak resident set (VmHWM, reset first through /proc/self/clear_refs) above its
    resident set before the call; NaN where neither is available."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set to the current one
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) / 2 ** 20
    except OSError:
        fn()
        return float("nan")


def compare_paths(model, episodes: List[Dict], warmup: int = 1) -> Dict:
    """Run the three paths on ``episodes`` (all with the same supports), interleaved.

    Returns:
        {"latency": {path: [s, ...]}, "support_set_s": s, "agreement": {path: fraction},
         "flops": {path: per episode}, "memory_gib": {path: GiB}}.
    """
    device = model.device
    first = episodes[0]
    model.support_cache = None
    _sync(device)
    start = time.perf_counter()
    support_set = model.encode_supports(first["support_images"], first["support_masks"])
    _sync(device)
    support_s = time.perf_counter() - start
    run = {"reference": lambda e: reference_episode(model, e),
           "default": lambda e: default_episode(model, e),
           "reuse": lambda e: reuse_query(model, support_set, e)}
    for e in episodes[:warmup]:
        for fn in run.values():
            fn(e)
    latency = {p: [] for p in PATHS}
    same = {p: [] for p in PATHS}
    for i, e in enumerate(episodes):
        order = PATHS[i % 3:] + PATHS[:i % 3]
        masks = {}
        for p in order:
            _sync(device)
            start = time.perf_counter()
            masks[p] = run[p](e)
            _sync(device)
            latency[p].append(time.perf_counter() - start)
        for p in PATHS:
            same[p].append((masks[p] == masks["reference"]).float().mean().item())
    flops = {p: count_flops(lambda p=p: run[p](first)) for p in PATHS}
    memory = {p: peak_memory_of(lambda p=p: run[p](first), device) for p in PATHS}
    return {"latency": latency, "support_set_s": support_s,
            "agreement": {p: float(np.mean(v)) for p, v in same.items()},
            "flops": flops, "memory_gib": memory,
            "support_set_flops": count_flops(lambda: model.encode_supports(
                first["support_images"], first["support_masks"]))}
