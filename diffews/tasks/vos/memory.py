# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Video object segmentation: the memory rule (docs/METHOD.md section 7.3; ``engine.py`` explains
it and uses it)."""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["decay_factor", "select_memory", "MemoryEntry", "ObjectMemory"]


def decay_factor(dt: int, ratio: float) -> float:
    """Linear decay of a memory frame ``dt`` frames older than the newest: ``max(0, 1 - dt /
    ratio)``; ``ratio <= 0`` disables the decay (factor 1)."""
    return 1.0 if ratio <= 0 else max(0.0, 1.0 - dt / ratio)


def select_memory(entries: Sequence[Tuple[int, float]], new: Tuple[int, float], capacity: int,
                  ratio: float) -> List[int]:
    """The past frames an object's memory keeps after ``new`` is offered.

    Args:
        entries: (frame index, score) of the frames in memory (the fixed first frame excluded).
        new: (frame index, score) of the newest prediction.
        capacity: past frames kept (``mem_size - 1``).
        ratio: decay ratio (``decay_factor``).
    Returns:
        the kept frame indices, in time order (``new``'s index among them if it stays).
    """
    t_new = new[0]
    keys = [(s * decay_factor(t_new - t, ratio), s, t) for t, s in [*entries, new]]
    keys.sort()  # a min-heap's pop order: smallest decayed score, then score, then older frame
    return sorted(t for _, _, t in keys[max(0, len(keys) - max(capacity, 0)):])


@dataclass
class MemoryEntry:
    """One support of an object: its frame, score, and either its encoded entry (reuse) or the
    pixels to encode it from on every frame (no reuse)."""

    t: int
    score: float
    support: Optional[Any] = None  # the predictor's support set of this one frame
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None


@dataclass
class ObjectMemory:
    first: MemoryEntry
    past: List[MemoryEntry]

    def supports(self) -> List[MemoryEntry]:
        return [self.first, *sorted(self.past, key=lambda e: e.t)]
