# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The GPU suite's ONNX Runtime rows (``tools/benchmark.py --suite gpu``): the same inference
settings as the torch rows ({1, 5}-shot x batch {1, 8}, ``DiffewS.forward``) with the backend
attached, under the CUDA execution provider (fp32) and the TensorRT execution provider (fp16
engines built from the fp32 graphs), each twice: every part in ONNX Runtime (``MODEL.DIFFEWS.
BACKEND onnxruntime``) and each part where it measured faster against torch on this GPU
(``BACKEND auto``; its choice is printed in the row's status). On a CPU dry run the CPU execution
provider runs the same code; a row whose provider is missing says "not run" and why.
"""

import itertools
import os
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch

from .random_sd import build_random_diffews

__all__ = ["ORT_RUNTIMES", "ort_providers", "ort_rows"]

ORT_RUNTIMES = ("cuda", "tensorrt")  # the rows of a GPU run; "cpu" is the dry run's


def ort_providers(runtime: str, cache_dir: str) -> Tuple[List, str]:
    """(providers, dtype label) of a runtime: its execution provider first, then fallbacks."""
    if runtime == "cpu":
        return ["CPUExecutionProvider"], "float32"
    if runtime == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "float32"
    if runtime == "tensorrt":
        # fp16 engines, cached so that a shape built once is not built again; nodes TensorRT
        # cannot take fall back to CUDA
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": os.path.join(cache_dir, "trt")}
        return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider",
                "CPUExecutionProvider"], "float16 (TensorRT)"
    raise ValueError(f"unknown ONNX Runtime runtime {runtime!r}: one of cpu, cuda, tensorrt")


def _unavailable(runtime: str, providers: List, device: torch.device) -> str:
    """Why the runtime cannot run here ('' if it can)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return "not run (onnx / onnxruntime not installed: pip install onnx onnxruntime)"
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if first not in ort.get_available_providers():
        return f"not run ({first} not available in this onnxruntime)"
    if runtime != "cpu" and device.type != "cuda":
        return f"not run ({first} needs a CUDA device)"
    return ""


def ort_rows(device: torch.device, model_name: str, size: int, reps: int,
             time_inference: Callable, runtimes=ORT_RUNTIMES, budget_s: float = 300.0,
             log=print) -> List[Dict]:
    """One row per runtime x {1, 5}-shot x batch {1, 8}, timed by ``time_inference(model,
    shots, batch, size, reps)`` with the backend attached; the export (made and checked with
    the CUDA or CPU provider) is timed apart as ``export_s``."""
    from ..modeling.onnx import cached_export
    from ..modeling.onnx.attach import OnnxBackends

    start = time.perf_counter()
    rows: List[Dict] = []
    settings = list(itertools.product((1, 5), (1, 8)))
    for runtime in runtimes:
        cache = tempfile.mkdtemp(prefix=f"suite_onnx_{runtime}_")
        providers, dtype = ort_providers(runtime, cache)
        base = {"what": "inference", "runtime": f"onnxruntime {runtime}", "dtype": dtype,
                "compile": False}
        why = _unavailable(runtime, providers, device)
        if not why and time.perf_counter() - start > budget_s:
            why = "not run (time budget)"
        if why:
            rows += [{**base, "runtime": f"{base['runtime']}{suffix}", "shots": k, "batch": b,
                      "status": why} for suffix in ("", " auto") for k, b in settings]
            continue
        model = build_random_diffews(model_name).to(device)
        model.support_cache = None
        t = time.perf_counter()
        check_providers = providers[1:] if runtime == "tensorrt" else providers
        cached_export(model, cache, size, providers=check_providers)
        export_s = time.perf_counter() - t
        for auto in (False, True):
            backends = OnnxBackends(cache, providers, auto=auto)
            status = "ok"
            if auto:  # measured now, against torch on this device (min_part_gflop: default)
                parts = backends.choose(model, size)["parts"]
                status = "ok; auto: " + ", ".join(f"{p} {r}" for p, r in parts.items())
            model.use_backend(backends)
            label = f"{base['runtime']}{' auto' if auto else ''}"
            for shots, batch in settings:
                row = {**base, "runtime": label, "shots": shots, "batch": batch,
                       "export_s": export_s}
                if time.perf_counter() - start > budget_s:
                    rows.append({**row, "status": "not run (time budget)"})
                    continue
                rows.append({**row, **time_inference(model, shots, batch, size, reps),
                             "status": status})
                log(f"{label} {shots}-shot batch {batch}: "
                    f"{rows[-1]['ms_per_episode']:.1f} ms/episode")
            model.use_backend(None)
        del model
    return rows
