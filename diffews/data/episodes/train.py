# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episodic training data (docs/METHOD.md section 4): an endless stream of random episodes.

Each episode: a class drawn uniformly from the split's (base) classes, a query image of that class,
and K support images of that class other than the query (supports may repeat each other, as in the
reference), with K drawn uniformly from 1..MAX_SHOT per episode. With several datasets
(``DATASETS.TRAIN``) each episode first draws its dataset, uniformly or with
``DATASETS.TRAIN_WEIGHTS``; the query and supports then come from that dataset and one class.

Absent-target episodes (``INPUT.FEW_SHOT.NEGATIVE_RATIO`` r > 0): after the class, query and
supports are drawn as above, one more draw ``u ~ U[0, 1)`` makes the episode absent-target when
``u < r``: its query is replaced by an image of the same dataset that cannot hold the class
(``negatives.holds_class``; uniform, by rejection), so its label, and target, is the empty mask;
the episode carries ``"negative": True``. With r = 0 nothing more is drawn: the stream is the
published one, episode for episode.
"""

import logging
from collections import defaultdict
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.utils import comm

from .negatives import holds_class
from .test import SKIP_HINT, EpisodeMapper
from ..records import BadSampleError

logger = logging.getLogger(__name__)


class EpisodicTrainDataset(torch.utils.data.IterableDataset):
    """Endless random episodes over one or more registered datasets, already mapped to model inputs.

    Args:
        dataset_names: registered image-record datasets (``DATASETS.TRAIN``).
        image_size: working size (INPUT.IMAGE_SIZE).
        max_shot: K is drawn uniformly from 1..max_shot for every episode.
        seed: base seed; each process (rank) and data-loader worker gets its own stream.
        weights: per-dataset sampling weights (``DATASETS.TRAIN_WEIGHTS``); each episode first
            draws its dataset with these probabilities (normalised), then class, query and
            supports from that dataset. None or empty: uniform over the datasets.
        skip_bad: on a missing or unreadable image or label (``BadSampleError``), False raises
            naming the file; True drops that image from its classes, logs it and draws again
            (``DATALOADER.SKIP_BAD_SAMPLES``).
        max_bad_fraction: with ``skip_bad``, raise once more than this fraction of the images
            (of this data-loader worker's copy) were dropped (``DATALOADER.MAX_BAD_FRACTION``).
        negative_ratio: probability of an absent-target episode (``INPUT.FEW_SHOT.NEGATIVE_RATIO``,
            module docstring); 0 draws none.
    """

    def __init__(self, dataset_names, image_size: int, max_shot: int, seed: int, weights=None,
                 skip_bad: bool = False, max_bad_fraction: float = 0.01,
                 negative_ratio: float = 0.0):
        if max_shot < 1:
            raise ValueError(f"INPUT.FEW_SHOT.MAX_SHOT must be >= 1, got {max_shot}")
        if not 0.0 <= negative_ratio < 1.0:
            raise ValueError(f"INPUT.FEW_SHOT.NEGATIVE_RATIO must be in [0, 1), got "
                             f"{negative_ratio}")
        self.negative_ratio = float(negative_ratio)
        self.max_shot, self.seed = max_shot, seed
        self.skip_bad, self.max_bad_fraction = bool(skip_bad), float(max_bad_fraction)
        self.bad: List[str] = []  # dropped image files, in the order met
        self.probs = _dataset_probs(dataset_names, weights)
        self.pools = []  # (mapper, class -> records, classes)
        self.records: List[List[Dict]] = []  # per dataset: its records (absent-target queries)
        for name in dataset_names:
            meta = MetadataCatalog.get(name)
            by_class: Dict[int, List[Dict]] = defaultdict(list)
            for record in DatasetCatalog.get(name):
                for c in record["classes"]:
                    by_class[c].append(record)
            classes = [c for c in meta.class_ids if len(by_class[c]) >= 2]
            if not classes:
                raise ValueError(f"{name}: no class has the two images an episode needs")
            mapper = EpisodeMapper(
                image_size, meta.label_format, getattr(meta, "ignore_boundary", False)
            )
            self.pools.append((mapper, by_class, classes))
            self.records.append([r for rs in by_class.values() for r in rs])
            logger.info("%s: %d training classes, %d images", name, len(classes),
                        sum(len(by_class[c]) for c in classes))
        self.num_images = sum(len({id(r) for rs in pool[1].values() for r in rs})
                              for pool in self.pools)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.RandomState([self.seed % 2**31, comm.get_rank(), worker_id])
        count = 0
        while True:
            pick = rng.randint(len(self.pools)) if self.probs is None else rng.choice(
                len(self.pools), p=self.probs)
            mapper, by_class, classes = self.pools[pick]
            cls = classes[rng.randint(len(classes))]
            records = by_class[cls]
            q = rng.randint(len(records))
            shots = rng.randint(1, self.max_shot + 1)
            others = [i for i in range(len(records)) if i != q]
            supports = [records[others[j]] for j in rng.randint(len(others), size=shots)]
            episode = {"episode_id": count, "class_id": cls, "query": records[q],
                       "supports": supports}
            if self.negative_ratio > 0 and rng.uniform() < self.negative_ratio:
                episode["query"] = self._absent_query(rng, self.records[pick], cls)
                episode["negative"] = True
            try:
                sample = mapper(episode)
            except BadSampleError as e:
                self._drop_bad(e, by_class, classes)
                self.records[pick] = [r for r in self.records[pick]
                                      if r["image_id"] != e.record_id]
                continue
            yield sample
            count += 1

    @staticmethod
    def _absent_query(rng: np.random.RandomState, records: List[Dict], cls: int) -> Dict:
        """A record that cannot hold ``cls``, uniform over them (rejection sampling)."""
        for _ in range(1000):
            record = records[rng.randint(len(records))]
            if not holds_class(record, cls):
                return record
        raise ValueError(f"INPUT.FEW_SHOT.NEGATIVE_RATIO: no image without class {cls} found in "
                         "1000 draws (every training image may hold it)")

    def _drop_bad(self, error: BadSampleError, by_class: Dict[int, List[Dict]], classes: List):
        """Raise (default), or drop the bad image from every class of its dataset and go on."""
        if not self.skip_bad:
            raise BadSampleError(f"{error}; {SKIP_HINT}", error.record_id, error.path) from error
        for c in list(by_class):
            by_class[c] = [r for r in by_class[c] if r["image_id"] != error.record_id]
        classes[:] = [c for c in classes if len(by_class[c]) >= 2]
        self.bad.append(error.path or error.record_id)
        logger.warning("skipping a bad training image (%d of %d so far): %s", len(self.bad),
                       self.num_images, error)
        if len(self.bad) > self.max_bad_fraction * self.num_images or not classes:
            raise BadSampleError(
                f"{len(self.bad)} of {self.num_images} training images are bad, more than "
                f"DATALOADER.MAX_BAD_FRACTION {self.max_bad_fraction} allows"
                f"{'' if classes else ' (a dataset has no class with two good images left)'}: "
                f"{', '.join(self.bad[:5])}{' ...' if len(self.bad) > 5 else ''}", path=self.bad[0])


def _dataset_probs(dataset_names, weights):
    """Normalised ``DATASETS.TRAIN_WEIGHTS``, or None for uniform (the draw without weights)."""
    if weights is None or len(weights) == 0:
        return None
    if len(weights) != len(dataset_names) or any(not w >= 0 for w in weights) or not sum(weights):
        raise ValueError(f"DATASETS.TRAIN_WEIGHTS {tuple(weights)} must give one weight >= 0 per "
                         f"dataset of DATASETS.TRAIN {tuple(dataset_names)}, not all zero")
    return np.asarray(weights, np.float64) / float(sum(weights))


def build_episodic_train_loader(cfg):
    """detectron2 train loader over ``EpisodicTrainDataset`` (batches of SOLVER.IMS_PER_BATCH
    episodes per process and per accumulation step)."""
    seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
    dataset = EpisodicTrainDataset(cfg.DATASETS.TRAIN, cfg.INPUT.IMAGE_SIZE,
                                   cfg.INPUT.FEW_SHOT.MAX_SHOT, seed, cfg.DATASETS.TRAIN_WEIGHTS,
                                   cfg.DATALOADER.SKIP_BAD_SAMPLES,
                                   cfg.DATALOADER.MAX_BAD_FRACTION,
                                   cfg.INPUT.FEW_SHOT.NEGATIVE_RATIO)
    return build_detection_train_loader(
        dataset, mapper=None, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
