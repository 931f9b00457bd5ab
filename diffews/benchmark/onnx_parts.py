# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Per-part timings, torch (fp32 and bf16) vs ONNX Runtime under several session options (graph
optimisation level, threads, thread spinning, static or free symbolic shapes) and OpenVINO on the
same graphs, on a random model (``tools/benchmark.py --onnx-parts``).

Parts: VAE encoder and decoder (batch 1), support pass (1 support, stopped early) and query pass
(1 query, 1 shot). For each part every runtime is timed interleaved with the others
(``utils.timing.interleaved_times``: rotating order, medians): timed one after the other, a
runtime compares this host's speed at two moments, and it drifts 15-20% within minutes. Every
runtime runs on the same inputs as torch fp32, and its max abs difference is kept beside its time,
so a fast but wrong setting shows. ``node_counts`` gives each graph's node count as exported and
after ONNX Runtime's optimisation, with symbolic dimensions free and fixed.
"""

import os
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..modeling.onnx.auto import part_inputs, torch_parts
from ..modeling.onnx.export import export_model
from ..modeling.onnx.graphs import kv_names
from ..utils.timing import interleaved_times, medians
from .random_sd import build_random_diffews

__all__ = ["PARTS", "part_timings", "ort_settings", "format_parts", "node_counts",
           "format_nodes"]

PARTS = ("encode", "decode", "support_pass", "query_pass")


def ort_settings(threads: int) -> List[tuple]:
    """(label, optimisation level, threads, spinning, static shapes) of the ONNX Runtime
    settings tried; the first is the backend's own (level all, no spinning, static shapes)."""
    out = [(f"ort all t{threads}", "all", threads, False, True),
           (f"ort all t{threads} free shapes", "all", threads, False, False),
           (f"ort all t{threads} spinning", "all", threads, True, True),
           (f"ort extended t{threads}", "extended", threads, False, True),
           (f"ort basic t{threads}", "basic", threads, False, True)]
    if threads > 1:
        out.append(("ort all t1", "all", 1, False, True))
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
    """{runtime label: {part: median seconds, "max_diff": max abs difference vs torch fp32}} for
    the random ``model_name`` at ``size`` px with ``threads`` threads; "export" holds the export
    folder (for ``node_counts``)."""
    from ..modeling.onnx.runtime import OnnxRuntimeBackend

    torch.set_num_threads(threads)
    model = build_random_diffews(model_name, 0)
    bf16 = build_random_diffews(model_name, 0, inference_dtype="bfloat16")
    folder = tempfile.mkdtemp(prefix=f"onnx_{model_name}_{size}_")
    t = time.perf_counter()
    manifest = export_model(model, folder, size, check=True)
    log(f"export {time.perf_counter() - t:.1f} s; check max abs diffs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in manifest["check"].items()))
    inputs = part_inputs(model, size)
    first = model.fused_layers[0]
    runtimes: Dict[str, Dict[str, Callable]] = {f"torch t{threads}": torch_parts(model, inputs)}
    bf16_inputs = dict(inputs, support_set=inputs["support_set"].to(dtype=torch.bfloat16))
    runtimes[f"torch bf16 t{threads}"] = torch_parts(bf16, bf16_inputs)
    for label, level, th, spin, static in ort_settings(threads):
        backend = OnnxRuntimeBackend(folder, threads=th, optimization=level, spinning=spin,
                                     static_shapes=static)
        runtimes[label] = {
            "encode": lambda b=backend: b.encode(inputs["images"]),
            "decode": lambda b=backend: b.decode_float(inputs["z"]),
            "support_pass": lambda b=backend: b.support_pass(inputs["z_support"]).keys[first],
            "query_pass": lambda b=backend: b.query_pass(inputs["z"], inputs["support_set"]),
        }
    support = inputs["support_set"]
    names = kv_names(model.fused_layers, "support_")
    kv = {}
    for i, layer in enumerate(model.fused_layers):
        kv[names[2 * i]], kv[names[2 * i + 1]] = (
            support.keys[layer][None],
            support.values[layer][None],
        )
    ov_parts = _openvino_parts(folder, {"encode": {"images": inputs["images"]},
                                        "decode": {"latents": inputs["z"]},
                                        "support_pass": {"latents": inputs["z_support"]},
                                        "query_pass": {"query_latents": inputs["z"], **kv}},
                               threads)
    if ov_parts is not None:
        runtimes[f"openvino f32 t{threads}"] = ov_parts
    base = runtimes[f"torch t{threads}"]
    refs = {p: base[p]().float() for p in PARTS}
    rows: Dict[str, Dict[str, float]] = {label: {} for label in runtimes}
    for p in PARTS:
        med = medians(interleaved_times({label: fns[p] for label, fns in runtimes.items()},
                                        reps=repeats))
        for label, fns in runtimes.items():
            rows[label][p] = med[label]
            diff = float((fns[p]().float() - refs[p]).abs().max())
            rows[label]["max_diff"] = max(rows[label].get("max_diff", 0.0), diff)
        log(f"{p}: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()))
    rows["export"] = folder
    return rows


def node_counts(folder: str, threads: int) -> Dict[str, Dict[str, int]]:
    """{graph: {"exported", "optimised, free shapes", "optimised, static shapes"}} node counts
    (level "all"; batch 1, 1 shot)."""
    from ..modeling.onnx.export import read_manifest
    from ..modeling.onnx.runtime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(folder, threads=threads)
    graphs = read_manifest(folder)["graphs"]
    dims = {"vae_encoder": {"N": 1}, "vae_decoder": {"N": 1}, "support_pass": {"N": 1},
            "query_pass": {"B": 1, "G": 1, "K": 1}}
    return {name: {"exported": graphs[name]["nodes"],
                   "optimised, free shapes": backend.optimized_node_count(name, None),
                   "optimised, static shapes": backend.optimized_node_count(name, dims[name])}
            for name in dims}


def format_nodes(counts: Dict[str, Dict[str, int]]) -> str:
    """A markdown table of ``node_counts``."""
    cols = ["exported", "optimised, free shapes", "optimised, static shapes"]
    lines = ["| graph | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {g} | " + " | ".join(str(c[k]) for k in cols) + " |" for g, c in counts.items()]
    return "\n".join(lines)


def format_parts(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """A markdown table: median seconds per part and speed-up over the first (torch fp32) row."""
    rows = {k: v for k, v in rows.items() if isinstance(v, dict)}
    base = next(iter(rows.values()))
    lines = [title, "", "| runtime | " + " | ".join(PARTS) + " | max abs diff |",
             "|---|" + "---|" * (len(PARTS) + 1)]
    for label, r in rows.items():
        cells = [f"{r[p]:.4f} s ({base[p] / r[p]:.2f}x)" for p in PARTS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['max_diff']:.1e} |")
    return "\n".join(lines)
