# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation, resumable (``inference_fsod/run_fsod.py``, ``job.py``).

Per seed, the test images are cut into shards of ``ceil(images / 100)`` (at most 100 shards; 50
images for COCO's 5,000) and each finished shard is one journal entry of
``<seed's output folder>/journal/`` (``tasks/resume.py``) under the key
``images<first>-<last>``: per image the evaluator's COCO-json detections (``COCOEvaluator.process``:
box, score, class, RLE mask). Each image is predicted alone against the same class batches, so
its detections do not depend on the run or the process that computed them; the AP is computed
from every shard's detections in image order, as an uninterrupted run feeds them.

The fingerprint (``resume.run_fingerprint``): the config (``TEST.FSOD`` SHOT, SEED, thresholds ...),
the weights and the model's other files, the split's support instances (``supports.record_key``)
and the test images (id, file name, size).
"""

import logging
import os
from typing import Callable, Dict, List, Sequence

from detectron2.utils import comm

from ...utils.journal import Journal
from ..resume import (JOURNAL, check_resume, chunk_ranges, digest, log_progress, my_share,
                      open_journal, run_fingerprint)
from .supports import record_key

logger = logging.getLogger(__name__)

__all__ = ["MAX_SHARDS", "shard_keys", "fsod_fingerprint", "check_fsod_resume",
           "open_fsod_journal", "run_journalled"]

MAX_SHARDS = 100  # per seed: a kill loses at most 1 % of a seed's images per process


def shard_keys(num_images: int) -> Dict[str, tuple]:
    """``{key: (start, stop)}`` of the image shards, in order."""
    size = -(-num_images // MAX_SHARDS)
    return {f"images{a:06d}-{b - 1:06d}": (a, b) for a, b in chunk_ranges(num_images, size)}


def fsod_fingerprint(cfg, by_class: Sequence[Sequence[Dict]], test_records: Sequence[Dict]
                     ) -> Dict:
    """What changes a seed's detections (module docstring)."""
    return run_fingerprint(
        cfg, supports=digest([[record_key(r) for r in recs] for recs in by_class]),
        test=digest([[r["image_id"], os.path.basename(r["file_name"]), r["height"], r["width"]]
                     for r in test_records]))


def check_fsod_resume(cfg, output_dir: str, by_class, test_records, overwrite: bool) -> None:
    """Refuse, before the model is built, a seed folder holding another command's journal."""
    check_resume(os.path.join(output_dir, JOURNAL), fsod_fingerprint(cfg, by_class, test_records),
                 overwrite, f"--output {output_dir}")


def open_fsod_journal(cfg, output_dir: str, by_class, test_records, overwrite: bool,
                      stale: Sequence[str] = ()) -> Journal:
    return open_journal(os.path.join(output_dir, JOURNAL),
                        fsod_fingerprint(cfg, by_class, test_records), overwrite,
                        f"--output {output_dir}", [os.path.join(output_dir, s) for s in stale])


def run_journalled(journal: Journal, num_images: int, evaluator,
                   predict: Callable[[List[int], Callable[[], None]], None], desc: str) -> None:
    """The shards without an entry, split rank::world: ``predict(indices, after_each_image)``
    feeds ``evaluator`` (a COCOEvaluator) image by image; after a shard's last image its
    predictions become the shard. Then the main process's evaluator holds every shard's
    predictions in image order (the others none), ready for ``evaluate()``."""
    spans = shard_keys(num_images)
    keys = list(spans)
    todo = journal.pending(keys)
    log_progress(logger, desc, len(keys), len(todo), "image shards")
    comm.synchronize()  # every process listed the same pending shards before anyone writes
    indices, ends = [], {}
    for key in my_share(todo):
        indices += range(*spans[key])
        ends[len(indices)] = key
    count = 0

    def after_each_image():
        nonlocal count
        count += 1
        if count in ends:
            # COCOEvaluator keeps one JSON-able dict per image in _predictions
            journal.put(ends[count], evaluator._predictions)
            evaluator._predictions = []

    if indices:
        predict(indices, after_each_image)
    comm.synchronize()
    # COCOEvaluator.evaluate gathers every process's _predictions to the main one
    evaluator._predictions = ([p for shard in journal.collect(keys) for p in shard]
                              if comm.is_main_process() else [])
