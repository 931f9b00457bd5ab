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
def reference_episode(model, episode: Dict, vae=None) -> torch.Tensor:
    """(a): the original's per-episode work; returns the (H, W) bool mask.

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
    best = float("inf")
    for _ in range(8):  # the fastest of several products: a peak, not a mean under noise
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


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


def compare_paths(model, episodes: List[Dict], warmup: int = 1, profile_reps: int = 0) -> Dict:
    """Run the three paths on ``episodes`` (all with the same supports), interleaved.

    Args:
        profile_reps: if > 0, also time each path's stages (``profile_path``) over that many
            calls on the first episode, after the timed runs.
    Returns:
        {"latency": {path: [s, ...]}, "support_set_s": s, "agreement": {path: fraction},
         "flops": {path: per episode}, "memory_gib": {path: GiB},
         "profile": {path: {stage: s}} (empty without ``profile_reps``)}.
    """
    device = model.device
    first = episodes[0]
    model.support_cache = None
    _sync(device)
    start = time.perf_counter()
    support_set = model.encode_supports(first["support_images"], first["support_masks"])
    _sync(device)
    support_s = time.perf_counter() - start
    vae = plain_vae(model)
    run = {"reference": lambda e: reference_episode(model, e, vae),
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
    profile = {p: profile_path(model, lambda p=p: run[p](first), profile_reps, vaes=(vae,))
               for p in PATHS} if profile_reps > 0 else {}
    return {"latency": latency, "support_set_s": support_s, "profile": profile,
            "agreement": {p: float(np.mean(v)) for p, v in same.items()},
            "flops": flops, "memory_gib": memory,
            "support_set_flops": count_flops(lambda: model.encode_supports(
                first["support_images"], first["support_masks"]))}


class StageTimer:
    """Wall time per stage of inference: VAE encoder and decoder (forward hooks), UNet support
    pass (8 input channels) and query pass (``DiffewS._unet`` wrapped, so that a support pass
    stopped early is timed too); "other" is the rest (pre- and post-processing, Python)."""

    def __init__(self, model, vaes=()):
        """``vaes``: further VAEs to time as the model's (e.g. ``plain_vae(model)``)."""
        self.model, self.times, self._start, self._hooks = model, {}, {}, []
        for vae in (model.vae, *vaes):
            for name, module in (("vae encode", vae.encoder), ("vae decode", vae.decoder)):
                self._hooks.append(module.register_forward_pre_hook(self._pre(name)))
                self._hooks.append(module.register_forward_hook(self._post(name)))
        plain = model._unet

        def timed(latents, prompt, bank):
            stage = "unet support pass" if bank.writable else "unet query pass"
            _sync(model.device)
            start = time.perf_counter()
            try:
                return plain(latents, prompt, bank)
            finally:
                _sync(model.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start

        model._unet = timed

    def _pre(self, name):
        def hook(module, args):
            _sync(self.model.device)
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            _sync(self.model.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._start.pop(name)
        return hook

    def remove(self):
        for h in self._hooks:
            h.remove()
        del self.model._unet  # back to the class's method


def profile_path(model, fn: Callable[[], object], reps: int = 3, vaes=()) -> Dict[str, float]:
    """Seconds per call of ``fn`` by stage (``StageTimer``), averaged over ``reps`` calls."""
    fn()
    timer = StageTimer(model, vaes)
    try:
        _sync(model.device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(model.device)
        total = (time.perf_counter() - start) / reps
    finally:
        timer.remove()
    out = {k: v / reps for k, v in timer.times.items()}
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out


MODES = {  # name -> (config overrides, K/V storage dtype of the supports)
    "fp32 eager, batch 1 (reference setting)": ([], None),
    "fp16 K/V storage (SupportSet.to(dtype=float16))": ([], torch.float16),
    "bf16 K/V storage": ([], torch.bfloat16),
    "INFERENCE_DTYPE float16": (["MODEL.DIFFEWS.INFERENCE_DTYPE", "float16"], None),
    "INFERENCE_DTYPE bfloat16": (["MODEL.DIFFEWS.INFERENCE_DTYPE", "bfloat16"], None),
    "COMPILE True": (["MODEL.DIFFEWS.COMPILE", True], None),
    "TEST.FSS.BATCH_SIZE 8": (["TEST.FSS.BATCH_SIZE", 8], None),
    "plain path (no channels-last VAE, SUPPORT_PASS_BATCH 1)": (
        ["MODEL.DIFFEWS.VAE_CHANNELS_LAST", False, "MODEL.DIFFEWS.SUPPORT_PASS_BATCH", 1], None),
}


@torch.no_grad()
def _predict_episodes(model, loader, kv_dtype):
    """(episode id -> (H, W) bool mask, evaluator "fss" dict, seconds of the first batch) over a
    test loader; the first batch holds the compilation of a compiled model."""
    from ..evaluation import FSSEvaluator

    evaluator = FSSEvaluator(loader.dataset_name, distributed=False)
    evaluator.reset()
    masks, first_s = {}, None
    start = time.perf_counter()
    for batch in loader:
        if kv_dtype is None:
            outputs = model(batch)
        else:  # the same building blocks as forward, with the keys/values stored in kv_dtype
            outputs = []
            for x in batch:
                s = model.encode_supports(x["support_images"], x["support_masks"]).to(dtype=kv_dtype)
                z = model.encode(model.normalize(x["image"][None]), sample=False)
                pred = model.query_pass(z, s, model.prompt_embeds_test)
                outputs += model.postprocess(model.decode(-pred))
        evaluator.process(batch, outputs)
        for x, y in zip(batch, outputs):
            masks[x["episode_id"]] = y["pred_mask"].cpu()
        if first_s is None:
            first_s = time.perf_counter() - start
    return masks, evaluator.evaluate()["fss"], first_s


def mode_accuracy(cfg, dataset_name: str, modes=None, log=print) -> Dict[str, Dict]:
    """Each speed mode of ``MODES`` on a test set's episodes against the reference setting:
    mean per-episode mask agreement, mIoU and FB-IoU, seconds per episode after the first batch,
    and seconds of the first batch (with ``COMPILE``, the compile time)."""
    from detectron2.modeling import build_model

    from ..checkpoint import load_inference_weights
    from ..data.episode_dataset import build_fss_test_loader

    out, reference = {}, None
    for name in modes or list(MODES):
        opts, kv_dtype = MODES[name]
        c = cfg.clone()
        c.defrost()
        c.merge_from_list(["MODEL.DIFFEWS.SUPPORT_CACHE_SIZE", 0, *opts])
        model = build_model(c).eval()
        load_inference_weights(model, c)
        loader = build_fss_test_loader(c, dataset_name)
        loader.dataset_name = dataset_name
        start = time.perf_counter()
        masks, fss, first_s = _predict_episodes(model, loader, kv_dtype)
        first_n = min(c.TEST.FSS.BATCH_SIZE, len(masks))
        rest = max(len(masks) - first_n, 1)
        seconds = (time.perf_counter() - start - first_s) / rest
        if reference is None:
            reference = masks
        agree = float(np.mean([(masks[k] == reference[k]).float().mean().item() for k in masks]))
        out[name] = {"agreement": agree, "mIoU": fss["mIoU"], "FB-IoU": fss["FB-IoU"],
                     "s_per_episode": seconds, "first_batch_s": first_s}
        log(f"{name}: agreement {100 * agree:.3f}%, mIoU {fss['mIoU']:.2f}, "
            f"FB-IoU {fss['FB-IoU']:.2f}, {seconds:.3f} s/episode, first batch {first_s:.2f} s")
    return out
