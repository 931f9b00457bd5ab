# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Per-part timings, torch vs ONNX Runtime under several session options (graph optimisation
level, threads, thread spinning) and OpenVINO on the same graphs, on a random model
(``tools/benchmark.py --onnx-parts``).

Parts: VAE encoder and decoder (batch 1), support pass (1 support, stopped early) and query pass
(1 query, 1 shot), each the fastest of its repeats. Every runtime runs on the same inputs as
torch, and its max abs difference is kept beside its time, so a fast but wrong setting shows.
"""

import os
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..modeling.onnx.export import export_model
from ..modeling.onnx.graphs import kv_names
from .random_sd import build_random_diffews

__all__ = ["PARTS", "best_time", "part_timings", "ort_settings", "format_parts"]

PARTS = ("encode", "decode", "support_pass", "query_pass")


def best_time(fn: Callable, repeats: int) -> float:
    """The fastest of ``repeats`` runs after a warm-up: on shared cores the minimum is the least
    disturbed by other processes (the median moved by 3x between runs on a loaded machine)."""
    fn()  # warm-up (first runs allocate and, in ORT / OpenVINO, plan)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ort_settings(threads: int) -> List[tuple]:
    """(label, optimisation level, threads, spinning) of the ONNX Runtime settings tried."""
    out = [(f"ort {lvl} t{threads}", lvl, threads, None) for lvl in ("all", "extended", "basic")]
    out.append((f"ort all t{threads} no spinning", "all", threads, False))
    if threads > 1:
        out.append(("ort all t1", "all", 1, None))
    return out


def _openvino_parts(folder: str, inputs: Dict[str, Dict[str, torch.Tensor]], threads: int
                    ) -> Optional[Dict[str, Callable]]:
    """Callables running each graph in OpenVINO (f32, static shapes of ``inputs``), or None
    when openvino is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)}
    graphs = {"encode": "vae_encoder", "decode": "vae_decoder", "support_pass": "support_pass",
              "query_pass": "query_pass"}
    parts = {}
    for part, graph in graphs.items():
        model = core.read_model(os.path.join(folder, f"{graph}.onnx"))
        feed = {k: v.numpy() for k, v in inputs[part].items()}
        model.reshape({k: list(v.shape) for k, v in feed.items()})
        compiled = core.compile_model(model, "CPU", config)
        parts[part] = (lambda c=compiled, f=feed: torch.from_numpy(np.asarray(c(f)[0])))
    return parts


@torch.no_grad()
def part_timings(model_name: str, size: int, threads: int, repeats: int = 5,
                 log=print) -> Dict[str, Dict[str, float]]:
    """{runtime label: {part: seconds, "max_diff": max abs difference vs torch}} for the random
    ``model_name`` at ``size`` px with ``threads`` threads."""
    from ..modeling.onnx.runtime import OnnxRuntimeBackend

    torch.set_num_threads(threads)
    model = build_random_diffews(model_name, 0)
    folder = tempfile.mkdtemp(prefix=f"onnx_{model_name}_{size}_")
    t = time.perf_counter()
    manifest = export_model(model, folder, size, check=True)
    log(f"export {time.perf_counter() - t:.1f} s; check max abs diffs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in manifest["check"].items()))
    c, s = manifest["latent_channels"], manifest["latent_size"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(1, c, s, s, generator=g)
    z_support = torch.randn(1, 2 * c, s, s, generator=g)
    prompt = model.prompt_embeds_test
    support = model.support_pass(z_support, prompt, stop_early=True)[0]
    first = model.fused_layers[0]
    torch_parts = {
        "encode": lambda: model.encode(images, sample=False),
        "decode": lambda: model.vae.decode(z / model.latent_scale).sample,
        "support_pass": lambda: model.support_pass(z_support, prompt, stop_early=True)[0]
        .keys[first],
        "query_pass": lambda: model.query_pass(z, support, prompt),
    }
    refs = {k: f() for k, f in torch_parts.items()}

    def measure(parts):
        row = {k: best_time(f, repeats) for k, f in parts.items()}
        row["max_diff"] = max(float((parts[k]() - refs[k]).abs().max()) for k in PARTS)
        return row

    rows = {f"torch t{threads}": {k: best_time(f, repeats) for k, f in torch_parts.items()}}
    rows[f"torch t{threads}"]["max_diff"] = 0.0
    for label, level, th, spin in ort_settings(threads):
        backend = OnnxRuntimeBackend(folder, threads=th, optimization=level, spinning=spin)
        rows[label] = measure({
            "encode": lambda: backend.encode(images),
            "decode": lambda: backend.decode_float(z),
            "support_pass": lambda: backend.support_pass(z_support).keys[first],
            "query_pass": lambda: backend.query_pass(z, support),
        })
    names = kv_names(model.fused_layers, "support_")
    kv = {}
    for i, layer in enumerate(model.fused_layers):
        kv[names[2 * i]], kv[names[2 * i + 1]] = support.keys[layer][None], support.values[layer][None]
    ov_parts = _openvino_parts(folder, {"encode": {"images": images}, "decode": {"latents": z},
                                        "support_pass": {"latents": z_support},
                                        "query_pass": {"query_latents": z, **kv}}, threads)
    if ov_parts is not None:
        rows[f"openvino f32 t{threads}"] = measure(ov_parts)
    return rows


def format_parts(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """A markdown table: seconds per part and speed-up over the first (torch) row."""
    base = next(iter(rows.values()))
    lines = [title, "", "| runtime | " + " | ".join(PARTS) + " | max abs diff |",
             "|---|" + "---|" * (len(PARTS) + 1)]
    for label, r in rows.items():
        cells = [f"{r[p]:.4f} s ({base[p] / r[p]:.2f}x)" for p in PARTS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['max_diff']:.1e} |")
    return "\n".join(lines)
