# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Safe readers and writers of split and annotation files: JSON (optionally gzipped), text lists,
and a restricted unpickler that only builds plain containers, numbers and strings (pickle runs
code; the HSNet/Matcher split files are pickles)."""

import gzip
import io
import json
import pickle
from typing import Any, List

from ...utils.atomic import atomic_open
from .roots import README, require

__all__ = ["RestrictedUnpickler", "load_pickle", "load_json", "save_json", "read_lines"]


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
