# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episodes: the fixed test episodes of the few-shot benchmarks and the random training stream.

* ``benchmarks``: which test dataset a benchmark/fold is, ``make_episodes`` (draw a fold's
  episodes, rules in ``draw``) and ``get_episodes`` (from a file or a cache);
* ``file``: the episode-file format (``save_episodes``, ``read_episode_file``);
* ``test``: ``test_episodes`` (the one builder of resolved test episodes), ``EpisodeMapper`` and
  ``build_fss_test_loader`` (episodes as model inputs, bad data filtered);
* ``negatives``: absent-target episodes (``TEST.FSS.NEGATIVE_RATIO``);
* ``train``: the endless random training episodes (``build_episodic_train_loader``).
"""

from .benchmarks import BENCHMARK_FOLDS, get_episodes, make_episodes, test_dataset_name
from .draw import GENERATOR_VERSION
from .file import load_episodes, read_episode_file, save_episodes, stale_version
from .negatives import add_negative_episodes, holds_class
from .test import (SKIP_HINT, BadSampleFilter, EpisodeMapper, build_fss_test_loader,
                   resolve_episodes, test_episodes)
from .train import EpisodicTrainDataset, build_episodic_train_loader

__all__ = [
    "BENCHMARK_FOLDS", "GENERATOR_VERSION", "SKIP_HINT", "BadSampleFilter", "EpisodeMapper",
    "EpisodicTrainDataset", "add_negative_episodes", "build_episodic_train_loader",
    "build_fss_test_loader", "get_episodes", "holds_class", "load_episodes", "make_episodes",
    "read_episode_file", "resolve_episodes", "save_episodes", "stale_version", "test_dataset_name",
    "test_episodes",
]
