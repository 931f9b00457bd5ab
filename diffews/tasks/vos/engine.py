# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation on any ``Predictor``: a video is a support set.

``VOSEngine`` reads a video's frames and given annotations (``diffews.data.datasets.vos``
records) in order and hands each frame to the predictor's video tracker
(``Predictor.video_tracker``), which keeps each object's memory of reference frames, predicts the
tracked objects on the frame and merges them into one label map by its model's rules (DiffewS:
``predictor/diffews_video.py``, docs/METHOD.md section 7.3). Objects start at their first
annotated frame; DAVIS test-dev and YouTube-VOS also give the frames where later objects first
appear. ``TEST.VOS.MEM_SIZE`` (references per object, the first frame included) and
``TEST.VOS.DECAY_RATIO`` (linear decay of a reference's score with its age) are the memory's size
and decay; ``TEST.VOS.REUSE_SUPPORTS`` and ``TEST.VOS.BATCH_SIZE`` are the tracker's speed
settings (the same masks either way).
"""

import logging
from typing import Dict, Iterator, Optional

from ...data.datasets.vos import read_annotation
from ...predictor import Predictor, build_predictor
from ...utils.image import read_image

logger = logging.getLogger(__name__)

__all__ = ["VOSEngine"]


class VOSEngine:
    """Segments videos (``diffews.data.datasets.vos`` records) frame by frame.

    Args:
        predictor: a ``Predictor`` (loads the model; frames are resized as it resizes them).
        mem_size: references per object, the first frame included (>= 1).
        decay_ratio: linear score decay ratio (0 = none).
        reuse_supports: compute each reference's encoding once (False: re-encode every frame).
        batch_size: objects per model call where the model batches them.
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
        * "scores": {object id: the score its memory keeps} and "shots": {object id: references
          used} of the objects predicted on this frame; "given": ids whose mask was given on it;
        * "present" / "presence": {object id: the predictor's decision / signal} of those objects;
        * "entered": ids whose entry for this frame joined their memory;
        * "memory": {object id: frame indices of its references after this frame}.
        """
        tracker = self.predictor.video_tracker(self.mem_size, self.decay_ratio,
                                               self.reuse_supports, self.batch_size)
        given_frames = set(record["given_frames"])
        for t, path in enumerate(record["file_names"]):
            image = read_image(path)
            size = image.shape[:2]
            ann = read_annotation(record, t) if t in given_frames else None
            if ann is not None and ann.shape != size:
                raise ValueError(f"{record['annotation_files'][t]}: annotation is "
                                 f"{ann.shape[1]}x{ann.shape[0]} but its frame {path} is "
                                 f"{size[1]}x{size[0]}")
            out = tracker.frame(t, image, path, ann)
            yield {"index": t, "frame": record["frames"][t], "image": image, **out}
