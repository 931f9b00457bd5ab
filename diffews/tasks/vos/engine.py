# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation on any ``Predictor``: a video is a support set.

docs/METHOD.md section 7.3 (SINE/Matcher-style memory); no model code here. The model-specific
steps are the predictor's: ``track_objects`` (a frame against every object's memory),
``merge_objects`` (overlaps) and ``memory_entry`` (what a frame leaves in an object's memory).
Below, what DiffewS's predictor does in those steps is said as such.

Per video, per object:

* its first annotated frame with the given mask is a fixed support;
* a memory of up to ``mem_size - 1`` past predicted frames adds supports. After each frame the
  predictor's ``memory_entry`` is offered to the object's memory (DiffewS: the object's region of
  the merged label map, with the score of that same region, ``diffews.prediction_score`` of the
  object's decoded prediction and its merged mask at the working size, so that a region the merge
  emptied scores 0); every
  entry's score is decayed by its distance ``dt`` to the new frame,
  ``score * max(0, 1 - dt / decay_ratio)`` (linear, ratio 20), and while the memory is too full
  the entry with the smallest ``(decayed score, score, frame index)`` leaves it (the minimum of
  SINE's min-heap; the new frame itself can be that entry). ``select_memory`` is the rule;
* every frame is one query per tracked object: the frame is VAE-encoded once and shared by all
  its objects (``predict_many``; objects with as many supports share a query pass).

Cost: a frame's support entry for an object (its mask latent and the keys/values of the support
pass; the frame's image latent is the query's) is computed once, when it enters that object's
memory, never again; an object's support set is the concatenation of its stored entries. Per
frame: 1 VAE encode of the frame, 1 query pass per group of objects with the same number of
supports, and per object whose frame enters its memory 1 mask encode and 1 support pass.
``reuse_supports=False`` instead re-encodes every support from pixels on every frame, one
support per call as the entries are computed with reuse (the same masks bit for bit; it only
measures what the reuse saves).

Merging objects into one label map: an object's pixels are its predicted mask at the frame's
size (``predict``'s ``mask``); where masks overlap, the predictor's rule decides (DiffewS: the
object whose decoded prediction is brightest there wins (per-pixel confidence = ``pred_image`` channel mean / 255, resized to the
frame with the same nearest rule as the mask); an exact tie goes to the higher object id (as
SINE's ``argmax(id * mask)`` does on overlaps)). On a frame with a given annotation (the first
frame; DAVIS test-dev and YouTube-VOS also give the frames where objects first appear) the given
pixels override the predictions, and objects start at their first annotated frame. On a given
frame an object's memory entry is its given mask with score 1.

Absent objects: an object the predictor judges absent (``present`` False: a presence threshold
set, or calibrated weights) has an empty mask, so no pixels in that frame, and it is not offered
to its memory; nor is an object whose merged region is empty. ``present`` None (no decision) is
not "absent": such an object's non-empty region joins its memory as before. It is still tracked
on the next frames with the memory it has, so it can come back.

The memory rule is in ``memory.py``, the dataset run in ``run.py``.
"""

import logging
from typing import Dict, Iterator, Optional

import numpy as np

from ...data.datasets.vos import read_annotation
from ...predictor import Predictor, build_predictor
from ...utils.image import read_image
from .memory import MemoryEntry, ObjectMemory, select_memory

logger = logging.getLogger(__name__)

__all__ = ["VOSEngine"]


class VOSEngine:
    """Segments videos (``diffews.data.datasets.vos`` records) frame by frame.

    Args:
        predictor: a ``Predictor`` (loads the model; frames are resized as it resizes them).
        mem_size: supports per object, the first frame included (>= 1).
        decay_ratio: linear score decay ratio (0 = none).
        reuse_supports: compute each support entry once (False: re-encode every frame).
        batch_size: objects per query pass.
    """

    def __init__(self, predictor: Predictor, mem_size: int = 6, decay_ratio: float = 20.0,
                 reuse_supports: bool = True, batch_size: int = 8):
        if int(mem_size) < 1:
            raise ValueError(f"TEST.VOS.MEM_SIZE (--mem-size) must be >= 1 (the first frame "
                             f"counts), got {mem_size}")
        if float(decay_ratio) < 0:
            raise ValueError(f"TEST.VOS.DECAY_RATIO (--decay-ratio) must be >= 0, got "
                             f"{decay_ratio}")
        if int(batch_size) < 1:
            raise ValueError(f"TEST.VOS.BATCH_SIZE must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.mem_size, self.decay_ratio = int(mem_size), float(decay_ratio)
        self.reuse_supports, self.batch_size = bool(reuse_supports), int(batch_size)

    @classmethod
    def from_config(cls, cfg, predictor: Optional[Predictor] = None) -> "VOSEngine":
        """Build from ``TEST.VOS.*`` (the predictor from the config if not given)."""
        v = cfg.TEST.VOS
        return cls(predictor or build_predictor(cfg), v.MEM_SIZE, v.DECAY_RATIO,
                   v.REUSE_SUPPORTS, v.BATCH_SIZE)

    def segment_video(self, record: Dict) -> Iterator[Dict]:
        """Segment one video, yielding after each frame (its memory already updated):

        * "index", "frame": the frame's index and name; "image": (H, W, 3) uint8 frame;
        * "label_map": (H, W) int64 object ids at the frame's size;
        * "scores": {object id: score of its merged region} and "shots": {object id: supports
          used} of the objects predicted on this frame; "given": ids whose mask was given on it;
        * "present" / "presence": {object id: the predictor's decision / signal} of those objects;
        * "entered": ids whose entry for this frame joined their memory (encoded now);
        * "memory": {object id: frame indices of its supports after this frame}.
        """
        memories: Dict[int, ObjectMemory] = {}
        given_frames = set(record["given_frames"])
        for t, path in enumerate(record["file_names"]):
            image = read_image(path)
            size = image.shape[:2]
            ann = read_annotation(record, t) if t in given_frames else None
            if ann is not None and ann.shape != size:
                raise ValueError(f"{record['annotation_files'][t]}: annotation is "
                                 f"{ann.shape[1]}x{ann.shape[0]} but its frame {path} is "
                                 f"{size[1]}x{size[0]}")
            given = sorted(int(o) for o in np.unique(ann) if o != 0) if ann is not None else []
            tracked = [o for o in sorted(memories) if o not in given]
            frame = _LazyFrame(self.predictor, image, path)
            out = {"index": t, "frame": record["frames"][t], "image": image, "given": given,
                   "scores": {}, "shots": {}, "entered": []}
            label, results = np.zeros(size, np.int64), {}
            if tracked:
                sets = [self._support_set(memories[o]) for o in tracked]
                found = self.predictor.track_objects(frame.encoded(), sets, size, self.batch_size)
                results = dict(zip(tracked, found))
                # an absent object's mask is empty (the predictor's presence decision)
                label = self.predictor.merge_objects(tracked, found, size)
                out["shots"] = {o: len(s) for o, s in zip(tracked, sets)}
                out["present"] = {o: r["present"] for o, r in results.items()}
                out["presence"] = {o: r["presence"] for o, r in results.items()}
            if ann is not None:
                label = np.where(ann > 0, ann, label)
            # what each object's memory would keep of this frame (its mask and score)
            entries = {o: self.predictor.memory_entry(r, label == o) for o, r in results.items()}
            out["scores"] = {o: score for o, (_, score) in entries.items()}
            for o in given:
                if o not in memories:  # first appearance: the fixed support, encoded once
                    memories[o] = ObjectMemory(self._entry(frame, t, 1.0, ann == o), [])
                    out["entered"].append(o)
                elif self._offer(memories[o], frame, t, 1.0, ann == o):
                    out["entered"].append(o)
            for o in tracked:
                mask, score = entries[o]
                if results[o]["present"] is False or not mask.any():
                    continue  # absent here (judged absent, or nothing found): no memory entry
                if self._offer(memories[o], frame, t, score, mask):
                    out["entered"].append(o)
            out["label_map"] = label
            out["memory"] = {o: [e.t for e in m.supports()] for o, m in memories.items()}
            yield out

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
            return self.predictor.cat_support_sets([e.support for e in entries])
        # one support per call, as each entry is computed when reuse is on: the same keys/values
        # bit for bit (a batched support pass differs by float rounding, which a video's memory
        # feedback can amplify on an untrained model), so only the cost differs
        return self.predictor.cat_support_sets(
            [self.predictor.encode_supports([e.image], [e.mask], warn_empty=False)
             for e in entries])


class _LazyFrame:
    """A frame's pixels and its encoding, computed on first use only (once per frame)."""

    def __init__(self, predictor: Predictor, image: np.ndarray, name: str):
        self.predictor, self.image, self.name = predictor, image, name
        self._encoded = None

    def encoded(self):
        if self._encoded is None:
            (self._encoded,) = self.predictor.encode_images([self.image], batch_size=1)
            self._encoded.name = self.name
        return self._encoded
