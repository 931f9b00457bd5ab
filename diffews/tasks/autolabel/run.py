# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Label a folder of images from a few examples per class (``tools/autolabel.py``).

1. **Supports, once.** One support set per class from SRC (``supports.py``), encoded
   by the main process and saved under ``OUTPUT/support_sets/`` (the other processes and a
   resumed run load those files).
2. **Each image, once.** It is predicted against every class's set with the predictor's
   ``predict_instances`` (``TEST.FSOD.BATCH_SIZE`` sets per call), the same instances as few-shot
   instance segmentation gives (DiffewS: ``TEST.FSOD.INSTANCE_MODE``, ``MIN_AREA``, ``TOPK``,
   ``CLASS_SCORE``). With a presence threshold (``--presence-threshold`` or
   ``MODEL.DIFFEWS.PRESENCE_THRESHOLD``, >= 0, or the one calibrated weights carry) a class
   judged absent gives nothing; ``--presence-threshold -1`` decides nothing.
3. **Nothing lost.** Each image's annotations (RLE, box, area, score) are one shard of the
   journal ``OUTPUT/journal/`` (``diffews/utils/journal.py``), written atomically after its label
   PNG (``--save-masks``), so a run killed at any moment and started again with the same command
   labels only the images without a shard. A command with other supports, weights, thresholds or
   config on the same ``OUTPUT`` is refused before any model is built (``--overwrite`` starts
   again). The image list is not part of the fingerprint: images added to the folder are labelled
   by the next run, in addition.
4. **Outputs**, from the shards in image order once every image is done: ``annotations.json``
   (COCO instances: images with file names relative to ``--images`` and sizes, SRC's categories,
   annotations with ``segmentation`` RLE, ``bbox`` XYWH, ``area``, ``score``, ``iscrowd`` 0; ids
   1.. in order) and ``skipped.json`` (unreadable images and why). An unreadable image leaves a
   "skipped" note instead of a shard (it is retried by the next run); more than
   ``--max-bad-fraction`` of them stops the run naming the first.

Several processes (detectron2 ``launch``): the images left are split rank::world; each image is
encoded alone and meets the class sets in the same batches, so its annotations do not depend on
the split, and ``annotations.json`` equals one process's byte for byte.
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
from detectron2.utils import comm
from tqdm import tqdm

from ...predictor import build_predictor, predictor_class
from ...utils.errors import UsageError
from ...utils.image import ImageReadError, read_image
from ...utils.journal import Journal
from ..distributed import main_process_first
from ..resume import run_fingerprint
from .io import (ANNOTATIONS, MASKS, SKIP_PREFIX, SKIPPED, list_label_images, mask_path,
                 save_label, too_many_bad, write_outputs)
from .supports import SupportSource, read_supports, support_sets

logger = logging.getLogger(__name__)

__all__ = ["LabelJob", "job_fingerprint", "check_job", "label_image", "run"]

JOURNAL, SETS = "journal", "support_sets"


@dataclass
class LabelJob:
    """The command of one autolabel run (``tools/autolabel.py`` flags)."""

    supports: str
    images: str
    output: str
    supports_images: Optional[str] = None
    presence_threshold: Optional[float] = None  # None: MODEL.DIFFEWS.PRESENCE_THRESHOLD
    max_bad_fraction: float = 0.01
    save_masks: bool = False
    overwrite: bool = False


def presence_threshold(cfg, job: LabelJob) -> Optional[float]:
    """The flag (< 0: no decision, -1.0), else the config key when >= 0, else None: the
    predictor's default (the threshold calibrated weights carry, or no decision)."""
    value = job.presence_threshold
    if value is not None:
        return -1.0 if float(value) < 0 else float(value)
    value = cfg.MODEL.DIFFEWS.get("PRESENCE_THRESHOLD", None)
    return None if value is None or float(value) < 0 else float(value)


def job_fingerprint(cfg, source: SupportSource, job: LabelJob) -> Dict:
    """Everything that changes ``annotations.json`` (``resume.run_fingerprint``): the config
    minus what does not change results, the weights and the model's other files, the supports'
    content, the presence threshold and ``--save-masks``."""
    return run_fingerprint(cfg, supports=source.fingerprint(),
                           presence_threshold=presence_threshold(cfg, job),
                           save_masks=bool(job.save_masks))


def check_job(cfg, job: LabelJob):
    """Every check that needs no model: the instance keys, SRC, the image list and the output
    folder's journal (another command's folder is refused unless ``--overwrite``).

    Returns:
        (SupportSource, [(file_name, path)], fingerprint).
    """
    if cfg.TEST.FSOD.BATCH_SIZE < 1:
        raise UsageError(f"TEST.FSOD.BATCH_SIZE must be >= 1, got {cfg.TEST.FSOD.BATCH_SIZE}")
    predictor_class(cfg).check_config(cfg)
    if not 0.0 <= job.max_bad_fraction <= 1.0:
        raise UsageError(f"--max-bad-fraction must be in [0, 1], got {job.max_bad_fraction}")
    source = read_supports(job.supports, job.supports_images)
    images = list_label_images(job.images, exclude=job.output)
    fingerprint = job_fingerprint(cfg, source, job)
    if not job.overwrite:
        Journal.verify(os.path.join(job.output, JOURNAL), fingerprint, f"--output {job.output}")
    return source, images, fingerprint


def label_image(predictor, sets, image: np.ndarray, cfg, threshold: Optional[float] = None,
                category_ids: Optional[List[int]] = None):
    """One image against every class's set.

    Returns:
        (annotations without ids: ``[{"category_id", "segmentation", "area", "bbox", "score",
        "iscrowd"}]`` by decreasing score, label map (H, W) of class indices 1..C (0 background;
        the best instance wins where instances overlap)).
    """
    from pycocotools import mask as mask_util

    size = image.shape[:2]
    category_ids = category_ids or list(range(1, len(sets) + 1))
    label = np.zeros(size, np.uint8 if len(sets) < 256 else np.uint16)
    # a class judged absent gives no instance (the predictor's presence decision)
    inst = predictor.predict_instances(image, sets, batch_size=int(cfg.TEST.FSOD.BATCH_SIZE),
                                       presence_threshold=threshold)
    anns = []
    masks = inst.pred_masks.numpy()
    for m, box, score, c in zip(masks, inst.pred_boxes.tensor.tolist(), inst.scores.tolist(),
                                inst.pred_classes.tolist()):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        x0, y0, x1, y1 = box
        anns.append({"category_id": int(category_ids[c]),
                     "segmentation": {"size": [int(size[0]), int(size[1])],
                                      "counts": rle["counts"].decode("ascii")},
                     "area": int(mask_util.area(rle)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "score": float(score), "iscrowd": 0})
    for m, c in reversed(list(zip(masks, inst.pred_classes.tolist()))):
        label[m] = c + 1
    return anns, label


def _open_journal(job: LabelJob, fingerprint: Dict) -> Journal:
    folder = os.path.join(job.output, JOURNAL)
    what = f"--output {job.output}"
    if comm.is_main_process():
        if job.overwrite:  # the old outputs go first, so none outlives the journal's reset
            for name in (ANNOTATIONS, SKIPPED):
                if os.path.isfile(os.path.join(job.output, name)):
                    os.remove(os.path.join(job.output, name))
            for name in (MASKS, SETS):
                shutil.rmtree(os.path.join(job.output, name), ignore_errors=True)
        journal = Journal(folder, fingerprint, overwrite=job.overwrite, what=what)
    comm.synchronize()
    return journal if comm.is_main_process() else Journal(folder, fingerprint, create=False,
                                                          what=what)


def _prepare_sets(predictor, source: SupportSource, folder: str):
    """``support_sets`` in the main process, then loaded by the others (a failure in the main
    process is raised in all)."""
    return main_process_first(lambda: support_sets(predictor, source, folder),
                              lambda: support_sets(predictor, source, folder, compute=False),
                              "the support sets")


def run(cfg, job: LabelJob, predictor=None, checked=None) -> Dict:
    """The whole job in this process (module docstring); call it in every process of a launch.
    ``checked``: what ``check_job(cfg, job)`` returned, if the caller ran it already.

    Returns:
        ``{"images", "labelled", "skipped", "annotations", "seconds"}`` (this run) in the main
        process, ``{}`` in the others.
    """
    source, images, fingerprint = checked or check_job(cfg, job)
    journal = _open_journal(job, fingerprint)
    if predictor is None:
        predictor = build_predictor(cfg)
    sets = _prepare_sets(predictor, source, os.path.join(job.output, SETS))
    threshold = presence_threshold(cfg, job)
    ids = [c["id"] for c in source.categories]
    paths = dict(images)
    keys = [k for k, _ in images]
    pending = journal.pending(keys)
    comm.synchronize()  # every process saw the same pending list before anyone writes
    mine = pending[comm.get_rank()::comm.get_world_size()]
    bad, first_bad, start = 0, None, time.perf_counter()
    # images/s even below 1 image/s (tqdm would switch to s/img), and the time left
    bar = tqdm(mine, desc="autolabel", unit="img", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
               "{rate_noinv_fmt}]", disable=not comm.is_main_process())
    for key in bar:
        try:
            image = read_image(paths[key])
        except ImageReadError as e:
            journal.put(SKIP_PREFIX + key, {"file_name": key, "reason": str(e)})
            bad += 1
            first_bad = first_bad or str(e)
            if bad > job.max_bad_fraction * len(keys):
                raise too_many_bad(first_bad, bad, len(keys), job.max_bad_fraction,
                                    "fix or remove them and rerun the same command") from e
            continue
        anns, label = label_image(predictor, sets, image, cfg, threshold, ids)
        if job.save_masks:
            save_label(mask_path(job.output, key), label)
        journal.put(key, {"height": int(image.shape[0]), "width": int(image.shape[1]),
                          "annotations": anns})
        journal.remove(SKIP_PREFIX + key)  # an image that failed before and reads now
    seconds = time.perf_counter() - start
    if mine:
        logger.info("autolabel: %d images in %.1f s (%.2f images/s in this process)", len(mine),
                    seconds, len(mine) / max(seconds, 1e-9))
    comm.synchronize()
    if not comm.is_main_process():
        return {}
    written = write_outputs(journal, keys, source.categories, job.output, job.max_bad_fraction)
    written.update(images=len(keys), labelled=len(mine) - bad, seconds=seconds)
    return written
