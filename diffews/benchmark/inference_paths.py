# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Side-by-side inference benchmark of three paths on the same episodes (``tools/benchmark.py
--compare``).

* (a) ``plain``: the original implementation's per-episode work as we read it, written with plain
  diffusers calls (our look-alike of it, not the original code: ``original_side.py`` times that):
  every support image, every support mask and the query VAE-encoded in its own call
  (``latent_dist.mean``), the full support pass on the K supports every episode, the query pass, the
  decode, batch 1.
* (b) ``default``: ``DiffewS.forward`` on the episode, as the benchmarks run it (support latent
  cache off, so every episode encodes its supports).
* (c) ``reuse``: one ``SupportSet`` encoded once (its cost reported apart), then per query only
  the query encode, the query pass and the decode (the video / instance-segmentation case).

With an ONNX Runtime backend (``backend``, ``MODEL.DIFFEWS.BACKEND onnxruntime``), two more:

* (d) ``onnxruntime``: (b) with the backend attached (its VAE, support-pass and query-pass graphs);
* (e) ``onnxruntime reuse``: (c) with the backend, its SupportSet encoded by the backend.

All episodes share one support set (so that (c) applies) and have their own query. Paths run
interleaved episode by episode in a rotating order, so that drift of the machine's speed hits all
of them alike. Masks are compared with path (a)'s.
"""

import time
from typing import Dict, List

import numpy as np
import torch

from ..modeling.kv_fusion import KVBank
from ..utils.flops import count_flops
from ..utils.timing import peak_memory_of, sync
from .measure import profile_path

__all__ = ["PATHS", "BACKEND_PATHS", "plain_episode", "default_episode", "reuse_query",
           "compare_paths"]

PATHS = ("plain", "default", "reuse")
BACKEND_PATHS = ("onnxruntime", "onnxruntime reuse")
# the torch path computing the same function as each backend path: FLOPs are counted on it
# (torch's FLOP counter does not see inside ONNX Runtime)
SAME_WORK = {"onnxruntime": "default", "onnxruntime reuse": "reuse"}


def plain_episode(model, episode: Dict, vae=None) -> torch.Tensor:
    """(a): the original's per-episode work, written with plain diffusers calls; returns the (H, W)
    bool mask.

    Args:
        vae: the VAE to use (``plain_vae(model)``: contiguous memory format, as the original
            keeps it); default the model's own.
    """
    vae = vae if vae is not None else model.vae

    def enc(x):
        return vae.encode(x.to(vae.dtype)).latent_dist.mean * model.latent_scale

    images, masks = episode["support_images"], episode["support_masks"]
    z_support = torch.cat([torch.cat([enc(model.normalize(images[i:i + 1])),
                                      enc(model.mask_to_image(masks[i:i + 1]))], dim=1)
                           for i in range(len(images))])
    z_query = enc(model.normalize(episode["image"][None]))
    prompt = model.prompt_embeds_test
    bank = KVBank()
    model._unet(z_support, prompt, bank)  # full support pass on all K supports
    pred = model._unet(z_query, prompt, KVBank(bank.to_support_set(z_support)))
    image = vae.decode(-pred.to(vae.dtype) / model.latent_scale).sample
    image = ((image.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0).clamp(0, 255).to(torch.uint8)
    return model.threshold(image[0])


def plain_vae(model):
    """A copy of the model's VAE in the default (contiguous) memory format."""
    import copy

    return copy.deepcopy(model.vae).to(memory_format=torch.contiguous_format)


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


def with_backend(model, backend, fn):
    """``fn()`` with ``backend`` attached to ``model`` (detached again afterwards)."""
    model.use_backend(backend)
    try:
        return fn()
    finally:
        model.use_backend(None)


def compare_paths(model, episodes: List[Dict], warmup: int = 1, profile_reps: int = 0,
                  backend=None) -> Dict:
    """Run the paths on ``episodes`` (all with the same supports), interleaved.

    Args:
        profile_reps: if > 0, also time each path's stages (``profile_path``) over that many
            calls on the first episode, after the timed runs.
        backend: an ``OnnxBackends`` (``modeling.onnx.attach``): adds ``BACKEND_PATHS``; the
            torch paths run with no backend attached.
    Returns:
        {"paths": [...], "latency": {path: [s, ...]}, "support_set_s": {path: s} for the reuse
         paths, "agreement": {path: fraction}, "flops": {path: per episode},
         "memory_gib": {path: GiB}, "profile": {path: {stage: s}} (empty without
         ``profile_reps``)}.
    """
    # every episode must encode its supports (path b as a benchmark runs it): the model's support
    # latent cache is switched off for the comparison and restored afterwards, even on an error
    cache, model.support_cache = model.support_cache, None
    attached = model.inference_backend
    model.use_backend(None)
    try:
        return _compare(model, episodes, warmup, profile_reps, backend)
    finally:
        model.support_cache = cache
        model.use_backend(attached)


def _encode_once(model, first: Dict):
    sync(model.device)
    start = time.perf_counter()
    support_set = model.encode_supports(first["support_images"], first["support_masks"])
    sync(model.device)
    return support_set, time.perf_counter() - start


def _compare(model, episodes: List[Dict], warmup: int, profile_reps: int, backend) -> Dict:
    device = model.device
    first = episodes[0]
    paths = PATHS + (BACKEND_PATHS if backend is not None else ())
    support_set, support_s = _encode_once(model, first)
    support_s = {"reuse": support_s}
    vae = plain_vae(model)
    run = {"plain": lambda e: plain_episode(model, e, vae),
           "default": lambda e: default_episode(model, e),
           "reuse": lambda e: reuse_query(model, support_set, e)}
    backends = ()
    if backend is not None:
        backends = (backend.get(model, first["image"].shape[-1]),)  # exported before timing
        ort_set, support_s["onnxruntime reuse"] = with_backend(
            model, backend, lambda: _encode_once(model, first))
        run["onnxruntime"] = lambda e: with_backend(model, backend,
                                                    lambda: default_episode(model, e))
        run["onnxruntime reuse"] = lambda e: with_backend(
            model, backend, lambda: reuse_query(model, ort_set, e))
    for e in episodes[:warmup]:
        for fn in run.values():
            fn(e)
    latency = {p: [] for p in paths}
    same = {p: [] for p in paths}
    for i, e in enumerate(episodes):
        k = i % len(paths)
        order = paths[k:] + paths[:k]
        masks = {}
        for p in order:
            sync(device)
            start = time.perf_counter()
            masks[p] = run[p](e)
            sync(device)
            latency[p].append(time.perf_counter() - start)
        for p in paths:
            same[p].append((masks[p] == masks["plain"]).float().mean().item())
    flops = {p: count_flops(lambda p=p: run[SAME_WORK.get(p, p)](first)) for p in paths}
    memory = {p: peak_memory_of(lambda p=p: run[p](first), device) for p in paths}
    profile = {p: profile_path(model, lambda p=p: run[p](first), profile_reps, vaes=(vae,),
                               backends=backends)
               for p in paths} if profile_reps > 0 else {}
    return {"paths": list(paths), "latency": latency, "support_set_s": support_s,
            "profile": profile,
            "agreement": {p: float(np.mean(v)) for p, v in same.items()},
            "flops": flops, "memory_gib": memory,
            "support_set_flops": count_flops(lambda: model.encode_supports(
                first["support_images"], first["support_masks"]))}
