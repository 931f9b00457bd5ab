# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Video object segmentation over a registered dataset: records, the run that writes the official
results layout (and scores DAVIS val), and the visual strips (``diffews.tasks.vos`` re-exports).

Resumable: a sequence whose PNGs were all written is recorded as one shard of
``<output>/journal/`` (``tasks/resume.py``; key: the video's name); the same command started again
skips it, so a killed run redoes at most the sequence it was in. Another command (config,
weights, PRETRAINED, dataset) on the same folder is refused unless ``overwrite``. The
fingerprint leaves out ``--videos`` (each sequence depends only on itself) and ``--save-vis``."""

import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from PIL import Image
from tqdm import tqdm

from ..data.datasets.common import dataset_root
from ..data.datasets.vos import (DAVIS_PALETTE, VOS_DATASETS, load_davis, load_ytvos,
                                write_result, zip_ytvos_submission)
from ..utils.atomic import atomic_path
from ..utils.overlay import overlay_mask, side_by_side
from .resume import (JOURNAL, check_resume, config_fingerprint, files_identity, log_progress,
                     open_journal, pretrained_identity)

logger = logging.getLogger("diffews.tasks.vos")

__all__ = ["load_vos_records", "overlay_labels", "run_vos", "vos_fingerprint", "check_vos_resume"]

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


def vos_fingerprint(cfg, dataset: str) -> Dict:
    """What changes a sequence's masks: the config, the weights, PRETRAINED and the dataset."""
    return {"config": config_fingerprint(cfg), "weights": files_identity(cfg.MODEL.WEIGHTS),
            "pretrained": pretrained_identity(cfg), "dataset": dataset}


def check_vos_resume(cfg, dataset: str, output: str, overwrite: bool = False) -> None:
    """Refuse, before the model is built, an output folder of another command."""
    check_resume(os.path.join(output, JOURNAL), vos_fingerprint(cfg, dataset), overwrite,
                 f"--output {output}")


def run_vos(cfg, dataset: str, output: str, root: Optional[str] = None,
            videos: Optional[Sequence[str]] = None, save_vis: bool = False,
            evaluate: bool = True, progress: bool = True, overwrite: bool = False) -> Dict:
    """Segment every video of ``dataset`` and write the official results layout in ``output``
    (DAVIS: ``<video>/<frame>.png``; YouTube-VOS: ``Annotations/<video>/<frame>.png`` of the
    frames meta.json lists, and ``submission.zip``); DAVIS val (public ground truth) is scored.

    Returns:
        {"dataset", "videos", "frames", "seconds", "fps", "output", "zip" (YouTube-VOS),
        "scores" (a ``DAVISScores``, DAVIS val with ``evaluate``), "memory_entries" (frames that
        entered an object's memory, first frames included), "resumed" (sequences an earlier run
        of the same command finished)}; "seconds" and "fps" are this run's.
    """
    from ..evaluation.vos_evaluation import evaluate_davis, write_davis_csvs

    records = load_vos_records(dataset, root, videos)
    meta = MetadataCatalog.get(dataset)
    from .vos import VOSEngine

    journal = open_journal(os.path.join(output, JOURNAL), vos_fingerprint(cfg, dataset), overwrite,
                           f"--output {output}")
    todo = set(journal.pending([r["video"] for r in records]))
    log_progress(logger, dataset, len(records), len(todo), "sequences")
    engine = VOSEngine.from_config(cfg)
    os.makedirs(output, exist_ok=True)
    frames, entered, start, done_now = 0, 0, time.perf_counter(), 0
    for record in records:
        n = len(record["frames"])
        if record["video"] not in todo:  # all its PNGs written by an earlier run
            frames += n
            entered += journal.get(record["video"])["memory_entries"]
            continue
        video_entered = 0
        show = set(np.linspace(0, n - 1, min(n, VIS_FRAMES)).round().astype(int)) if save_vis \
            else set()
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
    if meta.has_full_gt and evaluate:
        davis_root = os.path.join(dataset_root(root), "DAVIS17", "trainval")
        scores = evaluate_davis(davis_root, output, meta.split, meta.year,
                                [r["video"] for r in records], progress=progress)
        write_davis_csvs(scores, output, meta.split)
        summary["scores"] = scores
    return summary
