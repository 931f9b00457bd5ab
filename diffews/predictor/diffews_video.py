# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""DiffewS's rules for semi-supervised video object segmentation (docs/METHOD.md section 7.3;
SINE/Matcher-style memory): ``DiffewSVideoTracker``, which ``DiffewSPredictor.video_tracker``
returns and the VOS task (``diffews.tasks.vos``) drives frame by frame.

Per video, per object:

* its first annotated frame with the given mask is a fixed support;
* a memory of up to ``mem_size - 1`` past predicted frames adds supports. After each frame the
  object's region of the merged label map is offered to its memory with the score of that same
  region (``diffews.prediction_score`` of the object's decoded prediction and its merged mask
  at the working size, so that a region the merge emptied scores 0); every entry's score is
  decayed by its distance ``dt`` to the new frame, ``score * max(0, 1 - dt / decay_ratio)``
  (linear, ratio 20), and while the memory is too full the entry with the smallest
  ``(decayed score, score, frame index)`` leaves it (the minimum of SINE's min-heap; the new
  frame itself can be that entry). ``select_memory`` is the rule;
* every frame is one query per tracked object: the frame is VAE-encoded once and shared by all
  its objects (``predict_many``; objects with as many supports share a query pass).

Cost: a frame's support entry for an object (its mask latent and the keys/values of the support
pass; the frame's image latent is the query's) is computed once, when it enters that object's
memory, never again; an object's support set is ``SupportSet.cat`` of its stored entries. Per
frame: 1 VAE encode of the frame, 1 query pass per group of objects with the same number of
supports, and per object whose frame enters its memory 1 mask encode and 1 support pass.
``reuse_supports=False`` instead re-encodes every support from pixels on every frame, one
support per call as the entries are computed with reuse (the same masks bit for bit; it only
measures what the reuse saves).

Merging objects into one label map: an object's pixels are its predicted mask at the frame's
size (``predict``'s ``mask``); where masks overlap, the object whose decoded prediction is
brightest there wins (per-pixel confidence = ``pred_image`` channel mean / 255, resized to the
frame with the same nearest rule as the mask); an exact tie goes to the higher object id (as
SINE's ``argmax(id * mask)`` does on overlaps). On a frame with a given annotation (the first
frame; DAVIS test-dev and YouTube-VOS also give the frames where objects first appear) the given
pixels override the predictions, and objects start at their first annotated frame. An object's
memory entry is its region of the merged label map (the given mask on a given frame, score 1).

Absent objects: an object the predictor judges absent (``present`` False: a presence threshold
set, or calibrated weights) has an empty mask, so no pixels in that frame, and it is not offered
to its memory; nor is an object whose merged region is empty. ``present`` None (no decision) is
not "absent": such an object's non-empty region joins its memory as before. It is still tracked
on the next frames with the memory it has, so it can come back.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..modeling.readout import confidence_map, prediction_score_array
from ..modeling.support_set import SupportSet
from ..utils.image import resize_mask

__all__ = ["DiffewSVideoTracker", "decay_factor", "select_memory", "merge_objects"]


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


class DiffewSVideoTracker:
    """One video's objects and memories (module docstring), frame by frame.

    Args:
        predictor: the ``DiffewSPredictor``.
        mem_size: supports per object, the first frame included (>= 1).
        decay_ratio: linear score decay ratio (0 = none).
        reuse_supports: compute each support entry once (False: re-encode every frame).
        batch_size: objects per query pass.
    """

    def __init__(self, predictor, mem_size: int, decay_ratio: float, reuse_supports: bool = True,
                 batch_size: int = 8):
        self.predictor = predictor
        self.mem_size, self.decay_ratio = int(mem_size), float(decay_ratio)
        self.reuse_supports, self.batch_size = bool(reuse_supports), int(batch_size)
        self.memories: Dict[int, ObjectMemory] = {}

    def frame(self, t: int, image: np.ndarray, name: str, ann: Optional[np.ndarray]) -> Dict:
        """Segment frame ``t`` (``image`` (H, W, 3) uint8; ``ann`` its given (H, W) annotation
        of object ids or None) and update the memories. Returns the VOS task's per-frame dict
        without its index, name and image (``diffews.tasks.vos.VOSEngine.segment_video``)."""
        memories, size = self.memories, image.shape[:2]
        given = sorted(int(o) for o in np.unique(ann) if o != 0) if ann is not None else []
        tracked = [o for o in sorted(memories) if o not in given]
        frame = _LazyFrame(self.predictor, image, name)
        out = {"given": given, "scores": {}, "shots": {}, "entered": []}
        label, results = np.zeros(size, np.int64), {}
        if tracked:
            sets = [self._support_set(memories[o]) for o in tracked]
            found = self.predictor.predict_many(frame.encoded(), sets, self.batch_size)
            results = dict(zip(tracked, found))
            # an absent object's mask is empty (the predictor's presence decision)
            label = merge_objects({o: r["mask"] for o, r in results.items()},
                                  {o: confidence_map(r["pred_image"], size)
                                   for o, r in results.items()}, size)
            out["shots"] = {o: len(s) for o, s in zip(tracked, sets)}
            out["present"] = {o: r["present"] for o, r in results.items()}
            out["presence"] = {o: r["presence"] for o, r in results.items()}
        if ann is not None:
            label = np.where(ann > 0, ann, label)
        # the memory's score and mask come from the same (merged) region
        out["scores"] = {o: self._merged_score(r["pred_image"], label == o)
                         for o, r in results.items()}
        for o in given:
            if o not in memories:  # first appearance: the fixed support, encoded once
                memories[o] = ObjectMemory(self._entry(frame, t, 1.0, ann == o), [])
                out["entered"].append(o)
            elif self._offer(memories[o], frame, t, 1.0, ann == o):
                out["entered"].append(o)
        for o in tracked:
            region = label == o
            if results[o]["present"] is False or not region.any():
                continue  # absent here (judged absent, or nothing found): no memory entry
            if self._offer(memories[o], frame, t, out["scores"][o], region):
                out["entered"].append(o)
        out["label_map"] = label
        out["memory"] = {o: [e.t for e in m.supports()] for o, m in memories.items()}
        return out

    def _merged_score(self, pred_image: np.ndarray, region: np.ndarray) -> float:
        """``prediction_score`` of an object's decoded prediction and its merged region, the
        region nearest-resized to the working size as the benchmarks resize masks."""
        working = resize_mask(region.astype(np.uint8), pred_image.shape[:2]).astype(bool)
        return prediction_score_array(pred_image, working)

    # -- memory ----------------------------------------------------------------------------------
    def _offer(self, memory: ObjectMemory, frame: "_LazyFrame", t: int, score: float,
               mask: np.ndarray) -> bool:
        """Offer frame ``t`` to an object's memory; encode its entry only if it is kept."""
        kept = set(select_memory([(e.t, e.score) for e in memory.past], (t, score),
                                 self.mem_size - 1, self.decay_ratio))
        memory.past = [e for e in memory.past if e.t in kept]
        if t not in kept:
            return False
        memory.past.append(self._entry(frame, t, score, mask))
        return True

    def _entry(self, frame: "_LazyFrame", t: int, score: float, mask: np.ndarray) -> MemoryEntry:
        if not self.reuse_supports:
            return MemoryEntry(t, score, image=frame.image, mask=mask)
        # the frame's latent is the query's: only the mask is VAE-encoded, plus one support pass
        return MemoryEntry(t, score, support=self.predictor.encode_supports(
            [frame.encoded()], [mask], warn_empty=False))

    def _support_set(self, memory: ObjectMemory):
        entries = memory.supports()
        if self.reuse_supports:
            return SupportSet.cat([e.support for e in entries])
        # one support per call, as each entry is computed when reuse is on: the same keys/values
        # bit for bit (a batched support pass differs by float rounding, which a video's memory
        # feedback can amplify on an untrained model), so only the cost differs
        return SupportSet.cat([self.predictor.encode_supports([e.image], [e.mask],
                                                              warn_empty=False)
                               for e in entries])


class _LazyFrame:
    """A frame's pixels and its encoding, computed on first use only (once per frame)."""

    def __init__(self, predictor, image: np.ndarray, name: str):
        self.predictor, self.image, self.name = predictor, image, name
        self._encoded = None

    def encoded(self):
        if self._encoded is None:
            (self._encoded,) = self.predictor.encode_images([self.image], batch_size=1)
            self._encoded.name = self.name
        return self._encoded
