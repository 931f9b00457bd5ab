# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything the project writes for later use (checkpoints, episode lists, results, exported UNets)
is first written under a temporary name in the same folder, then renamed with ``os.replace``
(atomic on POSIX within one file system). A run killed mid-write leaves at most a ``*.tmp*`` file
beside the target, never a half-written target that a later run would read.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_open", "atomic_write", "atomic_write_json", "atomic_folder"]


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary file path beside ``path`` for writers that take a path (``torch.save``,
    ``zipfile.ZipFile``, ``PIL.Image.save``); when the block ends without an exception the file
    written there is flushed to disk and replaces ``path``, otherwise it is removed and ``path`` is
    untouched. ``suffix`` is appended to the temporary name ``.<name>.<random>.tmp`` (e.g.
    ``".png"`` for a writer that picks the format from the extension). The parent folder is
    created."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix,
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        # fsync before the rename: otherwise a crash after it may leave an empty file under the
        # final name (the rename can reach the disk before the data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator:
    """``open(path, mode)`` on a temporary file that replaces ``path`` when the block ends without
    an exception (the temporary file is removed otherwise). The parent folder is created."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes; got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f


def atomic_write(path: str, data, mode: str = "w", **kwargs) -> None:
    """Write ``data`` (``str`` with mode "w", ``bytes`` with "wb") to ``path`` atomically."""
    with atomic_open(path, mode, **kwargs) as f:
        f.write(data)


def atomic_write_json(obj: Any, path: str, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; when the block succeeds it becomes ``path``
    (an existing ``path`` is moved aside first and deleted after the rename). On an exception the
    temporary folder is deleted and ``path`` is untouched."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
