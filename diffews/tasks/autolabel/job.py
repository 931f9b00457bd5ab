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
   again, deleting only the files the earlier run wrote). A folder that is not an autolabel
   run's output (no journal) but holds a name a run writes (``annotations.json``, ``masks/`` ...)
   is refused, ``--overwrite`` or not (``io.check_output_folder``). The image list is not part
   of the fingerprint: images added to the folder are labelled by the next run, in addition.
   A shard records the file it was computed from (size, modification time, sha256): an image
   replaced since (``io.unchanged``: another size, or another time and other bytes) is labelled
   again, and one that became unreadable loses its shard and label PNG.
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
from .io import (ANNOTATIONS, JOURNAL, MASK_NAMES, MASKS, SETS, SKIP_PREFIX, SKIPPED,
                 check_mask_names, check_output_folder, file_identity, list_label_images,
                 mask_path, remove_owned, save_label, too_many_bad, unchanged, write_outputs)
from .supports import (SupportSource, check_set_foreground, read_supports, set_file,
                       support_sets)

logger = logging.getLogger(__name__)

__all__ = ["LabelJob", "job_fingerprint", "check_job", "label_image", "run"]


@dataclass
class LabelJob:
    """The command of one autolabel run (``tools/autolabel.py`` flags)."""

    supports: str
    images: str
    output: str
    supports_images: Optional[str] = None
    presence_threshold: Optional[float] = None  # None: the config's (presence_threshold)
    max_bad_fraction: float = 0.01
    save_masks: bool = False
    overwrite: bool = False


NO_DECISION = -1.0  # a presence threshold < 0: every class kept (the predictor's convention)


def presence_threshold(cfg, job: LabelJob) -> Optional[float]:
    """The flag (< 0: no decision, ``NO_DECISION``), else the model's config key when >= 0
    (``Predictor.presence_key``: MODEL.DIFFEWS.PRESENCE_THRESHOLD, MODEL.SINE.PRESENCE_THRESHOLD),
    else None: the predictor's default (the threshold calibrated weights carry, or no decision)."""
    if job.presence_threshold is not None:
        value = float(job.presence_threshold)
        return NO_DECISION if value < 0 else value
    return predictor_class(cfg).configured_presence(cfg)


def job_fingerprint(cfg, source: SupportSource, job: LabelJob) -> Dict:
    """Everything that changes ``annotations.json`` (``resume.run_fingerprint``): the config
    minus what does not change results, the weights and the model's other files, the supports'
    content, the presence threshold and ``--save-masks`` (how label PNGs are named)."""
    return run_fingerprint(cfg, supports=source.fingerprint(),
                           presence_threshold=presence_threshold(cfg, job),
                           save_masks=MASK_NAMES if job.save_masks else False)


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
    if job.save_masks:
        check_mask_names(job.output, [k for k, _ in images])
    fingerprint = job_fingerprint(cfg, source, job)
    if comm.is_main_process():  # the others run it while the main one creates the journal
        check_output_folder(job.output)
    if not job.overwrite:
        Journal.verify(os.path.join(job.output, JOURNAL), fingerprint, f"--output {job.output}")
    return source, images, fingerprint


def label_image(predictor, sets, image: np.ndarray, cfg, threshold: Optional[float] = None,
                category_ids: Optional[List[int]] = None):
    """One image against every class's set.

    Args:
        image: (H, W, 3) uint8.
        threshold: a class whose presence is below it gives nothing (None: the predictor's
            configured threshold; < 0: no decision, every class kept).
        category_ids: the COCO id of each set's class (default 1..C).
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


def _owned_files(job: LabelJob, old: Dict, source: SupportSource, keys: List[str]) -> List[str]:
    """The files of ``--output`` that an autolabel run wrote, from its journal (fingerprint
    ``old``): the json outputs, the support-set files of its and this run's classes, and with
    its ``--save-masks`` the label PNGs of its images and of this run's (a killed run writes a
    PNG before its shard)."""
    files = [os.path.join(job.output, n) for n in (ANNOTATIONS, SKIPPED)]
    names = {c["name"] for c in old["supports"].get("categories", [])} | set(source.classes)
    files += [set_file(os.path.join(job.output, SETS), n) for n in sorted(names)]
    if old.get("save_masks"):
        done = Journal(os.path.join(job.output, JOURNAL), old, create=False).keys()
        legacy = old["save_masks"] is True  # named without the extension
        files += [mask_path(job.output, k, legacy) for k in sorted(set(done) | set(keys))
                  if not k.startswith(SKIP_PREFIX)]
    return files


def _open_journal(job: LabelJob, fingerprint: Dict, source: SupportSource,
                  keys: List[str]) -> Journal:
    folder = os.path.join(job.output, JOURNAL)
    what = f"--output {job.output}"
    if comm.is_main_process():
        old = check_output_folder(job.output)  # again: nothing is deleted in a foreign folder
        if job.overwrite and old is not None:  # the old outputs first: none outlives the reset
            removed = remove_owned(_owned_files(job, old, source, keys),
                                   [os.path.join(job.output, n) for n in (MASKS, SETS)])
            logger.info("--overwrite: deleted %d files of the earlier run in %s", removed,
                        job.output)
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


def _pending(journal: Journal, keys: List[str], paths: Dict[str, str]) -> List[str]:
    """The images without a shard, and those whose file changed since its shard was written
    (``io.unchanged``: size and time, else the bytes), in image order."""
    left = set(journal.pending(keys))
    changed = [k for k in keys if k not in left
               and not unchanged(paths[k], journal.get(k).get("source"))]
    if changed:
        logger.info("autolabel: %d labelled images changed since (first: %s); labelling them "
                    "again", len(changed), changed[0])
    redo = left | set(changed)
    return [k for k in keys if k in redo]


def run(cfg, job: LabelJob, predictor=None, checked=None) -> Dict:
    """The whole job in this process (module docstring); call it in every process of a launch.
    ``checked``: what ``check_job(cfg, job)`` returned, if the caller ran it already.

    Returns:
        ``{"images", "labelled", "skipped", "annotations", "seconds"}`` in the main process
        (``labelled``: by this run, in every process; ``seconds``: the main process's), ``{}``
        in the others.
    """
    source, images, fingerprint = checked or check_job(cfg, job)
    keys = [k for k, _ in images]
    journal = _open_journal(job, fingerprint, source, keys)
    if predictor is None:
        predictor = build_predictor(cfg)
    sets = _prepare_sets(predictor, source, os.path.join(job.output, SETS))
    if source.kind == "sets":  # the other kinds' masks were checked by read_supports
        check_set_foreground(source, sets)
    # None: the predictor's default (configured, else calibrated weights'); < 0: no decision
    threshold = presence_threshold(cfg, job)
    ids = [c["id"] for c in source.categories]
    paths = dict(images)
    # the main process lists what is left, the others take its list (all before anyone writes)
    pending = comm.all_gather(_pending(journal, keys, paths) if comm.is_main_process()
                              else None)[0]
    mine = pending[comm.get_rank()::comm.get_world_size()]
    bad, first_bad, start = 0, None, time.perf_counter()
    # images/s even below 1 image/s (tqdm would switch to s/img), and the time left
    bar = tqdm(mine, desc="autolabel", unit="img", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
               "{rate_noinv_fmt}]", disable=not comm.is_main_process())
    for key in bar:
        try:
            source_file = file_identity(paths[key])  # before reading: a later change is seen
        except OSError:  # read_image names the file
            source_file = None
        try:
            image = read_image(paths[key])
        except ImageReadError as e:
            journal.remove(key)  # the shard of the file it replaced goes first
            if job.save_masks and os.path.isfile(mask_path(job.output, key)):
                os.remove(mask_path(job.output, key))
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
                          "annotations": anns, "source": source_file})
        journal.remove(SKIP_PREFIX + key)  # an image that failed before and reads now
    seconds = time.perf_counter() - start
    if mine:
        logger.info("autolabel: %d images in %.1f s (%.2f images/s in this process)", len(mine),
                    seconds, len(mine) / max(seconds, 1e-9))
    comm.synchronize()
    if not comm.is_main_process():
        return {}
    written = write_outputs(journal, keys, source.categories, job.output, job.max_bad_fraction)
    # every process's: the images left at the start that have a shard now
    labelled = sum(1 for k in pending if journal.done(k))
    written.update(images=len(keys), labelled=labelled, seconds=seconds)
    return written
