# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""How each benchmark draws its fixed test episodes, as the HSNet-family code draws them
(docs/PROTOCOLS.md section 2a, 2c). ``benchmarks.make_episodes`` / ``get_episodes`` call these.

The reference code draws episodes with the *global* numpy RNG seeded once (``np.random.seed(0)``),
in dataset order, one ``np.random.choice(x, 1, replace=False)[0]`` per draw (``replace=False``
permutes the whole population, so it consumes the stream differently from ``replace=True``).
Here each benchmark gets its own ``np.random.RandomState(seed)``, which yields the same stream, so
the episodes equal the reference's when the reference model uses no numpy randomness, and they
never depend on our model's randomness or on the number of processes.

Per benchmark (K = shot; "supports loop" = draw a support, keep it if it differs from the query,
until K are kept; supports may repeat each other, LVIS included):

* coco (1000 episodes): class = choice(fold classes); query = choice(class images); supports loop
  over the class images.
* pascal (1000): query, class = img_metadata[i % len(img_metadata)] (the val file, in order);
  supports loop over the class images.
* fss (one per test image): query = the i-th image; supports loop over ``choice(range(1, 11))``,
  i.e. ``<class>/<s>.jpg``.
* lvis (2300): class = fold classes[i % n]; query = choice(class images, dict order); supports
  loop over the same list (docs/PROTOCOLS.md section 2c: only a draw equal to the query is
  rejected, so a K-shot episode may hold the same support twice).
* custom (``datasets/custom.py``, 1000 by default): class = choice(test classes); query =
  choice(class images); supports loop, distinct. Drawn from the dataset's records, not cached.
"""

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..datasets.coco20i import TEST_EPISODES as COCO_EPISODES
from ..datasets.coco20i import coco20i_class_ids, load_coco20i_classwise
from ..datasets.fss1000 import fss1000_image_list
from ..datasets.lvis92i import TEST_EPISODES as LVIS_EPISODES
from ..datasets.lvis92i import lvis92i_fold_classes, load_lvis_annotations
from ..datasets.pascal5i import TEST_EPISODES as PASCAL_EPISODES
from ..datasets.pascal5i import load_pascal5i_metadata, pascal5i_classwise

logger = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "draw_coco", "draw_pascal", "draw_fss", "draw_lvis",
           "draw_custom", "episode_dict"]

# Version of the drawing rules above. Bump it whenever a rule changes what is drawn: cached episode
# lists carry it, and a list drawn under another version is regenerated (get_episodes) or flagged
# (load_episodes callers, tools/make_episodes.py). 1: LVIS supports kept distinct (wrong);
# 2: LVIS supports drawn as Matcher's load_frame draws them (repeats allowed).
GENERATOR_VERSION = 2


def _draw_supports(rng: np.random.RandomState, pool: Sequence, query, shot: int,
                   distinct: bool = False, to_name: Callable = lambda x: x) -> List:
    """The reference's rejection loop: ``s = to_name(choice(pool, 1, replace=False)[0])``, kept
    if ``s != query`` (and, if ``distinct``, not already kept), until ``shot`` are kept."""
    supports: List = []
    while True:
        s = to_name(rng.choice(pool, 1, replace=False)[0])
        if s != query and not (distinct and s in supports):
            supports.append(s)
        if len(supports) == shot:
            return supports


def _check_pool(num_distinct: int, shot: int, distinct: bool, what: str) -> None:
    """The reference loops forever when a class has too few images besides the query (which is
    one of the ``num_distinct`` distinct images of the pool); raise instead."""
    others = num_distinct - 1
    if others <= 0 or (distinct and others < shot):
        raise ValueError(f"{what}: {others} image(s) besides the query, cannot draw {shot} "
                         "support(s)")


def draw_coco(fold, shot, rng, n, root, splits) -> List[Dict]:
    """COCO-20i fold ``fold``: ``n`` episodes (None: the protocol's 1000) drawn from ``rng``."""
    classwise = load_coco20i_classwise(fold, "test", root, splits)
    class_ids = coco20i_class_ids(fold, "test")
    for c in class_ids:
        if not classwise.get(c):
            raise ValueError(
                f"COCO-20i fold {fold}: class {c} has no test images in the split list")
    num_distinct = {c: len(set(classwise[c])) for c in class_ids}
    episodes = []
    for i in range(n or COCO_EPISODES):
        cls = int(rng.choice(class_ids, 1, replace=False)[0])
        pool = classwise[cls]
        query = str(rng.choice(pool, 1, replace=False)[0])
        _check_pool(num_distinct[cls], shot, False, f"COCO-20i class {cls}")
        supports = _draw_supports(rng, pool, query, shot, to_name=str)
        episodes.append(episode_dict(i, cls, _stem(query), [_stem(s) for s in supports]))
    return episodes


def draw_pascal(fold, shot, rng, n, root, splits) -> List[Dict]:
    """PASCAL-5i fold ``fold``: ``n`` episodes (None: the protocol's 1000) drawn from ``rng``."""
    metadata = load_pascal5i_metadata(fold, "test", root, splits)
    if not metadata:
        raise ValueError(f"PASCAL-5i fold {fold}: the val split list is empty")
    classwise = pascal5i_classwise(metadata)
    num_distinct = {c: len(set(names)) for c, names in classwise.items()}
    episodes = []
    for i in range(n or PASCAL_EPISODES):
        query, cls = metadata[i % len(metadata)]
        pool = classwise[cls]
        _check_pool(num_distinct[cls], shot, False, f"PASCAL-5i class {cls}")
        supports = _draw_supports(rng, pool, query, shot, to_name=str)
        episodes.append(episode_dict(i, cls, query, supports))
    return episodes


def draw_fss(shot, rng, n, root, splits) -> List[Dict]:
    """FSS-1000: ``n`` episodes (None: one per test image) drawn from ``rng``."""
    images = fss1000_image_list("test", root, splits)
    if not images:
        raise ValueError("FSS-1000: no test images found")
    episodes = []
    for i in range(n or len(images)):
        query_id, cls, path = images[i % len(images)]
        folder, category = os.path.dirname(path), query_id.rsplit("/", 1)[0]
        # compare paths as the reference does: dirname(query) + f"/{s}.jpg" != query path
        picked = _draw_supports(rng, range(1, 11), path, shot,
                                to_name=lambda s: os.path.join(folder, str(s)) + ".jpg")
        supports = [f"{category}/{_stem(p)}" for p in picked]
        episodes.append(episode_dict(i, cls, query_id, supports))
    return episodes


def draw_lvis(fold, shot, rng, n, root) -> List[Dict]:
    """LVIS-92i fold ``fold``: ``n`` episodes (None: the protocol's 2300) drawn from ``rng``."""
    annotations = load_lvis_annotations("test", root)
    cats = lvis92i_fold_classes(annotations, fold, shot)
    if not cats:
        raise ValueError(f"LVIS-92i: fewer than 10 classes with more than {shot} images")
    episodes = []
    for i in range(n or LVIS_EPISODES):
        local = i % len(cats)
        pool = list(annotations[cats[local]].keys())  # dict order, as Matcher's list(keys())
        query = rng.choice(pool, 1, replace=False)[0]
        _check_pool(len(pool), shot, False, f"LVIS-92i category {cats[local]}")
        supports = _draw_supports(rng, pool, query, shot)
        episodes.append(episode_dict(i, local, _stem(query), [_stem(s) for s in supports]))
    return episodes


def draw_custom(dataset_name: str, shot: int, seed: int, n: Optional[int]) -> List[Dict]:
    """Custom datasets (``datasets/custom.py``): class = choice(test classes); query =
    choice(class images, in record order); supports loop over the class images, distinct."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = DatasetCatalog.get(dataset_name)  # sets the metadata class_ids
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("shot_filter") != shot:
        raise ValueError(f"{dataset_name} was registered for {meta.get('shot_filter')}-shot "
                         f"episodes; register it for {shot} shots (register_custom_fss(..., "
                         f"shot={shot}) or DATASETS.CUSTOM.<name>.SHOT {shot})")
    class_ids = list(meta.class_ids)
    classwise: Dict[int, List[str]] = {c: [] for c in class_ids}
    for r in records:
        for c in r["classes"]:
            if c in classwise:
                classwise[c].append(r["image_id"])
    rng = np.random.RandomState(seed)
    episodes = []
    for i in range(n or meta.num_episodes):
        cls = int(rng.choice(class_ids, 1, replace=False)[0])
        pool = classwise[cls]
        query = str(rng.choice(pool, 1, replace=False)[0])
        _check_pool(len(pool), shot, True, f"{dataset_name} class {cls}")
        supports = _draw_supports(rng, pool, query, shot, distinct=True, to_name=str)
        episodes.append(episode_dict(i, cls, query, supports))
    logger.info("%s, %d-shot, seed %d: %d episodes", dataset_name, shot, seed, len(episodes))
    return episodes


def _stem(name) -> str:
    """Record image ID of a path or file name: its name without folder and extension."""
    return os.path.splitext(os.path.basename(str(name)))[0]


def episode_dict(i: int, cls: int, query: str, supports: List[str]) -> Dict:
    """One episode as episode files hold it (``file.py``)."""
    return {"episode_id": i, "class_id": int(cls), "query": str(query),
            "supports": [str(s) for s in supports]}
