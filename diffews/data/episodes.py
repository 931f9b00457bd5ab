# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Fixed test episodes, drawn exactly as the HSNet-family code draws them (PROTOCOLS.md 2a, 2c).

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
  loop over the same list (Matcher ``lvis.py`` ``load_frame``: only a draw equal to the query is
  rejected, so a K-shot episode may hold the same support twice).
* custom (``datasets/custom.py``, 1000 by default): class = choice(test classes); query =
  choice(class images); supports loop, distinct. Drawn from the dataset's records, not cached.

An episode is ``{"episode_id": int, "class_id": int, "query": ID, "supports": [ID, ...]}``. A file
of episodes (``save_episodes``) is a JSON object ``{"generator_version": GENERATOR_VERSION,
"episodes": [...]}`` with one episode per line; ``load_episodes`` also reads a plain JSON list of
episodes (files written by hand or by older versions, which carry no generator version).
Cached lists whose ``generator_version`` is not ``GENERATOR_VERSION`` are regenerated, never reused.
"""

import hashlib
import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.atomic import atomic_open
from .datasets.coco20i import TEST_EPISODES as COCO_EPISODES
from .datasets.coco20i import coco20i_class_ids, load_coco20i_classwise
from .datasets.common import SPLITS_ENV, dataset_root
from .datasets.fss1000 import fss1000_image_list
from .datasets.lvis92i import TEST_EPISODES as LVIS_EPISODES
from .datasets.lvis92i import lvis92i_fold_classes, lvis92i_test_name, load_lvis_annotations
from .datasets.pascal5i import TEST_EPISODES as PASCAL_EPISODES
from .datasets.pascal5i import load_pascal5i_metadata, pascal5i_classwise

logger = logging.getLogger(__name__)

__all__ = ["BENCHMARK_FOLDS", "GENERATOR_VERSION", "make_episodes", "save_episodes",
           "load_episodes", "read_episode_file", "stale_version", "get_episodes",
           "test_dataset_name"]

# Version of the drawing rules above. Bump it whenever a rule changes what is drawn: cached episode
# lists carry it, and a list drawn under another version is regenerated (get_episodes) or flagged
# (load_episodes callers, tools/make_episodes.py). 1: LVIS supports kept distinct (wrong);
# 2: LVIS supports drawn as Matcher's load_frame draws them (repeats allowed).
GENERATOR_VERSION = 2

BENCHMARK_FOLDS = {"coco": 4, "pascal": 4, "fss": 1, "lvis": 10, "synthetic": 1}
# benchmark -> registered test dataset of a fold (LVIS depends on the shot, see lvis92i.py)
TEST_DATASETS: Dict[str, Callable[[int, int], str]] = {
    "coco": lambda fold, shot: f"coco20i_fold{fold}_test",
    "pascal": lambda fold, shot: f"pascal5i_fold{fold}_test",
    "fss": lambda fold, shot: "fss1000_test",
    "lvis": lvis92i_test_name,
    "synthetic": lambda fold, shot: "synthetic_fss_test",
}


def test_dataset_name(benchmark: str, fold: int, shot: int) -> str:
    """Registered test dataset of ``benchmark``/``fold`` for ``shot`` supports."""
    if benchmark not in TEST_DATASETS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; expected one of {sorted(TEST_DATASETS)}")
    if fold not in range(BENCHMARK_FOLDS[benchmark]):
        raise ValueError(f"{benchmark} has folds 0..{BENCHMARK_FOLDS[benchmark] - 1}, got {fold}")
    return TEST_DATASETS[benchmark](fold, shot)


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


def _coco(fold, shot, rng, n, root, splits) -> List[Dict]:
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
        episodes.append(_episode(i, cls, _stem(query), [_stem(s) for s in supports]))
    return episodes


def _pascal(fold, shot, rng, n, root, splits) -> List[Dict]:
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
        episodes.append(_episode(i, cls, query, supports))
    return episodes


def _fss(shot, rng, n, root, splits) -> List[Dict]:
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
        episodes.append(_episode(i, cls, query_id, supports))
    return episodes


def _lvis(fold, shot, rng, n, root) -> List[Dict]:
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
        episodes.append(_episode(i, local, _stem(query), [_stem(s) for s in supports]))
    return episodes


def _custom(dataset_name: str, shot: int, seed: int, n: Optional[int]) -> List[Dict]:
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
        episodes.append(_episode(i, cls, query, supports))
    logger.info("%s, %d-shot, seed %d: %d episodes", dataset_name, shot, seed, len(episodes))
    return episodes


def _stem(name) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


def _episode(i: int, cls: int, query: str, supports: List[str]) -> Dict:
    return {"episode_id": i, "class_id": int(cls), "query": str(query),
            "supports": [str(s) for s in supports]}


def make_episodes(benchmark: str, fold: int = 0, shot: int = 1, root: Optional[str] = None,
                  seed: int = 0, num_episodes: Optional[int] = None,
                  splits: Optional[str] = None) -> List[Dict]:
    """Draw a benchmark's test episodes for one fold.

    Args:
        benchmark: "coco", "pascal", "fss", "lvis" or "synthetic".
        fold: fold index (0 for fss and synthetic).
        shot: supports per episode (K >= 1).
        root: datasets root (default ``$DETECTRON2_DATASETS``). COCO and PASCAL episodes need only
            the split lists; FSS lists the test class folders; LVIS reads ``lvis_val.pkl``.
        seed: seed of the episode RNG (0 is the protocol).
        num_episodes: None or 0 for the protocol count (1000 / 1000 / one per image / 2300);
            otherwise the first N of the same stream (FSS and PASCAL cycle their image list).
        splits: which split lists to read ("shipped", "tree" or a folder; see datasets/common.py).
    Returns:
        list of ``{"episode_id", "class_id", "query", "supports"}``; IDs are record image IDs.
    """
    if shot < 1:
        raise ValueError(f"shot must be >= 1, got {shot}")
    test_dataset_name(benchmark, fold, shot)  # validates benchmark and fold
    rng = np.random.RandomState(seed)
    if benchmark == "coco":
        episodes = _coco(fold, shot, rng, num_episodes, root, splits)
    elif benchmark == "pascal":
        episodes = _pascal(fold, shot, rng, num_episodes, root, splits)
    elif benchmark == "fss":
        episodes = _fss(shot, rng, num_episodes, root, splits)
    elif benchmark == "lvis":
        episodes = _lvis(fold, shot, rng, num_episodes, root)
    else:
        from .datasets.synthetic import make_synthetic_episodes

        drawn = make_synthetic_episodes("test", shot, seed, num_episodes or None)
        episodes = [_episode(i, e["class_id"], e["query"], e["supports"])
                    for i, e in enumerate(drawn)]
    logger.info("%s fold %d, %d-shot, seed %d: %d episodes", benchmark, fold, shot, seed,
                len(episodes))
    return episodes


def save_episodes(episodes: List[Dict], path: str, **header) -> None:
    """Write episodes atomically as ``{"generator_version": GENERATOR_VERSION, <header>,
    "episodes": [...]}``, one episode per line (``header``: e.g. benchmark, fold, shot, seed)."""
    head = {"generator_version": GENERATOR_VERSION, **header}
    text = json.dumps(head)[:-1] + ', "episodes": [\n'
    text += ",\n".join(json.dumps(e) for e in episodes) + "\n]}\n"
    with atomic_open(path, "w") as f:
        f.write(text)


def read_episode_file(path: str) -> Tuple[List[Dict], Dict]:
    """Read and validate an episode file: ``(episodes, header)``. ``header`` holds the file's
    ``generator_version`` and the other keys ``save_episodes`` wrote; it is empty for a plain JSON
    list. ``episode_id`` defaults to the position in the list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: episode file not found (write one with "
                                "tools/make_episodes.py)")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    header: Dict = {}
    if isinstance(data, dict) and isinstance(data.get("episodes"), list):
        header = {k: v for k, v in data.items() if k != "episodes"}
        data = data["episodes"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of episodes, or an object with an "
                         "'episodes' list (tools/make_episodes.py)")
    episodes = []
    for i, e in enumerate(data):
        ok = (isinstance(e, dict) and isinstance(e.get("query"), str)
              and isinstance(e.get("class_id"), int) and isinstance(e.get("supports"), list)
              and len(e["supports"]) > 0 and all(isinstance(s, str) for s in e["supports"]))
        if not ok:
            raise ValueError(f"{path}: episode {i} must be {{'query': str, 'supports': [str, ...], "
                             f"'class_id': int}}, got {e!r}")
        episodes.append({"episode_id": e.get("episode_id", i), "class_id": e["class_id"],
                         "query": e["query"], "supports": list(e["supports"])})
    ids = [e["episode_id"] for e in episodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: episode_id values are not unique")
    return episodes, header


def load_episodes(path: str) -> List[Dict]:
    """The validated episodes of an episode file (``read_episode_file`` without the header)."""
    return read_episode_file(path)[0]


def stale_version(header: Dict) -> Optional[str]:
    """None if an episode file was drawn by this generator, else why it is stale."""
    version = header.get("generator_version")
    if version == GENERATOR_VERSION:
        return None
    if version is None:
        return "it carries no generator version (written before version 2, or by hand)"
    return f"it was drawn by episode generator version {version}"


def _cache_tag() -> str:
    splits = os.getenv(SPLITS_ENV, "shipped")
    if splits == "shipped":
        return ""
    if splits == "tree":
        return "_tree"
    return "_" + hashlib.sha1(os.path.abspath(splits).encode()).hexdigest()[:8]


def get_episodes(dataset_name: str, shot: int, seed: int = 0, episodes_file: str = "",
                 num_episodes: int = 0, cache_dir: Optional[str] = None) -> List[Dict]:
    """The episodes of a registered test dataset: from ``episodes_file`` if given, else generated
    once and cached as ``<cache_dir>/<name>_<K>shot_seed<S>[_n<N>].json`` (default cache folder
    ``$DETECTRON2_DATASETS/episodes``; an unwritable folder only disables the cache). A cached
    file drawn by another ``GENERATOR_VERSION`` (or by none) is regenerated, with a warning.

    Raises:
        ValueError: the file's episodes do not have ``shot`` supports, or an LVIS dataset was
            registered for another shot's class filter.
    """
    from detectron2.data import MetadataCatalog

    if episodes_file:
        episodes, header = read_episode_file(episodes_file)
        if header and stale_version(header):
            logger.warning("%s: %s, not version %d; used as given, rewrite it with "
                           "tools/make_episodes.py for the current drawing rules",
                           episodes_file, stale_version(header), GENERATOR_VERSION)
        bad = [e["episode_id"] for e in episodes if len(e["supports"]) != shot]
        if bad:
            raise ValueError(f"{episodes_file}: episode {bad[0]} (and {len(bad) - 1} more) has not "
                             f"{shot} supports; TEST.FSS.SHOT must match the file")
        return episodes[:num_episodes] if num_episodes else episodes
    meta = MetadataCatalog.get(dataset_name)
    benchmark = meta.get("benchmark")
    if benchmark == "custom":  # drawn from the loaded records in milliseconds: no cache
        return _custom(dataset_name, shot, seed, num_episodes or None)
    if benchmark not in BENCHMARK_FOLDS:
        raise ValueError(f"{dataset_name!r} is not a registered few-shot test dataset "
                         f"(metadata benchmark={benchmark!r})")
    if benchmark == "lvis" and meta.get("shot_filter") != shot:
        raise ValueError(f"{dataset_name} uses the {meta.get('shot_filter')}-shot LVIS class "
                         f"filter; for {shot} shots use {lvis92i_test_name(meta.fold, shot)}")
    if benchmark == "synthetic":  # drawn in milliseconds from the code alone: no cache
        return make_episodes(benchmark, 0, shot, seed=seed, num_episodes=num_episodes or None)
    suffix = f"_n{num_episodes}" if num_episodes else ""
    name = f"{dataset_name}_{shot}shot_seed{seed}{suffix}{_cache_tag()}.json"
    path = os.path.join(cache_dir or os.path.join(dataset_root(), "episodes"), name)
    if os.path.isfile(path):
        try:
            episodes, header = read_episode_file(path)
            stale = stale_version(header)
        except ValueError as e:  # e.g. half-written by an old, non-atomic version
            episodes, stale = [], f"it is unreadable ({e})"
        if not stale:
            logger.info("reusing episodes %s (generator version %d)", path, GENERATOR_VERSION)
            return episodes
        logger.warning("regenerating the cached episodes %s: %s; this is episode generator "
                       "version %d", path, stale, GENERATOR_VERSION)
    episodes = make_episodes(benchmark, meta.get("fold", 0), shot, seed=seed,
                             num_episodes=num_episodes or None)
    try:
        save_episodes(episodes, path, dataset=dataset_name, benchmark=benchmark,
                      fold=meta.get("fold", 0), shot=shot, seed=seed)
        logger.info("episodes written to %s", path)
    except OSError as e:
        logger.warning("could not cache episodes in %s (%s); they are regenerated next time",
                       path, e)
    return episodes
