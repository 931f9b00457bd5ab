# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Where the data lives: ``dataset_root`` (``$DETECTRON2_DATASETS``, default ``datasets``, read
when a dataset is *loaded*, not when it is registered), ``splits_dir`` (the split lists that ship in
``datasets/splits/`` or, on request, the dataset tree's own ``splits/`` folder) and ``require``, the
one-line ``MissingDataError`` every loader raises for a missing file or folder."""

import os
from typing import Optional

__all__ = ["README", "SPLITS_ENV", "dataset_root", "shipped_splits_dir", "splits_dir",
           "MissingDataError", "require", "find_split_file"]

README = "datasets/README.md"
# Which split lists the loaders read: "shipped" (default, datasets/splits/<benchmark>/ of this
# repository), "tree" (<root>/<dataset>/splits/, the user's own copy) or a folder laid out like
# datasets/splits/ (<folder>/<benchmark>/...).
SPLITS_ENV = "DIFFEWS_SPLITS"
_SHIPPED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "datasets",
                                         "splits"))


def dataset_root(root: Optional[str] = None) -> str:
    """``root`` if given, else ``$DETECTRON2_DATASETS`` (default ``datasets``), read now."""
    return root if root else os.getenv("DETECTRON2_DATASETS", "datasets")


def shipped_splits_dir() -> str:
    """The ``datasets/splits`` folder of this repository (HSNet's lists, COCO converted to JSON)."""
    return _SHIPPED


def splits_dir(benchmark: str, tree_splits: str, splits: Optional[str] = None) -> str:
    """The folder holding one benchmark's split lists.

    Args:
        benchmark: sub-folder of ``datasets/splits`` ("coco", "pascal", "fss").
        tree_splits: the dataset tree's own split folder (e.g. ``<root>/COCO2014/splits``).
        splits: "shipped", "tree" or a folder laid out like ``datasets/splits`` (its
            ``<benchmark>`` sub-folder is used); None reads ``$DIFFEWS_SPLITS`` (default
            "shipped").
    """
    splits = splits or os.getenv(SPLITS_ENV, "shipped")
    if splits == "shipped":
        path = os.path.join(_SHIPPED, benchmark)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path}: the shipped split lists are missing (they live in datasets/splits/ of "
                "the DiffewS repository; install with `pip install -e .` from a checkout), see "
                f"{README}"
            )
        return path
    if splits == "tree":
        return tree_splits
    return os.path.join(splits, benchmark)


class MissingDataError(FileNotFoundError):
    """A dataset file or folder is missing; ``path`` names it, the message points to the README."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def require(path: str, what: str, is_dir: bool = False) -> str:
    """Return ``path`` or raise ``MissingDataError`` naming it, what it is and the README."""
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not ok:
        raise MissingDataError(path, (
            f"{path}: {what} not found ({'folder' if is_dir else 'file'}); prepare the dataset as "
            f"described in {README}, or check with `python tools/check_datasets.py`"
        ))
    return path


def find_split_file(folder: str, stem: str, exts=(".json.gz", ".json", ".pkl")) -> str:
    """``<folder>/<stem><ext>`` for the first existing extension (e.g. ``val/fold0.json.gz``)."""
    for ext in exts:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return require(os.path.join(folder, stem + exts[0]), f"split list ({' / '.join(exts)})")
