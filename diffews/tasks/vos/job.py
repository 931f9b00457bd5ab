# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Video object segmentation over a registered dataset: records, the run that writes the official
results layout (and scores DAVIS val), and the visual strips.

Resumable: a sequence whose PNGs were all written is recorded as one shard of
``<output>/journal/`` (``tasks/resume.py``; key: the video's name); the same command started again
skips it, so a killed run redoes at most the sequence it was in. Another command (config,
weights, the model's other files, dataset) on the same folder is refused unless ``overwrite``. The
fingerprint leaves out ``--videos`` (each sequence depends only on itself) and ``--save-vis``."""

import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from PIL import Image
from tqdm import tqdm

from ...data.datasets.roots import dataset_root
from ...data.datasets.vos_results import DAVIS_PALETTE, write_result, zip_ytvos_submission
from ...data.datasets.vos import VOS_DATASETS, load_davis, load_ytvos
from ...utils.atomic import atomic_path
from ...utils.overlay import overlay_mask, side_by_side
from ..resume import JOURNAL, check_resume, log_progress, open_journal, run_fingerprint

logger = logging.getLogger("diffews.tasks.vos")

__all__ = ["VOSJob", "VIS_FRAMES", "load_vos_records", "overlay_labels", "check", "run"]

VIS_FRAMES = 8  # frames per video in a --save-vis strip


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
    strip = Image.fromarray(side_by_side([p for p, _ in panels], [n for _, n in panels]))
    with atomic_path(path, suffix=".jpg") as tmp:  # never a half-written strip
        strip.save(tmp, quality=90)


@dataclass
class VOSJob:
    """What ``run`` segments (``inference_vos/run_vos.py`` builds it from its flags).

    Attributes:
        dataset: a registered VOS dataset (``data.datasets.vos.VOS_DATASETS``).
        output: results folder.
        root: datasets root (default ``$DETECTRON2_DATASETS``).
        videos: only these videos (None: all).
        save_vis: write ``<output>/vis/<video>.jpg`` strips.
        evaluate: score DAVIS val at the end.
        progress: show a progress bar per video.
        overwrite: start again in a folder holding another job's journal.
    """

    dataset: str
    output: str
    root: Optional[str] = None
    videos: Optional[Sequence[str]] = None
    save_vis: bool = False
    evaluate: bool = True
    progress: bool = True
    overwrite: bool = False


def _fingerprint(cfg, dataset: str) -> Dict:
    """What changes a sequence's masks: the config, the weights, the model's other files and
    the dataset (not the videos chosen: each sequence depends only on itself)."""
    return run_fingerprint(cfg, dataset=dataset)


def check(cfg, job: VOSJob, records: Optional[List[Dict]] = None) -> List[Dict]:
    """Before the model is built: the dataset's records (a missing tree or an unknown video
    name; ``records`` if the caller read them already), then the output folder's journal
    (another job's is refused unless ``overwrite``). Returns the records."""
    if records is None:
        records = load_vos_records(job.dataset, job.root, job.videos)
    check_resume(os.path.join(job.output, JOURNAL), _fingerprint(cfg, job.dataset), job.overwrite,
                 f"--output {job.output}")
    return records


def run(cfg, job: VOSJob, predictor=None) -> Dict:
    """Segment every video of ``job.dataset`` and write the official results layout in
    ``job.output`` (DAVIS: ``<video>/<frame>.png``; YouTube-VOS: ``Annotations/<video>/<frame>.png``
    of the frames meta.json lists, and ``submission.zip``); DAVIS val (public ground truth) is
    scored. ``predictor``: default ``build_predictor(cfg)``.

    Returns:
        {"dataset", "videos", "frames", "seconds", "fps", "output", "zip" (YouTube-VOS),
        "scores" (a ``DAVISScores``, DAVIS val with ``evaluate``), "memory_entries" (frames that
        entered an object's memory, first frames included), "resumed" (sequences an earlier run
        of the same command finished)}; "seconds" and "fps" are this run's.
    """
    from ...evaluation.vos_evaluation import evaluate_davis
    from ...evaluation.davis_report import write_davis_csvs
    from .engine import VOSEngine

    dataset, output, root, progress = job.dataset, job.output, job.root, job.progress
    records = load_vos_records(dataset, root, job.videos)
    meta = MetadataCatalog.get(dataset)
    journal = open_journal(os.path.join(output, JOURNAL), _fingerprint(cfg, dataset),
                           job.overwrite, f"--output {output}")
    todo = set(journal.pending([r["video"] for r in records]))
    log_progress(logger, dataset, len(records), len(todo), "sequences")
    engine = VOSEngine.from_config(cfg, predictor)
    os.makedirs(output, exist_ok=True)
    frames, entered, start, done_now = 0, 0, time.perf_counter(), 0
    for record in records:
        n = len(record["frames"])
        if record["video"] not in todo:  # all its PNGs written by an earlier run
            frames += n
            entered += journal.get(record["video"])["memory_entries"]
            continue
        video_entered = 0
        show = set(np.linspace(0, n - 1, min(n, VIS_FRAMES)).round().astype(int)) \
            if job.save_vis else set()
        panels = []
        with tqdm(total=n, desc=record["video"], unit="frame", disable=not progress) as bar:
            for out in engine.segment_video(record):
                write_result(record, out["index"], out["label_map"], output, meta.results_layout)
                if out["index"] in show:
                    panels.append((overlay_labels(out["image"], out["label_map"]), out["frame"]))
                video_entered += len(out["entered"])
                bar.update(1)
        if panels:
            _save_strip(panels, os.path.join(output, "vis", record["video"] + ".jpg"))
        journal.put(record["video"], {"frames": n, "memory_entries": video_entered})
        frames, entered, done_now = frames + n, entered + video_entered, done_now + n
    seconds = time.perf_counter() - start
    summary = {"dataset": dataset, "videos": len(records), "frames": frames, "seconds": seconds,
               "fps": done_now / max(seconds, 1e-9), "output": output, "memory_entries": entered,
               "resumed": len(records) - len(todo)}
    logger.info("%s: %d videos, %d frames in %.1f s (%.2f frames/s), %d memory entries",
                dataset, len(records), frames, seconds, summary["fps"], entered)
    if meta.results_layout == "ytvos":
        summary["zip"] = zip_ytvos_submission(output, records)
    if meta.has_full_gt and job.evaluate:
        davis_root = os.path.join(dataset_root(root), "DAVIS17", "trainval")
        scores = evaluate_davis(davis_root, output, meta.split, meta.year,
                                [r["video"] for r in records], progress=progress)
        write_davis_csvs(scores, output, meta.split)
        summary["scores"] = scores
    return summary
