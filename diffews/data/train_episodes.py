# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episodic training data (METHOD.md 4): an endless stream of random episodes.

Each episode: a class drawn uniformly from the split's (base) classes, a query image of that class,
and K support images of that class other than the query (supports may repeat each other, as in the
reference), with K drawn uniformly from 1..MAX_SHOT per episode.
"""

import logging
from collections import defaultdict
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.utils import comm

from .episode_dataset import EpisodeMapper

logger = logging.getLogger(__name__)


class EpisodicTrainDataset(torch.utils.data.IterableDataset):
    """Endless random episodes over one or more registered datasets, already mapped to model inputs.

    Args:
        dataset_names: registered image-record datasets (``DATASETS.TRAIN``).
        image_size: working size (INPUT.IMAGE_SIZE).
        max_shot: K is drawn uniformly from 1..max_shot for every episode.
        seed: base seed; each process (rank) and data-loader worker gets its own stream.
    """

    def __init__(self, dataset_names, image_size: int, max_shot: int, seed: int):
        if max_shot < 1:
            raise ValueError(f"INPUT.FEW_SHOT.MAX_SHOT must be >= 1, got {max_shot}")
        self.max_shot, self.seed = max_shot, seed
        self.pools = []  # (mapper, class -> records, classes)
        for name in dataset_names:
            meta = MetadataCatalog.get(name)
            by_class: Dict[int, List[Dict]] = defaultdict(list)
            for record in DatasetCatalog.get(name):
                for c in record["classes"]:
                    by_class[c].append(record)
            classes = [c for c in meta.class_ids if len(by_class[c]) >= 2]
            if not classes:
                raise ValueError(f"{name}: no class has the two images an episode needs")
            mapper = EpisodeMapper(image_size, meta.label_format, getattr(meta, "ignore_boundary", False))
            self.pools.append((mapper, by_class, classes))
            logger.info("%s: %d training classes, %d images", name, len(classes),
                        sum(len(by_class[c]) for c in classes))

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.RandomState([self.seed % 2**31, comm.get_rank(), worker_id])
        count = 0
        while True:
            mapper, by_class, classes = self.pools[rng.randint(len(self.pools))]
            cls = classes[rng.randint(len(classes))]
            records = by_class[cls]
            q = rng.randint(len(records))
            shots = rng.randint(1, self.max_shot + 1)
            others = [i for i in range(len(records)) if i != q]
            supports = [records[others[j]] for j in rng.randint(len(others), size=shots)]
            yield mapper({"episode_id": count, "class_id": cls, "query": records[q], "supports": supports})
            count += 1


def build_episodic_train_loader(cfg):
    """detectron2 train loader over ``EpisodicTrainDataset`` (batches of SOLVER.IMS_PER_BATCH
    episodes per process and per accumulation step)."""
    seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
    dataset = EpisodicTrainDataset(cfg.DATASETS.TRAIN, cfg.INPUT.IMAGE_SIZE,
                                   cfg.INPUT.FEW_SHOT.MAX_SHOT, seed)
    return build_detection_train_loader(
        dataset, mapper=None, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
