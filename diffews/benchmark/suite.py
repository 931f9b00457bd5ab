# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The GPU benchmark suite (``tools/benchmark.py --suite gpu``): SD 2.1-shaped random weights at
512 px, inference in every speed mode and training steps with and without gradient
checkpointing, in a few minutes; its rows are appended to tools/BENCHMARKS.md.

Inference settings: {1, 5}-shot x {float32, float16, bfloat16} x {eager, torch.compile} x
{batch 1, 8}
episodes per model call (``DiffewS.forward``: each episode with its own supports, as a benchmark
runs them; the support latent cache off). Each setting reports ms per episode (median of
``reps`` timed calls after one warm-up call), the first call's time (which includes compiling),
and the peak memory. Training: one ``EpisodeTrainer`` step (1 episode, K = 2 supports, fp16 AMP,
AdamW, clipping: the reference recipe) with and without gradient checkpointing. ONNX Runtime
rows (``suite_onnx.py``): the inference settings with the backend under the CUDA and TensorRT
(fp16) execution providers; rows whose provider is missing say "not run" and why. SINE rows
(``suite_sine.py``): SINE-L-shaped random weights, FSS episodes in fp32 and under bf16/fp16
autocast.
"""

import datetime
import itertools
import time
from typing import Dict, List

import torch

from ..utils.timing import peak_gib, reset_peak, sync
from .episodes import random_episode
from .random_sd import build_random_diffews
from .suite_onnx import ORT_RUNTIMES, ort_rows
from .suite_sine import sine_rows, sine_train_rows

__all__ = ["run_suite", "format_rows", "append_to_benchmarks"]


@torch.no_grad()
def _time_inference(model, shots: int, batch: int, size: int, reps: int) -> Dict:
    device = model.device
    batches = [[random_episode(shots, size, 100 * r + i) for i in range(batch)]
               for r in range(reps + 1)]
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    model(batches[0])
    sync(device)
    first = time.perf_counter() - start
    times = []
    for episodes in batches[1:]:
        sync(device)
        start = time.perf_counter()
        model(episodes)
        sync(device)
        times.append((time.perf_counter() - start) / batch)
    times.sort()
    return {"ms_per_episode": 1000 * times[len(times) // 2], "first_call_s": first,
            "peak_gib": peak_gib(device)}


def _time_training(model_name: str, device, size: int, checkpointing: bool, reps: int) -> Dict:
    from detectron2.utils.events import EventStorage

    from ..engine.train_loop import EpisodeTrainer

    model = build_random_diffews(model_name).to(device).train()
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
    loader = ([random_episode(2, size, i)] for i in itertools.count())
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-5, weight_decay=0.01)
    amp = "float16" if device.type == "cuda" else None
    trainer = EpisodeTrainer(model, loader, optimizer, accumulation_steps=1, amp=amp,
                             clip_norm=1.0)
    times = []
    reset_peak(device)
    with EventStorage() as storage:
        trainer.storage = storage
        for i in range(reps + 1):
            sync(device)
            start = time.perf_counter()
            trainer.iter = i
            trainer.run_step()
            sync(device)
            if i:
                times.append(time.perf_counter() - start)
    times.sort()
    out = {"s_per_step": times[len(times) // 2], "peak_gib": peak_gib(device)}
    del trainer, model, optimizer
    return out


def run_suite(device: torch.device, model_name: str = "sd21", size: int = 512, reps: int = 5,
              budget_s: float = 270.0, log=print, dtypes=("float32", "float16", "bfloat16"),
              compile_modes=(False, True), onnx_runtimes=ORT_RUNTIMES,
              onnx_budget_s: float = 300.0,
              sine_dtypes=("float32", "bfloat16", "float16")) -> List[Dict]:
    """Every setting of the module docstring (``dtypes`` x ``compile_modes`` narrow them);
    settings that would start after ``budget_s`` seconds are listed with status "not run (time
    budget)" rather than silently dropped. ``onnx_runtimes`` ("cpu", "cuda", "tensorrt") get
    their own ``onnx_budget_s``; ``sine_dtypes`` the SINE rows (``suite_sine.py``; empty:
    none)."""
    start = time.perf_counter()
    rows: List[Dict] = []

    def over():
        return time.perf_counter() - start > budget_s

    for dtype, compiled in itertools.product(dtypes, compile_modes):
        settings = list(itertools.product((1, 5), (1, 8)))
        if over():
            rows += [{"what": "inference", "dtype": dtype, "compile": compiled, "shots": k,
                      "batch": b, "status": "not run (time budget)"} for k, b in settings]
            continue
        model = build_random_diffews(model_name, inference_dtype=dtype, compile=compiled)
        model = model.to(device)
        model.support_cache = None
        for shots, batch in settings:
            row = {"what": "inference", "dtype": dtype, "compile": compiled, "shots": shots,
                   "batch": batch}
            if over():
                rows.append({**row, "status": "not run (time budget)"})
                continue
            rows.append({**row, **_time_inference(model, shots, batch, size, reps), "status": "ok"})
            log(format_rows(rows[-1:]).splitlines()[-1])
        del model
    for checkpointing in (False, True):
        row = {"what": "training step", "checkpointing": checkpointing, "shots": 2, "batch": 1}
        if over():
            rows.append({**row, "status": "not run (time budget)"})
            continue
        try:
            rows.append({**row, **_time_training(model_name, device, size, checkpointing, 3),
                         "status": "ok"})
        except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203 (a row says what happened)
            rows.append({**row, "status": f"out of memory ({str(e).splitlines()[0]})"})
        log(format_rows(rows[-1:]).splitlines()[-1])
    rows += ort_rows(device, model_name, size, reps, _time_inference, onnx_runtimes,
                     onnx_budget_s, log)
    if sine_dtypes:
        rows += sine_rows(device, tiny=model_name == "tiny", reps=reps, log=log,
                          dtypes=sine_dtypes)
        rows += sine_train_rows(device, tiny=model_name == "tiny", log=log,
                                dtypes=[d for d in sine_dtypes if d != "float16"])
    return rows


def format_rows(rows: List[Dict]) -> str:
    """A markdown table of suite rows."""
    lines = ["| what | dtype | compile | shots | batch | ms / episode or s / step | first call s "
             "| peak GiB | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] in ("inference", "SINE inference"):
            what, dtype, comp = r["what"], r["dtype"], "on" if r["compile"] else "off"
            if r.get("runtime"):  # the ONNX Runtime rows (suite_onnx.py)
                what = f"inference, {r['runtime']}"
            value = f"{r['ms_per_episode']:.1f} ms" if "ms_per_episode" in r else ""
            first = f"{r['first_call_s']:.1f}" if "first_call_s" in r else ""
        elif r["what"] == "SINE training iteration":
            what, dtype, comp, first = r["what"], r["dtype"], "off", ""
            value = f"{r['s_per_step']:.3f} s" if "s_per_step" in r else ""
        else:
            what = "training step" + (" (grad. checkpointing)" if r["checkpointing"] else "")
            dtype, comp, first = "fp16 AMP", "off", ""
            value = f"{r['s_per_step']:.3f} s" if "s_per_step" in r else ""
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else ""
        lines.append(f"| {what} | {dtype} | {comp} | {r['shots']} | {r['batch']} | {value} | "
                     f"{first} | {peak} | {r['status']} |")
    return "\n".join(lines)


def append_to_benchmarks(path: str, rows: List[Dict], device_name: str, command: str) -> None:
    """Append the rows, with the date, device and command, to ``tools/BENCHMARKS.md``."""
    today = datetime.date.today().isoformat()
    text = (f"\n## {today}, {device_name}: GPU suite\n\n```\n$ {command}\n```\n\n"
            f"{format_rows(rows)}\n")
    with open(path, "a") as f:
        f.write(text)
