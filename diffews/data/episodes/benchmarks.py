# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Fixed test episodes of the few-shot benchmarks (docs/PROTOCOLS.md section 2a, 2c):
``make_episodes`` draws a fold's episodes, ``get_episodes`` gives a registered test dataset's
episodes from a file or from a cache it keeps.

How each benchmark draws them: ``draw.py``. The file format (``save_episodes``,
``load_episodes``, ``read_episode_file``, ``stale_version``): ``file.py``. Cached lists whose
``generator_version`` is not ``GENERATOR_VERSION`` are regenerated, never reused.
"""

import hashlib
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from ..datasets.roots import SPLITS_ENV, dataset_root
from ..datasets.lvis92i import lvis92i_test_name
from .draw import (
    GENERATOR_VERSION, draw_coco, draw_custom, draw_fss, draw_lvis, draw_pascal, episode_dict,
)
from .file import read_episode_file, save_episodes, stale_version

logger = logging.getLogger(__name__)

__all__ = ["BENCHMARK_FOLDS", "make_episodes", "get_episodes", "test_dataset_name"]

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
        splits: which split lists to read ("shipped", "tree" or a folder; see datasets/roots.py).
    Returns:
        list of ``{"episode_id", "class_id", "query", "supports"}``; IDs are record image IDs.
    """
    if shot < 1:
        raise ValueError(f"shot must be >= 1, got {shot}")
    test_dataset_name(benchmark, fold, shot)  # validates benchmark and fold
    rng = np.random.RandomState(seed)
    if benchmark == "coco":
        episodes = draw_coco(fold, shot, rng, num_episodes, root, splits)
    elif benchmark == "pascal":
        episodes = draw_pascal(fold, shot, rng, num_episodes, root, splits)
    elif benchmark == "fss":
        episodes = draw_fss(shot, rng, num_episodes, root, splits)
    elif benchmark == "lvis":
        episodes = draw_lvis(fold, shot, rng, num_episodes, root)
    else:
        from ..datasets.synthetic import make_synthetic_episodes

        drawn = make_synthetic_episodes("test", shot, seed, num_episodes or None)
        episodes = [episode_dict(i, e["class_id"], e["query"], e["supports"])
                    for i, e in enumerate(drawn)]
    logger.info("%s fold %d, %d-shot, seed %d: %d episodes", benchmark, fold, shot, seed,
                len(episodes))
    return episodes


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
        return draw_custom(dataset_name, shot, seed, num_episodes or None)
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
