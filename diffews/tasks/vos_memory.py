# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Video object segmentation: the memory rule and the merge of objects into one label map
(docs/METHOD.md section 7.3; ``diffews.tasks.vos`` explains both and uses them)."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..modeling.support_set import SupportSet

__all__ = ["decay_factor", "select_memory", "merge_objects", "MemoryEntry", "ObjectMemory"]


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


def merge_objects(masks: Dict[int, np.ndarray], confidence: Dict[int, np.ndarray],
                  size: Tuple[int, int]) -> np.ndarray:
    """One (H, W) int64 label map from per-object (H, W) bool masks: a pixel belongs to the object
    with the highest confidence among those whose mask covers it (a tie: the higher id); 0 where
    no mask is on."""
    label = np.zeros(size, np.int64)
    ids = sorted(masks)
    if not ids:
        return label
    on = np.stack([masks[o].astype(bool) for o in ids])  # (N, H, W)
    conf = np.stack([np.asarray(confidence[o], np.float64) for o in ids])
    if on.shape[1:] != tuple(size) or conf.shape != on.shape:
        raise ValueError(f"merge_objects: masks {on.shape[1:]} / confidences {conf.shape[1:]} "
                         f"are not of the frame's size {tuple(size)}")
    conf = np.where(on, conf, -np.inf)[::-1]  # highest id first, so argmax's first max is it
    winner = np.asarray(ids)[::-1][np.argmax(conf, axis=0)]
    return np.where(on.any(axis=0), winner, 0).astype(np.int64)


@dataclass
class MemoryEntry:
    """One support of an object: its frame, score, and either its encoded entry (reuse) or the
    pixels to encode it from on every frame (no reuse)."""

    t: int
    score: float
    support: Optional[SupportSet] = None
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None


@dataclass
class ObjectMemory:
    first: MemoryEntry
    past: List[MemoryEntry]

    def supports(self) -> List[MemoryEntry]:
        return [self.first, *sorted(self.past, key=lambda e: e.t)]
