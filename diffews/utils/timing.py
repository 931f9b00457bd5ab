# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Timing and memory helpers, the one set every benchmark uses: wait for a device's queued work,
reset and read the peak memory (CUDA's allocator, or the process's resident set on a CPU)."""

from typing import Callable

import torch

__all__ = ["sync", "reset_peak", "peak_gib", "peak_memory_of", "describe_peak"]


def sync(device: torch.device) -> None:
    """Wait until ``device``'s queued work is done (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
