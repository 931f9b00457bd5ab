# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Helpers shared by the few-shot benchmark registrations.

* where the data lives: ``dataset_root`` (``$DETECTRON2_DATASETS``, default ``datasets``, read
  when a dataset is *loaded*, not when it is registered) and ``splits_dir`` (the split lists that
  ship in ``datasets/splits/`` or, on request, the dataset tree's own ``splits/`` folder);
* ``require``: the FileNotFoundError every loader raises for a missing path;
* safe readers for the split files: JSON (optionally gzipped) and a restricted unpickler that only
  builds plain containers, numbers and strings (pickle runs code; the HSNet/Matcher split files are
  pickles);
* ``register_fss``: idempotent detectron2 registration with the metadata of ``records.py``.
"""

import gzip
import io
import json
import logging
import os
import pickle
from typing import Any, Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.atomic import atomic_open

logger = logging.getLogger(__name__)

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


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: dicts, lists, tuples, sets, strings, bytes, numbers, booleans.

    Those are built by pickle opcodes without ``find_class``; any global (a class or function, the
    way a pickle runs code) is refused except the harmless containers listed below.
    """

    _ALLOWED = {
        (module, name)
        for module in ("builtins", "__builtin__")  # the latter in Python 2 pickles
        for name in ("set", "frozenset", "dict", "list", "tuple", "complex", "bytearray")
    } | {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only plain containers, numbers and strings "
            "are allowed in split/annotation pickles"
        )


def load_pickle(path: str) -> Any:
    """Load a pickle of plain data with ``RestrictedUnpickler``; errors name the file."""
    require(path, "pickle file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: {e}; is it the file described in {README}?") from e


def load_json(path: str) -> Any:
    """Load ``.json`` or ``.json.gz``."""
    require(path, "JSON file")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def save_json(obj: Any, path: str) -> None:
    """Write ``.json`` or ``.json.gz`` (gzip with mtime 0, so equal content gives equal bytes),
    atomically (``utils.atomic``), so concurrent writers never leave half a file."""
    text = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    with atomic_open(path, "wb") as raw:
        if path.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9,
                               mtime=0) as f:
                f.write(text)
        else:
            raw.write(text)


def read_lines(path: str) -> List[str]:
    """Lines of a text split file as HSNet reads them: ``f.read().split('\\n')[:-1]``."""
    require(path, "split list")
    with open(path, "r") as f:
        return f.read().split("\n")[:-1]


def image_id(name: str) -> str:
    """Record ID of an image path: the file name without directory and extension."""
    return os.path.splitext(os.path.basename(name))[0]


def update_metadata(name: str, **kwargs) -> None:
    """Set metadata keys, replacing earlier values (detectron2 refuses to change a set key; the
    keys set here depend on the files read, which may change between loads)."""
    meta = MetadataCatalog.get(name)
    for key, value in kwargs.items():
        if key in meta.__dict__ and meta.__dict__[key] != value:
            delattr(meta, key)
    meta.set(**kwargs)


def register_fss(name: str, loader: Callable[[], List[Dict]], **metadata) -> None:
    """Register ``name`` (replacing an earlier registration) with the records contract metadata.

    ``class_names`` are stored under detectron2's name ``thing_classes`` (detectron2 renames
    ``class_names`` with a warning; ``metadata.class_names`` still reads them).
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    if "class_names" in metadata:
        metadata["thing_classes"] = metadata.pop("class_names")
    MetadataCatalog.get(name).set(evaluator_type="fss", ignore_label=255, **metadata)


def missing_sampled_files(load: Callable[[int, str], List[Dict]], folds, sample: int) -> List[str]:
    """For ``check_*`` functions: the split lists that fail to load, and the listed image and label
    files that do not exist among ``sample`` evenly spaced records per fold and split."""
    missing: List[str] = []
    for split in ("test", "train"):
        for fold in folds:
            try:
                records = load(fold, split)
            except MissingDataError as e:
                missing.append(e.path)
                continue
            step = max(1, len(records) // max(sample, 1))
            for r in records[::step][:sample]:
                missing += [p for p in (r["file_name"], r["mask_file"]) if not os.path.isfile(p)]
    return missing
