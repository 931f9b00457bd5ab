# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo's cache of encoded support sets, bounded by bytes.

A set's size grows with shots and resolution (a 5-shot set at SD 2.1 / 512 px is 441 MiB in
fp32), so a bound by count says nothing about memory; each set is charged its ``nbytes``.
"""

import os
from collections import OrderedDict
from typing import List

import torch


__all__ = ["SupportCache", "default_cache_bytes"]

REMEMBER_EVICTED = 1024  # keys of evicted sets remembered, to tell the user why a set re-encodes


def default_cache_bytes(device) -> int:
    """A share of the memory of the device the sets live on: a quarter of the GPU's (the model
    and its activations need the rest), an eighth of the machine's RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory // 4
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: assume 8 GiB
        ram = 8 * 2**30
    return ram // 8


class SupportCache:
    """Least-recently-used support sets, their ``nbytes`` summed at most ``max_bytes``.

    Not thread-safe: ``WebDemoSession`` uses it under its lock.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._sets: "OrderedDict[str, object]" = OrderedDict()
        self._evicted: "OrderedDict[str, None]" = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sets)

    def __contains__(self, key: str) -> bool:
        return key in self._sets

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._sets.values())

    def get(self, key: str):
        """The set of ``key`` (now the most recently used), or None."""
        if key not in self._sets:
            return None
        self._sets.move_to_end(key)
        return self._sets[key]

    def was_evicted(self, key: str) -> bool:
        """Whether ``key``'s set was in the cache and was dropped to make room."""
        return key in self._evicted

    def put(self, key: str, support_set) -> List[str]:
        """Keep ``support_set``, dropping the least recently used sets until the total fits.
        A set larger than ``max_bytes`` on its own is not kept (nothing else is dropped for it).

        Returns:
            the keys dropped (``key`` itself when it was too large to keep).
        """
        self._sets.pop(key, None)
        if support_set.nbytes > self.max_bytes:
            return [key]
        self._evicted.pop(key, None)
        dropped = []
        total = self.nbytes
        while self._sets and total + support_set.nbytes > self.max_bytes:
            old, s = self._sets.popitem(last=False)
            total -= s.nbytes
            dropped.append(old)
            self._evicted[old] = None
        while len(self._evicted) > REMEMBER_EVICTED:
            self._evicted.popitem(last=False)
        self._sets[key] = support_set
        self.evictions += len(dropped)
        return dropped
