# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's training mixture: an endless stream of in-context samples over several sources.

Each sample first draws its task, panoptic or instance (weights 2 : 5), then a source of that
task (panoptic COCO : ADE20K = 1 : 1, instance COCO : Objects365-SAM = 1 : 3), then a sample
from that source (``source.py``), as the original's ``HybridDataset.__getitem__`` does
(aim-uofa/SINE ``sine/data/dataset.py`` l.121-126; the rates from ``scripts/train_sine.sh``).
The original draws from numpy's global generator in each data-loader worker; here each process
(rank) and worker has its own ``RandomState([seed, rank, worker])``, so a run is reproducible.

A panoptic source may also be a few-shot dataset (the custom layouts, the synthetic benchmark):
its class masks are the segments (``fss_source.py``, chosen by ``make_source``).
"""

import logging
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import build_detection_train_loader
from detectron2.utils import comm

from .fss_source import FSSRecordSource
from .source import AugmentSettings, InContextSource

logger = logging.getLogger(__name__)

__all__ = ["InContextTrainDataset", "build_incontext_train_loader", "settings_from_config",
           "make_source"]


def _probs(weights: Sequence[float], names: Sequence, what: str) -> np.ndarray:
    if len(weights) != len(names) or not all(w >= 0 for w in weights) or not sum(weights):
        raise ValueError(f"{what}: weights {tuple(weights)} must give one weight >= 0 per entry "
                         f"of {tuple(names)}, not all zero")
    return np.asarray(weights, np.float64) / float(sum(weights))


def make_source(name: str, settings: AugmentSettings, task: str):
    """The source of a registered dataset: a SINE source (``sine_task`` metadata, or any
    panoptic / instance record list) as ``InContextSource``; a few-shot dataset (``label_format``
    metadata and no ``sine_task``) as ``FSSRecordSource``, for the panoptic task only."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    if meta.get("label_format", None) is not None and meta.get("sine_task", None) is None:
        if task != "panoptic":
            raise ValueError(f"DATASETS.SINE_TRAIN.INSTANCE: {name} is a few-shot dataset (one "
                             "mask per class and image, no instances): list it under "
                             "DATASETS.SINE_TRAIN.PANOPTIC")
        return FSSRecordSource(name, settings)
    return InContextSource(name, settings, task)


class InContextTrainDataset(torch.utils.data.IterableDataset):
    """Endless in-context samples (schema in ``source.py``) from a task mixture.

    Args:
        sources: task ("panoptic" / "instance") -> list of (registered dataset name, weight).
            A task with no source is never drawn.
        task_weights: task -> weight (2 : 5 in the original).
        settings: augmentation settings shared by every source.
        seed: base seed; each rank and data-loader worker gets its own stream.
    """

    def __init__(self, sources: Dict[str, List], task_weights: Dict[str, float],
                 settings: AugmentSettings, seed: int = 0):
        self.tasks = [t for t in ("panoptic", "instance") if sources.get(t)]
        if not self.tasks:
            raise ValueError("SINE training: no panoptic and no instance source given")
        unknown = set(sources) - {"panoptic", "instance"}
        if unknown:
            raise ValueError(f"SINE training: unknown tasks {sorted(unknown)}")
        self.task_probs = _probs([task_weights.get(t, 0.0) for t in self.tasks], self.tasks,
                                 "SINE task weights")
        self.sources = {}
        self.source_probs = {}
        for task in self.tasks:
            names = [n for n, _ in sources[task]]
            self.source_probs[task] = _probs([w for _, w in sources[task]], names,
                                             f"SINE {task} sources")
            self.sources[task] = [make_source(n, settings, task) for n in names]
        self.seed = seed

    def sample(self, rng: np.random.RandomState) -> Dict:
        """One sample: task, source, then the source's draw."""
        task = self.tasks[rng.choice(len(self.tasks), p=self.task_probs)]
        source = self.sources[task][rng.choice(len(self.sources[task]),
                                               p=self.source_probs[task])]
        return source.draw(rng)

    def __iter__(self) -> Iterator[Dict]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.RandomState([self.seed % 2**31, comm.get_rank(), worker_id])
        while True:
            yield self.sample(rng)


def settings_from_config(cfg) -> AugmentSettings:
    """``AugmentSettings`` from ``INPUT.SINE_TRAIN``."""
    c = cfg.INPUT.SINE_TRAIN
    return AugmentSettings(c.IMAGE_SIZE, c.MIN_SCALE, c.MAX_SCALE, c.RANDOM_FLIP, c.CROP_RATIO)


def _sources(names: Sequence[str], weights: Sequence[float], key: str) -> List:
    if len(names) != len(weights):
        raise ValueError(f"DATASETS.SINE_TRAIN.{key}: {len(names)} datasets but {len(weights)} "
                         "weights")
    return list(zip(names, weights))


def build_incontext_train_loader(cfg, seed: Optional[int] = None):
    """detectron2 train loader over ``InContextTrainDataset`` from ``DATASETS.SINE_TRAIN`` and
    ``INPUT.SINE_TRAIN`` (batches of SOLVER.IMS_PER_BATCH samples per process and step, as
    lists of sample dicts)."""
    d = cfg.DATASETS.SINE_TRAIN
    if len(d.TASK_WEIGHTS) != 2:
        raise ValueError(f"DATASETS.SINE_TRAIN.TASK_WEIGHTS must be (panoptic, instance), got "
                         f"{tuple(d.TASK_WEIGHTS)}")
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
    dataset = InContextTrainDataset(
        {"panoptic": _sources(d.PANOPTIC, d.PANOPTIC_WEIGHTS, "PANOPTIC_WEIGHTS"),
         "instance": _sources(d.INSTANCE, d.INSTANCE_WEIGHTS, "INSTANCE_WEIGHTS")},
        {"panoptic": d.TASK_WEIGHTS[0], "instance": d.TASK_WEIGHTS[1]},
        settings_from_config(cfg), seed)
    return build_detection_train_loader(
        dataset, mapper=None, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS)
