# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``MODEL.DIFFEWS.BACKEND auto``: for each part, the faster of torch and ONNX Runtime on this host.

Parts: the VAE encoder, the VAE decoder, the support pass and the query pass (``PARTS``). On first
use at a working size, ``measure_choice``:

1. counts each part's FLOPs in torch (one call each, torch's FLOP counter). A part under
   ``min_part_gflop`` stays torch without an export: the export costs tens of seconds for a real
   model, and ONNX Runtime can save at most a share of a call of a few milliseconds (1 GFLOP is
   5-10 ms at this CPU's 100-200 GFLOP/s). The count does not depend on the machine's load (a
   time gate did: under a load average of 10 on 2 cores, torch's OpenMP barriers made the tiny
   model's 5 ms parts take 50 ms-3 s). The test suite's tiny models (0.01-0.2 GFLOP per part at
   64 px) end here, so ``auto`` costs them one counted call per part;
2. for the other parts, exports the model (``cached_export``, beside the weights) and times torch
   and ONNX Runtime interleaved (``utils.timing.interleaved_times``: rotating order, ``reps``
   rounds, medians), and keeps ONNX Runtime where its median beats torch's by more than
   ``margin`` (ties go to torch, the exact reference).

The choice is written to ``<cache root>/onnx/auto/<size>px-<export key>-<host key>.json``: the
host key is a hash of ``host_fingerprint()`` (CPU model and flags, cores, threads, library versions,
providers, GPU name), so another machine or another onnxruntime measures again, and the export key
(``cache.export_key``) ties it to the model. Delete the file to measure again.
"""

import datetime
import hashlib
import json
import logging
import os
import platform
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ...utils.atomic import atomic_write_json
from ...utils.flops import count_flops
from ...utils.timing import interleaved_times, load_average, medians
from .cache import export_key

logger = logging.getLogger(__name__)

__all__ = ["PARTS", "host_fingerprint", "choice_path", "part_inputs", "torch_parts", "ort_parts",
           "measure_choice", "cached_choice"]

PARTS = ("encode", "decode", "support_pass", "query_pass")
CHOICE_VERSION = 1


def _cpu() -> Dict[str, str]:
    """CPU model name and a hash of its feature flags (the ISA decides which kernels run:
    avx512_bf16, amx...), from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = value.strip()
    except OSError:
        pass
    return {"cpu": name, "cpu_flags": hashlib.sha1(flags.encode()).hexdigest()[:12]}


def host_fingerprint(providers: Sequence = (), device: Optional[torch.device] = None) -> Dict:
    """What a timing depends on besides the model: CPU model and flags, core count, torch's
    thread count, torch / onnxruntime / onnx / diffusers versions, ONNX Runtime providers and the
    GPU's name on a CUDA device."""
    import diffusers

    fp = {**_cpu(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
          "torch": torch.__version__, "diffusers": diffusers.__version__,
          "providers": [p if isinstance(p, str) else p[0] for p in providers]}
    for name in ("onnxruntime", "onnx"):
        try:
            fp[name] = __import__(name).__version__
        except ImportError:
            fp[name] = None
    if device is not None and torch.device(device).type == "cuda":
        fp["gpu"] = torch.cuda.get_device_name(device)
    return fp


def choice_path(cache_root: str, model, image_size: int, fingerprint: Dict) -> str:
    """Where the choice for ``model`` at ``image_size`` on this host is kept."""
    root = os.path.abspath(cache_root)
    if os.path.isfile(root):
        root = os.path.dirname(root)
    host = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(root, "onnx", "auto",
                        f"{int(image_size)}px-{export_key(model, image_size)}-{host}.json")


def cached_choice(path: str) -> Optional[Dict]:
    """The choice stored at ``path``, or None (missing, unreadable or of another version)."""
    try:
        with open(path) as f:
            choice = json.load(f)
    except (OSError, ValueError):
        return None
    parts = choice.get("parts", {})
    if choice.get("version") != CHOICE_VERSION or set(parts) != set(PARTS) or any(
            v not in ("torch", "onnxruntime") for v in parts.values()):
        return None
    return choice


@torch.no_grad()
def part_inputs(model, image_size: int, shots: int = 1) -> Dict[str, torch.Tensor]:
    """Random inputs of each part at ``image_size``, batch 1 (seeded): images in [-1, 1],
    query latents, ``shots`` support latents and their torch SupportSet."""
    f = 2 ** (len(model.vae.config.block_out_channels) - 1)
    c, s = int(model.vae.config.latent_channels), int(image_size) // f
    g = torch.Generator().manual_seed(0)
    device = model.device
    out = {"images": (torch.rand(1, 3, image_size, image_size, generator=g) * 2 - 1).to(device),
           "z": torch.randn(1, c, s, s, generator=g).to(device),
           "z_support": torch.randn(shots, 2 * c, s, s, generator=g).to(device)}
    out["support_set"] = model.support_pass(out["z_support"], model.prompt_embeds_test,
                                            stop_early=True)[0]
    return out


def torch_parts(model, inputs: Dict) -> Dict[str, Callable[[], torch.Tensor]]:
    """The model's own torch calls of each part (call them with no backend attached)."""
    prompt = model.prompt_embeds_test
    first = model.fused_layers[0]
    return {
        "encode": lambda: model.encode(inputs["images"], sample=False),
        "decode": lambda: model.vae.decode(inputs["z"].to(model.vae.dtype)
                                           / model.latent_scale).sample,
        "support_pass": lambda: model.support_pass(inputs["z_support"], prompt,
                                                   stop_early=True)[0].keys[first],
        "query_pass": lambda: model.query_pass(inputs["z"], inputs["support_set"], prompt),
    }


def ort_parts(backend, inputs: Dict, first_layer: str) -> Dict[str, Callable[[], torch.Tensor]]:
    """The same calls on an ``OnnxRuntimeBackend``."""
    return {
        "encode": lambda: backend.encode(inputs["images"]),
        "decode": lambda: backend.decode_float(inputs["z"]),
        "support_pass": lambda: backend.support_pass(inputs["z_support"]).keys[first_layer],
        "query_pass": lambda: backend.query_pass(inputs["z"], inputs["support_set"]),
    }


@torch.no_grad()
def measure_choice(model, image_size: int, make_backend: Callable[[], object], shots: int = 1,
                   reps: int = 5, min_part_gflop: float = 1.0, margin: float = 0.03,
                   log: Callable[[str], None] = logger.info) -> Dict:
    """Time the parts and choose a runtime for each (module docstring).

    Args:
        make_backend: returns the ``OnnxRuntimeBackend`` at ``image_size`` (exporting the model
            if needed); called only when some part is slow enough to be measured in both.
        shots: supports of the measured support and query passes.
        reps: interleaved rounds; min_part_gflop, margin: see the module docstring.
    Returns:
        {"version", "image_size", "shots", "parts": {part: "torch" | "onnxruntime"},
         "gflop": {part: GFLOP of one call}, "torch_s",
         "onnxruntime_s": {part: median seconds of the interleaved timing} (measured parts),
         "reason": {part: why}, "load_average", "date"}.
    """
    attached = getattr(model, "inference_backend", None)
    model.inference_backend = None  # torch's own calls; also no recursion through auto
    try:
        inputs = part_inputs(model, image_size, shots)
        fns = torch_parts(model, inputs)
        gflop = {p: count_flops(fns[p]) / 1e9 for p in PARTS}
        slow = [p for p in PARTS if gflop[p] >= min_part_gflop]
        parts = {p: "torch" for p in PARTS}
        reason = {p: f"{gflop[p]:.3f} GFLOP < {min_part_gflop:g}: not exported"
                  for p in PARTS if p not in slow}
        torch_s, ort_s = {}, {}
        if slow:
            backend = make_backend()
            ort = ort_parts(backend, inputs, model.fused_layers[0])
            pairs = {}
            for p in slow:
                pairs[f"torch {p}"], pairs[f"onnxruntime {p}"] = fns[p], ort[p]
            med = medians(interleaved_times(pairs, reps=reps))
            for p in slow:
                torch_s[p], ort_s[p] = med[f"torch {p}"], med[f"onnxruntime {p}"]
                faster = ort_s[p] < torch_s[p] * (1.0 - margin)
                parts[p] = "onnxruntime" if faster else "torch"
                reason[p] = (f"median torch {torch_s[p]:.4f} s, onnxruntime {ort_s[p]:.4f} s "
                             f"({torch_s[p] / ort_s[p]:.2f}x)")
    finally:
        model.inference_backend = attached
    choice = {"version": CHOICE_VERSION, "image_size": int(image_size), "shots": int(shots),
              "parts": parts, "gflop": gflop, "torch_s": torch_s, "onnxruntime_s": ort_s,
              "reason": reason,
              "load_average": load_average(),
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    log(f"BACKEND auto at {image_size} px: " + ", ".join(
        f"{p} {parts[p]} ({reason[p]})" for p in PARTS) + f"; load average {load_average():.2f}")
    return choice


def save_choice(choice: Dict, path: str, fingerprint: Dict) -> None:
    """Write ``choice`` with the fingerprint it was measured under (atomic)."""
    atomic_write_json({**choice, "fingerprint": fingerprint}, path, indent=1)


def describe(choices: Dict[int, Dict]) -> List[str]:
    """One line per size: the runtime of each part."""
    return [f"{size} px: " + ", ".join(f"{p} {c['parts'][p]}" for p in PARTS)
            for size, c in sorted(choices.items())]
