# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from . import datasets  # noqa: F401  (registers the benchmarks)
from .episodes import (EpisodeMapper, build_fss_test_loader, get_episodes, load_episodes,
                       make_episodes, resolve_episodes, save_episodes, test_dataset_name)
from .records import load_sample

__all__ = [
    "EpisodeMapper", "build_fss_test_loader", "get_episodes", "load_episodes", "load_sample",
    "make_episodes", "resolve_episodes", "save_episodes", "test_dataset_name",
]
