# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The GPU suite's SINE rows (``suite.py``): SINE-L-shaped random weights (DINOv2-L, the released
decoder) at 518 px padded to 896, 1- and 5-shot FSS episodes (``SINE.forward``), in float32 and
under bfloat16 / float16 autocast (the original runs its video loop under fp16 autocast on a GPU),
ms per episode (median of ``reps`` after a warm-up) and peak memory; and SINE training iterations
at the released recipe's shape (``sine_train_speed.py``: one ``EpisodeTrainer`` update at 896 px,
frozen DINOv2-L, batch 1 and 2 samples, float32 and bfloat16 autocast), s per iteration."""

import contextlib
import time
from typing import Callable, Dict, List

import torch

from ..utils.timing import peak_gib, reset_peak
from .sine_speed import build_random_sine, time_fss_episodes
from .sine_train_speed import build_sine_for_training, time_training_steps

__all__ = ["sine_rows", "sine_train_rows"]

TINY_OPTS = ["MODEL.SINE.ENCODER.ARCH", "vit_small", "MODEL.SINE.ENCODER.DEPTH", 2,
             "MODEL.SINE.DECODER.DEPTH", 2, "MODEL.SINE.DECODER.NUM_QUERIES", 10]

AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sine_rows(device: torch.device, tiny: bool = False, reps: int = 5, budget_s: float = 120.0,
              log: Callable = print, dtypes=("float32", "bfloat16", "float16")) -> List[Dict]:
    """One row per (dtype, shots); ``tiny`` builds a small ViT instead (CPU dry runs). Settings
    that would start after ``budget_s`` seconds say "not run (time budget)"."""
    start = time.perf_counter()
    opts = TINY_OPTS if tiny else []
    size, pad = (56, 84) if tiny else (518, 896)
    model = build_random_sine(size, pad, str(device), opts)
    rows = []
    for dtype in dtypes:
        for shots in (1, 5):
            row = {"what": "SINE inference", "dtype": dtype, "compile": False, "shots": shots,
                   "batch": 1}
            if time.perf_counter() - start > budget_s:
                rows.append({**row, "status": "not run (time budget)"})
                continue
            if dtype != "float32" and device.type != "cuda" and dtype == "float16":
                rows.append({**row, "status": "not run (fp16 autocast needs a GPU)"})
                continue
            ctx = (torch.autocast(device.type, dtype=AUTOCAST[dtype]) if AUTOCAST[dtype]
                   else contextlib.nullcontext())
            reset_peak(device)
            with ctx:
                times = time_fss_episodes(model, shots, reps, warmup=1)
            times.sort()
            rows.append({**row, "ms_per_episode": 1000 * times[len(times) // 2],
                         "peak_gib": peak_gib(device), "status": "ok"})
            log(f"SINE {dtype} {shots}-shot: {rows[-1]['ms_per_episode']:.1f} ms")
    return rows


def sine_train_rows(device: torch.device, tiny: bool = False, reps: int = 3,
                    budget_s: float = 240.0, log: Callable = print,
                    dtypes=("float32", "bfloat16"), batches=(1, 2)) -> List[Dict]:
    """One row per (dtype, batch): s per training iteration (median of ``reps`` after a
    warm-up) and the peak; ``tiny``: a small ViT at 56 px (CPU dry runs). An out-of-memory
    setting is a row saying so."""
    start = time.perf_counter()
    opts = TINY_OPTS + ["INPUT.SINE_TRAIN.IMAGE_SIZE", 56] if tiny else []
    rows = []
    for dtype in dtypes:
        for batch in batches:
            row = {"what": "SINE training iteration", "dtype": dtype, "compile": False,
                   "shots": "", "batch": batch}
            if time.perf_counter() - start > budget_s:
                rows.append({**row, "status": "not run (time budget)"})
                continue
            try:
                model, cfg = build_sine_for_training(str(device), opts)
                reset_peak(device)
                times = sorted(time_training_steps(
                    model, cfg, batch, reps, 1, amp=None if dtype == "float32" else dtype))
                rows.append({**row, "s_per_step": times[len(times) // 2],
                             "peak_gib": peak_gib(device), "status": "ok"})
            except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203 (a row says what happened)
                rows.append({**row, "status": f"out of memory ({str(e).splitlines()[0]})"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"SINE training {dtype} batch {batch}: {rows[-1].get('s_per_step', 0):.3f} s")
    return rows
