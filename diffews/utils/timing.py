# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Timing and memory helpers, the one set every benchmark uses: wait for a device's queued work,
time several variants of one computation interleaved, reset and read the peak memory (CUDA's
allocator, or the process's resident set on a CPU)."""

import os
import statistics
import time
from typing import Callable, Dict, List

import torch

__all__ = ["sync", "interleaved_times", "medians", "load_average", "reset_peak", "peak_gib",
           "peak_memory_of", "describe_peak"]


def sync(device: torch.device) -> None:
    """Wait until ``device``'s queued work is done (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                      device: torch.device = torch.device("cpu")) -> Dict[str, List[float]]:
    """Seconds per call of each variant, timed interleaved: ``warmup`` untimed calls of each, then
    ``reps`` rounds that call every variant once, in an order rotated by one each round.

    On a shared machine whose speed drifts within minutes, variants timed one after the other
    compare the machine at two moments; interleaved, every variant sees the same drift.

    Args:
        fns: {name: callable} computing the same thing.
        reps: timed rounds (each variant gets ``reps`` times).
    Returns:
        {name: [seconds, ...]} in round order.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            out[name].append(time.perf_counter() - start)
    return out


def medians(times: Dict[str, List[float]]) -> Dict[str, float]:
    """{name: median seconds} of ``interleaved_times``' output."""
    return {name: statistics.median(v) for name, v in times.items()}


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): printed beside every timing table,
    since on shared cores it says how far the numbers are from a quiet machine's."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator peak, or (Linux) the process's peak resident set
    (through /proc/self/clear_refs; nothing where that is not available)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set to the current one
    except OSError:
        pass


def peak_gib(device: torch.device) -> float:
    """GiB at the peak since the last ``reset_peak``: CUDA's allocator, or the process's peak
    resident set (VmHWM; NaN where /proc is not available)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        return _status_kib("VmHWM") / 2 ** 20
    except OSError:
        return float("nan")


def describe_peak(device: torch.device) -> str:
    """``peak_gib`` with what it measured, e.g. "3.21 (CUDA)" or "1.05 (process RSS)"."""
    return f"{peak_gib(device):.2f} ({'CUDA' if device.type == 'cuda' else 'process RSS'})"


def peak_memory_of(fn: Callable[[], object], device: torch.device) -> float:
    """GiB above the baseline while ``fn`` runs: CUDA's allocator peak, or on the CPU (Linux) the
    process's peak resident set above its resident set before the call; NaN where neither is
    available."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30
    try:
        reset_peak(device)
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) / 2 ** 20
    except OSError:
        fn()
        return float("nan")
