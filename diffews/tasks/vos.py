# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation with DiffewS: a video is a support set.

METHOD.md 7.3 (SINE/Matcher-style memory), on ``DiffewSPredictor``; no model code here.

Per video, per object:

* its first annotated frame with the given mask is a fixed support;
* a memory of up to ``mem_size - 1`` past predicted frames adds supports. After each frame the
  object's new prediction is offered to its memory with its score (``DiffewS.score``); every
  entry's score is decayed by its distance ``dt`` to the new frame,
  ``score * max(0, 1 - dt / decay_ratio)`` (linear, ratio 20), and while the memory is too full
  the entry with the smallest ``(decayed score, score, frame index)`` leaves it (the minimum of
  SINE's min-heap; the new frame itself can be that entry). ``select_memory`` is the rule;
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
"""

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from PIL import Image
from tqdm import tqdm

from ..data.datasets.common import dataset_root
from ..data.datasets.vos import (DAVIS_PALETTE, VOS_DATASETS, load_davis, load_ytvos,
                                read_annotation, write_result, zip_ytvos_submission)
from ..modeling.support_set import SupportSet
from ..predictor import DiffewSPredictor, EncodedImage
from ..utils.image import read_image, resize_mask
from ..utils.overlay import overlay_mask, side_by_side

logger = logging.getLogger(__name__)

__all__ = ["VOSEngine", "decay_factor", "select_memory", "confidence_map", "merge_objects",
           "load_vos_records", "run_vos"]

VIS_FRAMES = 8  # frames per video in a --save-vis strip


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


def confidence_map(pred_image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(S, S, 3) uint8 decoded prediction -> (H, W) float32 per-pixel confidence in [0, 1]
    (channel mean / 255), nearest-resized like the predicted mask."""
    return resize_mask(pred_image.astype(np.float32).mean(axis=2) / 255.0, size)


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
class _Entry:
    """One support of an object: its frame, score, and either its encoded entry (reuse) or the
    pixels to encode it from on every frame (no reuse)."""

    t: int
    score: float
    support: Optional[SupportSet] = None
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None


@dataclass
class _Memory:
    first: _Entry
    past: List[_Entry]

    def supports(self) -> List[_Entry]:
        return [self.first, *sorted(self.past, key=lambda e: e.t)]


class VOSEngine:
    """Segments videos (``diffews.data.datasets.vos`` records) frame by frame.

    Args:
        predictor: a ``DiffewSPredictor`` (loads the model; frames are resized to its size).
        mem_size: supports per object, the first frame included (>= 1).
        decay_ratio: linear score decay ratio (0 = none).
        reuse_supports: compute each support entry once (False: re-encode every frame).
        batch_size: objects per query pass.
    """

    def __init__(self, predictor: DiffewSPredictor, mem_size: int = 6, decay_ratio: float = 20.0,
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
    def from_config(cls, cfg, predictor: Optional[DiffewSPredictor] = None) -> "VOSEngine":
        """Build from ``TEST.VOS.*`` (the predictor from the config if not given)."""
        v = cfg.TEST.VOS
        return cls(predictor or DiffewSPredictor.from_config(cfg), v.MEM_SIZE, v.DECAY_RATIO,
                   v.REUSE_SUPPORTS, v.BATCH_SIZE)

    def segment_video(self, record: Dict) -> Iterator[Dict]:
        """Segment one video, yielding after each frame (its memory already updated):

        * "index", "frame": the frame's index and name; "image": (H, W, 3) uint8 frame;
        * "label_map": (H, W) int64 object ids at the frame's size;
        * "scores": {object id: score} and "shots": {object id: supports used} of the objects
          predicted on this frame; "given": ids whose mask was given on it;
        * "entered": ids whose entry for this frame joined their memory (encoded now);
        * "memory": {object id: frame indices of its supports after this frame}.
        """
        memories: Dict[int, _Memory] = {}
        given_frames = set(record["given_frames"])
        with self._latent_cache_off():
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
                label = np.zeros(size, np.int64)
                if tracked:
                    sets = [self._support_set(memories[o]) for o in tracked]
                    results = self.predictor.predict_many(frame.encoded(), sets, self.batch_size)
                    label = merge_objects({o: r["mask"] for o, r in zip(tracked, results)},
                                          {o: confidence_map(r["pred_image"], size)
                                           for o, r in zip(tracked, results)}, size)
                    out["scores"] = {o: r["score"] for o, r in zip(tracked, results)}
                    out["shots"] = {o: len(s) for o, s in zip(tracked, sets)}
                if ann is not None:
                    label = np.where(ann > 0, ann, label)
                for o in given:
                    if o not in memories:  # first appearance: the fixed support, encoded once
                        memories[o] = _Memory(self._entry(frame, t, 1.0, ann == o), [])
                        out["entered"].append(o)
                    elif self._offer(memories[o], frame, t, 1.0, ann == o):
                        out["entered"].append(o)
                for o in tracked:
                    if self._offer(memories[o], frame, t, out["scores"][o], label == o):
                        out["entered"].append(o)
                out["label_map"] = label
                out["memory"] = {o: [e.t for e in m.supports()] for o, m in memories.items()}
                yield out

    # -- memory ----------------------------------------------------------------------------------
    def _offer(self, memory: _Memory, frame: "_LazyFrame", t: int, score: float,
               mask: np.ndarray) -> bool:
        """Offer frame ``t`` to an object's memory; encode its entry only if it is kept."""
        kept = set(select_memory([(e.t, e.score) for e in memory.past], (t, score),
                                 self.mem_size - 1, self.decay_ratio))
        memory.past = [e for e in memory.past if e.t in kept]
        if t not in kept:
            return False
        memory.past.append(self._entry(frame, t, score, mask))
        return True

    def _entry(self, frame: "_LazyFrame", t: int, score: float, mask: np.ndarray) -> _Entry:
        if not self.reuse_supports:
            return _Entry(t, score, image=frame.image, mask=mask)
        # the frame's latent is the query's: only the mask is VAE-encoded, plus one support pass
        return _Entry(t, score, support=self.predictor.encode_supports([frame.encoded()], [mask],
                                                                        warn_empty=False))

    def _support_set(self, memory: _Memory) -> SupportSet:
        entries = memory.supports()
        if self.reuse_supports:
            return SupportSet.cat([e.support for e in entries])
        # one support per call, as each entry is computed when reuse is on: the same keys/values
        # bit for bit (a batched support pass differs by float rounding, which a video's memory
        # feedback can amplify on an untrained model), so only the cost differs
        return SupportSet.cat([self.predictor.encode_supports([e.image], [e.mask], warn_empty=False)
                               for e in entries])

    @contextmanager
    def _latent_cache_off(self):
        """Without reuse, also bypass the model's pixel-keyed latent cache
        (MODEL.DIFFEWS.SUPPORT_CACHE_SIZE), so that every support is really re-encoded."""
        model = self.predictor.model
        cache = getattr(model, "support_cache", None)
        if self.reuse_supports or cache is None:
            yield
            return
        model.support_cache = None
        try:
            yield
        finally:
            model.support_cache = cache


class _LazyFrame:
    """A frame's pixels and its latent, VAE-encoded on first use only (once per frame)."""

    def __init__(self, predictor: DiffewSPredictor, image: np.ndarray, name: str):
        self.predictor, self.image, self.name = predictor, image, name
        self._encoded: Optional[EncodedImage] = None

    def encoded(self) -> EncodedImage:
        if self._encoded is None:
            (self._encoded,) = self.predictor.encode_images([self.image], batch_size=1)
            self._encoded.name = self.name
        return self._encoded


# -- datasets and the whole run ------------------------------------------------------------------
def load_vos_records(dataset: str, root: Optional[str] = None,
                     videos: Optional[Sequence[str]] = None) -> List[Dict]:
    """The records of a registered VOS dataset read under ``root`` (default
    ``$DETECTRON2_DATASETS``), optionally only ``videos`` (in the dataset's order)."""
    if dataset not in VOS_DATASETS:
        raise ValueError(f"unknown VOS dataset {dataset!r}; choose from {', '.join(VOS_DATASETS)}")
    kind, kw = VOS_DATASETS[dataset]
    records = (load_davis(kw["year"], kw["split"], root) if kind == "davis"
               else load_ytvos(kw["split"], root))
    if videos:
        names = [r["video"] for r in records]
        unknown = [v for v in videos if v not in names]
        if unknown:
            raise ValueError(f"--videos {' '.join(unknown)}: not in {dataset} (it has "
                             f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
        records = [r for r in records if r["video"] in set(videos)]
    return records


def overlay_labels(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Tint each object's pixels of an (H, W, 3) frame with its DAVIS palette colour."""
    out = image
    for o in np.unique(label):
        if o != 0:
            out = overlay_mask(out, label == o, tuple(int(c) for c in DAVIS_PALETTE[o % 256]))
    return out


def _save_strip(panels: List[Tuple[np.ndarray, str]], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.jpg"
    Image.fromarray(side_by_side([p for p, _ in panels], [n for _, n in panels])).save(tmp,
                                                                                       quality=90)
    os.replace(tmp, path)


def run_vos(cfg, dataset: str, output: str, root: Optional[str] = None,
            videos: Optional[Sequence[str]] = None, save_vis: bool = False,
            evaluate: bool = True, progress: bool = True) -> Dict:
    """Segment every video of ``dataset`` and write the official results layout in ``output``
    (DAVIS: ``<video>/<frame>.png``; YouTube-VOS: ``Annotations/<video>/<frame>.png`` of the
    frames meta.json lists, and ``submission.zip``); DAVIS val (public ground truth) is scored.

    Returns:
        {"dataset", "videos", "frames", "seconds", "fps", "output", "zip" (YouTube-VOS),
        "scores" (a ``DAVISScores``, DAVIS val with ``evaluate``), "memory_entries" (frames that
        entered an object's memory, first frames included)}.
    """
    from ..evaluation.vos_evaluation import evaluate_davis, write_davis_csvs

    records = load_vos_records(dataset, root, videos)
    meta = MetadataCatalog.get(dataset)
    engine = VOSEngine.from_config(cfg)
    os.makedirs(output, exist_ok=True)
    frames, entered, start = 0, 0, time.perf_counter()
    for record in records:
        n = len(record["frames"])
        show = set(np.linspace(0, n - 1, min(n, VIS_FRAMES)).round().astype(int)) if save_vis \
            else set()
        panels = []
        with tqdm(total=n, desc=record["video"], unit="frame", disable=not progress) as bar:
            for out in engine.segment_video(record):
                write_result(record, out["index"], out["label_map"], output, meta.results_layout)
                if out["index"] in show:
                    panels.append((overlay_labels(out["image"], out["label_map"]), out["frame"]))
                entered += len(out["entered"])
                bar.update(1)
        if panels:
            _save_strip(panels, os.path.join(output, "vis", record["video"] + ".jpg"))
        frames += n
    seconds = time.perf_counter() - start
    summary = {"dataset": dataset, "videos": len(records), "frames": frames, "seconds": seconds,
               "fps": frames / max(seconds, 1e-9), "output": output, "memory_entries": entered}
    logger.info("%s: %d videos, %d frames in %.1f s (%.2f frames/s), %d memory entries",
                dataset, len(records), frames, seconds, summary["fps"], entered)
    if meta.results_layout == "ytvos":
        summary["zip"] = zip_ytvos_submission(output, records)
    if meta.has_full_gt and evaluate:
        davis_root = os.path.join(dataset_root(root), "DAVIS17", "trainval")
        scores = evaluate_davis(davis_root, output, meta.split, meta.year,
                                [r["video"] for r in records], progress=progress)
        write_davis_csvs(scores, output, meta.split)
        summary["scores"] = scores
    return summary
