# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Test-time episodes as model inputs: ``EpisodeMapper`` and ``build_fss_test_loader``.

The loader turns a registered test dataset (image records) and its fixed episode list
(``benchmarks.py``) into detectron2's test loader over episodes, sharded by ``InferenceSampler``:
process r of N gets a contiguous slice of the same list, so 1 and N processes evaluate exactly
the same episodes.

Bad data: an episode whose image or label is missing or unreadable stops the evaluation with a
message naming the file (``records.BadSampleError``), unless ``DATALOADER.SKIP_BAD_SAMPLES``: then
the episode is skipped, counted and listed in the log, and the evaluation stops once more than
``DATALOADER.MAX_BAD_FRACTION`` of the episodes (of this process) were skipped.
"""

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.samplers import InferenceSampler

from ...utils.image import image_to_tensor, resize_image, resize_mask
from ..records import LABEL_FORMATS, BadSampleError, load_sample
from .benchmarks import get_episodes
from .negatives import add_negative_episodes

logger = logging.getLogger(__name__)

__all__ = ["EpisodeMapper", "BadSampleFilter", "resolve_episodes", "test_episodes",
           "build_fss_test_loader"]

SKIP_HINT = "set DATALOADER.SKIP_BAD_SAMPLES True to skip bad samples"


class EpisodeMapper:
    """Episode (records) -> model input dict, at the square working size S.

    Steps: (1) read the query and the supports with ``load_sample`` for the episode class;
    (2) resize images with PIL bilinear to (S, S) and labels with torch nearest (the reference's
    rules, ``utils/image.py``); (3) supports keep label == 1 as foreground (255 -> 0); the query
    keeps {0, 1, 255}.
    """

    @configurable
    def __init__(self, image_size: int, label_format: str, ignore_boundary: bool,
                 keep_original: bool = False, mark_bad: bool = False):
        """
        Args:
            image_size: working size S (``INPUT.IMAGE_SIZE``).
            label_format: one of ``records.LABEL_FORMATS`` (the dataset's metadata).
            ignore_boundary: query label 255 is kept as ignore (PASCAL-5i); else labels are 0/1.
            keep_original: also return the original-size query label ("sem_seg_original").
            mark_bad: on a ``BadSampleError`` return ``{"episode_id", "class_id", "bad_sample":
                message, "bad_file": path}`` instead of raising (``BadSampleFilter`` decides in
                the main process, so the message stays one line with data-loader workers too).
        """
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
        self.image_size = int(image_size)
        self.label_format = label_format
        self.ignore_boundary = bool(ignore_boundary)
        self.keep_original = bool(keep_original)
        self.mark_bad = bool(mark_bad)

    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        meta = MetadataCatalog.get(dataset_name)
        return {
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "label_format": meta.label_format,
            "ignore_boundary": meta.get("ignore_boundary", False),
            "keep_original": cfg.TEST.FSS.ORIGINAL_SIZE,
            "mark_bad": True,
        }

    def __call__(self, episode: Dict) -> Dict:
        """The model input of ``episode`` (``_map``); with ``mark_bad``, a marker dict instead
        when one of its images or labels is bad."""
        if not self.mark_bad:
            return self._map(episode)
        try:
            return self._map(episode)
        except BadSampleError as e:
            return {"episode_id": episode["episode_id"], "class_id": int(episode["class_id"]),
                    "bad_sample": str(e), "bad_file": e.path}

    def _map(self, episode: Dict) -> Dict:
        """
        Args:
            episode: ``{"episode_id", "class_id", "query": record, "supports": [record, ...]}``.
        Returns:
            dict with "image" (3, S, S) uint8, "support_images" (K, 3, S, S) uint8,
            "support_masks" (K, S, S) uint8 in {0, 1}, "sem_seg" (S, S) uint8 in {0, 1, 255},
            "class_id", "episode_id", "query_id", "support_ids", "height"/"width" (original query
            size) and, with ``keep_original``, "sem_seg_original" (H, W) uint8.
        """
        s, cls = self.image_size, int(episode["class_id"])
        query = episode["query"]
        image, label = load_sample(query, cls, self.label_format, self.ignore_boundary)
        support_images, support_masks = [], []
        for record in episode["supports"]:
            simage, slabel = load_sample(record, cls, self.label_format, False)
            mask = (slabel == 1).astype(np.uint8)
            if not mask.any():
                logger.warning("episode %s: support %s has an empty mask for class %d",
                               episode["episode_id"], record["image_id"], cls)
            support_images.append(image_to_tensor(resize_image(simage, s)))
            support_masks.append(torch.from_numpy(resize_mask(mask, s)))
        out = {
            "image": image_to_tensor(resize_image(image, s)),
            "support_images": torch.stack(support_images),
            "support_masks": torch.stack(support_masks),
            "sem_seg": torch.from_numpy(resize_mask(label, s)),
            "class_id": cls,
            "episode_id": episode["episode_id"],
            "query_id": query["image_id"],
            "support_ids": [r["image_id"] for r in episode["supports"]],
            "height": int(label.shape[0]),
            "width": int(label.shape[1]),
        }
        if episode.get("negative"):  # absent-target episode (negatives.py), for the evaluator
            out["negative"] = True
        if self.keep_original:
            out["sem_seg_original"] = torch.from_numpy(np.ascontiguousarray(label))
        return out


def resolve_episodes(episodes: List[Dict], records: List[Dict],
                     dataset_name: str = "") -> List[Dict]:
    """Replace the episodes' image IDs by the dataset's records.

    Raises:
        ValueError: an ID is not in the dataset, or its record is not listed under the class.
    """
    by_id = {r["image_id"]: r for r in records}
    out = []
    for e in episodes:
        cls = int(e["class_id"])
        resolved = []
        for image_id in [e["query"], *e["supports"]]:
            record = by_id.get(image_id)
            if record is None:
                raise ValueError(f"episode {e['episode_id']}: image {image_id!r} is not in "
                                 f"{dataset_name or 'the dataset'} (episode file of another "
                                 "dataset or split list?)")
            if "classes" in record and cls not in record["classes"]:
                raise ValueError(f"episode {e['episode_id']}: image {image_id!r} is not listed "
                                 f"under class {cls} in {dataset_name or 'the dataset'}")
            resolved.append(record)
        out.append({"episode_id": e["episode_id"], "class_id": cls, "query": resolved[0],
                    "supports": resolved[1:]})
    return out


class BadSampleFilter:
    """A test loader without the episodes ``EpisodeMapper(mark_bad=True)`` marked bad.

    Args:
        loader: iterable of lists of mapped episodes (batch size 1 in practice).
        skip: False (default config): raise ``BadSampleError`` naming the file at the first bad
            episode. True: skip it, count it and log it; ``skipped`` lists them afterwards.
        max_fraction: with ``skip``, raise once more than this fraction of ``total`` is skipped.
        total: episodes this process evaluates (the denominator of the fraction).
        dataset_name: for the messages.
    """

    def __init__(self, loader, skip: bool, max_fraction: float, total: int, dataset_name: str = ""):
        self.loader, self.skip, self.max_fraction = loader, bool(skip), float(max_fraction)
        self.total, self.dataset_name = int(total), dataset_name
        self.skipped: List[Dict] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.skipped = []
        name = self.dataset_name or "the test set"
        for batch in self.loader:
            good = [x for x in batch if "bad_sample" not in x]
            for x in (x for x in batch if "bad_sample" in x):
                where = f"episode {x['episode_id']} of {name}"
                if not self.skip:
                    raise BadSampleError(f"{x['bad_sample']} ({where}); {SKIP_HINT}",
                                         path=x.get("bad_file", ""))
                self.skipped.append({"episode_id": x["episode_id"], "file": x.get("bad_file", ""),
                                     "error": x["bad_sample"]})
                logger.warning("skipping %s: %s (%d skipped)", where, x["bad_sample"],
                               len(self.skipped))
                if len(self.skipped) > self.max_fraction * self.total:
                    raise BadSampleError(
                        f"{name}: {len(self.skipped)} of {self.total} episodes have a bad image "
                        f"or label, more than DATALOADER.MAX_BAD_FRACTION {self.max_fraction} "
                        f"allows; first: {self.skipped[0]['error']}", path=self.skipped[0]["file"])
            if good:
                yield good
        if self.skipped:
            logger.warning("%s: skipped %d of %d episodes with bad samples (DATALOADER."
                           "SKIP_BAD_SAMPLES): %s", name, len(self.skipped), self.total,
                           "; ".join(f"episode {s['episode_id']}: {s['file']}"
                                     for s in self.skipped))


def test_episodes(cfg, dataset_name: str, cache_dir: Optional[str] = None) -> List[Dict]:
    """The resolved test episodes of a registered test dataset, as every FSS evaluation runs them.

    Episodes come from ``cfg.TEST.FSS.EPISODES_FILE`` if set, else are generated with
    ``TEST.FSS.SHOT``/``SEED``/``NUM_EPISODES`` and cached (``benchmarks.get_episodes``; the cache
    folder is ``cache_dir`` or ``$DETECTRON2_DATASETS/episodes``); their image IDs are replaced by
    the dataset's records (``resolve_episodes``) and ``TEST.FSS.NEGATIVE_RATIO`` absent-target
    episodes follow (``negatives.add_negative_episodes``).

    Returns:
        ``[{"episode_id", "class_id", "query": record, "supports": [record, ...]}, ...]`` (an
        absent-target episode also has ``"negative": True``).
    """
    records = DatasetCatalog.get(dataset_name)
    episodes = get_episodes(dataset_name, cfg.TEST.FSS.SHOT, cfg.TEST.FSS.SEED,
                            cfg.TEST.FSS.EPISODES_FILE, cfg.TEST.FSS.NUM_EPISODES, cache_dir)
    if not episodes:
        raise ValueError(f"{dataset_name}: no test episodes")
    dataset = resolve_episodes(episodes, records, dataset_name)
    return add_negative_episodes(dataset, records, cfg.TEST.FSS.NEGATIVE_RATIO, cfg.TEST.FSS.SEED)


def build_fss_test_loader(cfg, dataset_name: str, cache_dir: Optional[str] = None,
                          episodes: Optional[List[Dict]] = None,
                          indices: Optional[Sequence[int]] = None):
    """detectron2 test loader over a registered test dataset's fixed episodes.

    Args:
        episodes: the resolved episodes (default ``test_episodes(cfg, dataset_name, cache_dir)``).
        indices: the episodes this process evaluates, in order (default: its ``InferenceSampler``
            shard, a contiguous slice of the same list in every process).
    Returns:
        ``BadSampleFilter`` over a torch DataLoader, yielding lists of ``TEST.FSS.BATCH_SIZE``
        ``EpisodeMapper`` dicts (1, the reference's, by default; an episode with a bad image or
        label stops it, or is skipped with ``DATALOADER.SKIP_BAD_SAMPLES``).
    """
    if episodes is None:
        episodes = test_episodes(cfg, dataset_name, cache_dir)
        logger.info("%s: %d episodes, %d-shot", dataset_name, len(episodes), cfg.TEST.FSS.SHOT)
    sampler = list(InferenceSampler(len(episodes))) if indices is None else list(indices)
    loader = build_detection_test_loader(
        dataset=episodes,
        mapper=EpisodeMapper(cfg, dataset_name),
        sampler=sampler,
        batch_size=cfg.TEST.FSS.BATCH_SIZE,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return BadSampleFilter(loader, cfg.DATALOADER.SKIP_BAD_SAMPLES, cfg.DATALOADER.MAX_BAD_FRACTION,
                           len(sampler), dataset_name)
