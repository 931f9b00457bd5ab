# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's per-object VOS memory (docs/SINE.md section 7; aim-uofa/SINE
inference_vos/inference/memory.py l.5-101, driven by tools/eval_vos.py l.358-438).

Every frame, each object's references are the frames in its memory; after the frame is predicted,
the object's mask and score enter the memory. The memory is a min-heap ordered by (decayed score,
score, frame index): when a frame enters, every held frame's score is multiplied by the linear
decay ``max(0, 1 - dt / ratio)`` (0 from dt >= ratio on) of its distance dt to the new frame,
and the smallest is dropped while more than the capacity are held. With ``fix_first_frame``
(the published scripts' ``--fix_first_frame``, scripts/eval_vos_d17.sh) the first frame offered
(the ground truth, score 1) is kept outside the heap for good and the heap holds ``size - 1``.
References come out in heap-array order, the fixed first frame last, as ``Memory.get_memory``.
"""

import heapq
from typing import Any, List, Optional

__all__ = ["SINEMemory", "linear_decay"]


def linear_decay(dt: int, ratio: float) -> float:
    """``max(0, 1 - dt / ratio)`` for dt < int(ratio), else 0; 1 when ``ratio`` is 0 (off)."""
    if not ratio:
        return 1.0
    return max(0.0, 1.0 - dt / ratio) if dt < int(ratio) else 0.0


class _Frame:
    __slots__ = ("decayed", "score", "frame", "payload")

    def __init__(self, frame: int, score: float, payload: Any):
        self.decayed, self.score, self.frame, self.payload = score, score, frame, payload

    def __lt__(self, other: "_Frame") -> bool:
        return (self.decayed, self.score, self.frame) < (other.decayed, other.score, other.frame)


class SINEMemory:
    """One object's reference frames.

    Args:
        size: references per object (``TEST.VOS.MEM_SIZE``, eval_vos ``--num_frame``).
        decay_ratio: linear decay ratio (``TEST.VOS.DECAY_RATIO``; 0 = no decay).
        fix_first_frame: keep the first frame offered for good (the published setting).
    """

    def __init__(self, size: int = 6, decay_ratio: float = 20.0, fix_first_frame: bool = True):
        self.capacity = int(size) - int(fix_first_frame)
        if self.capacity < 0:
            raise ValueError(f"TEST.VOS.MEM_SIZE {size} leaves no room with the fixed first frame")
        self.decay_ratio = float(decay_ratio)
        self.fix_first_frame = bool(fix_first_frame)
        self.first: Optional[_Frame] = None
        self.heap: List[_Frame] = []

    def offer(self, frame: int, score: float, payload: Any) -> None:
        """Add frame ``frame`` with its ``score`` and ``payload`` (what pooling needs)."""
        entry = _Frame(int(frame), float(score), payload)
        if self.fix_first_frame and self.first is None:
            self.first = entry
            return
        heapq.heappush(self.heap, entry)
        for held in self.heap:
            held.decayed = linear_decay(entry.frame - held.frame, self.decay_ratio) * held.score
        heapq.heapify(self.heap)
        if len(self.heap) > self.capacity:
            heapq.heappop(self.heap)

    def references(self) -> List[Any]:
        """The payloads of the held frames: heap-array order, then the fixed first frame."""
        frames = list(self.heap) + ([self.first] if self.first is not None else [])
        return [f.payload for f in frames]

    def frames(self) -> List[int]:
        """Frame indices of ``references``, in the same order."""
        return [f.frame for f in self.heap] + ([self.first.frame] if self.first else [])
