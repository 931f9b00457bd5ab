# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A resumable job's journal: atomic shards in a folder, under the fingerprint of the command.

A long job (label 5,000 images, run 10 seeds of a benchmark) is cut into units of work, each with
a string key (an image's relative path, ``"seed3/shard012"``, a sequence name, ``"chunk0007"``).
When a unit is done its result is written as one shard, atomically (``utils/atomic.py``: a
temporary file, fsync, rename), so a shard exists complete or not at all: a process killed at any
moment (``kill -9`` included) loses at most the units it was working on. Started again with the
same command, the job asks the journal which keys are left, does only those, and builds its final
output from the shards; since every unit's result depends only on its own inputs, that output is
the same, byte for byte, as an uninterrupted run's.

On disk (``folder`` is the job's output folder or a sub-folder of it)::

    folder/journal.json          {"format": "diffews.journal", "version": 1, "fingerprint": {...}}
    folder/shards/<name>.json    {"key": KEY, "value": VALUE}   one per finished unit

``<name>`` is the key made file-safe plus a hash of the key (two keys never share a file). The
fingerprint is a JSON-able dict describing everything that changes the results (inputs' content
hashes, weights, thresholds, config); a journal opened with another fingerprint is refused with
one line naming the first key that differs, unless ``overwrite=True``, which deletes the old
shards first and then writes the new fingerprint (a kill in between leaves the old fingerprint
over no or fewer shards, never the new one over old shards). Several processes may share one
journal as long as each writes its own keys: the main process opens it with ``create=True``
(writes or checks ``journal.json``, clears shards on overwrite), the others, after a barrier, with
``create=False`` (check only).

API::

    j = Journal(folder, fingerprint, overwrite=False, create=True)
    for key in j.pending(all_keys):       # keys without a shard, in the given order
        j.put(key, compute(key))           # JSON value: dict, list, numbers, strings
    values = j.collect(all_keys)           # [value of each key], error naming a missing one
    j.done(key), j.get(key), j.keys()      # one shard's state / value, every finished key
    j.remove(key)                          # forget a unit (it is pending again)
    Journal.verify(folder, fingerprint)    # refuse another command's folder, writing nothing
    Journal.stored_fingerprint(folder)     # what a folder's journal was written for (or None)

A benchmark runner (per seed and image shard, per sequence, per chunk of episodes) follows
``tasks/autolabel/run.py``::

    fp = {"config": cfg_as_dict, "weights": stat_files([cfg.MODEL.WEIGHTS]), "seeds": seeds}
    if comm.is_main_process():
        j = Journal(os.path.join(out, "journal"), fp, overwrite=args.overwrite)
    comm.synchronize()
    if not comm.is_main_process():
        j = Journal(os.path.join(out, "journal"), fp, create=False)
    keys = [f"seed{s}/chunk{c:04d}" for s in seeds for c in range(chunks)]
    todo = j.pending(keys)
    comm.synchronize()                        # all listed before anyone writes
    for key in todo[comm.get_rank()::comm.get_world_size()]:
        j.put(key, run_chunk(key))            # e.g. per-class intersection/union sums
    comm.synchronize()
    if comm.is_main_process():
        final = reduce(j.collect(keys))       # the same numbers as one uninterrupted run

One run at a time per output folder: the main process holds ``utils/lock.OutputLock`` on it
for the whole run (``with OutputLock(out, what=f"--output {out}"):`` around the code above), so a
second run, whatever its flags, is refused with one line naming the running one instead of
clearing or mixing its shards.

A unit's value must not depend on which process or run computed it (fixed episode order and
batches within the unit), and the reduction must read the values in key order.

Helpers for fingerprints: ``hash_files`` (content, sha256 of each file's bytes) and
``stat_files`` (for multi-GB weights: size plus the sha256 of all the bytes, cached by (path,
size, modification time) in ``hash_cache_dir()``, ``~/.cache/diffews/file_hashes/`` unless
``DIFFEWS_CACHE`` or ``XDG_CACHE_HOME`` says otherwise, so each checkpoint is read once).
Values must be JSON (floats survive: Python writes the shortest repr that reads back the same).
"""

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .atomic import atomic_write_json
from .errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["Journal", "JournalMismatch", "JOURNAL_FILE", "hash_files", "stat_files",
           "cached_sha256", "hash_cache_dir", "first_difference"]

FORMAT, VERSION = "diffews.journal", 1
JOURNAL_FILE, SHARD_DIR = "journal.json", "shards"


class JournalMismatch(UsageError):
    """The output folder holds a journal of another command (exit status 2)."""


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True))


def first_difference(old: Any, new: Any, prefix: str = "") -> Optional[str]:
    """The first dotted key where two JSON values differ (``None`` when equal), e.g.
    ``"config.MODEL.WEIGHTS: 'a.pth' -> 'b.pth'"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            where = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                return f"{where}: {'added' if k not in old else 'removed'}"
            found = first_difference(old[k], new[k], where)
            if found:
                return found
        return None
    if old != new:
        def short(v):
            text = json.dumps(v, sort_keys=True)
            return text if len(text) <= 60 else text[:57] + "..."
        return f"{prefix or 'fingerprint'}: {short(old)} -> {short(new)}"
    return None


def _shard_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "key"
    return f"{safe}.{hashlib.sha1(key.encode('utf-8')).hexdigest()[:12]}.json"


class Journal:
    """Shards of finished units under a fingerprint (module docstring).

    Args:
        folder: the journal's folder (created).
        fingerprint: JSON-able dict of everything that changes the results.
        overwrite: delete the shards and start again (with ``create``) instead of refusing
            another fingerprint.
        create: write ``journal.json`` when absent (the main process); False only checks it
            (other processes, after the main one created it).
        what: how the folder is named in errors (e.g. ``"--output out/"``).
    """

    def __init__(self, folder: str, fingerprint: Dict, overwrite: bool = False,
                 create: bool = True, what: Optional[str] = None):
        self.folder = folder
        self.shard_dir = os.path.join(folder, SHARD_DIR)
        self.fingerprint = _canonical(fingerprint)
        self.what = what or folder
        path = os.path.join(folder, JOURNAL_FILE)
        old = None
        if overwrite and create:  # start again, whatever the folder held: shards first
            self.clear()
        else:
            old = self._read_header(path)
        if old is not None and old != self.fingerprint:
            self.verify(folder, fingerprint, self.what)
        if old is None:
            if not create:
                raise FileNotFoundError(f"{path}: missing; the main process creates the journal "
                                        "before the others open it")
            os.makedirs(self.shard_dir, exist_ok=True)
            atomic_write_json({"format": FORMAT, "version": VERSION,
                               "fingerprint": self.fingerprint}, path, indent=1, sort_keys=True)

    @classmethod
    def verify(cls, folder: str, fingerprint: Dict, what: Optional[str] = None) -> None:
        """Raise ``JournalMismatch`` if ``folder`` holds a journal of another fingerprint; write
        nothing (a preflight before any model is built)."""
        old = cls._read_header(os.path.join(folder, JOURNAL_FILE))
        new = _canonical(fingerprint)
        if old is not None and old != new:
            raise JournalMismatch(
                f"{what or folder}: holds the results of another command "
                f"({first_difference(old, new)}); rerun the same command to resume, choose "
                "another output folder, or add --overwrite to start again")

    @classmethod
    def stored_fingerprint(cls, folder: str) -> Optional[Dict]:
        """The fingerprint of the journal in ``folder`` (None when it holds none); a foreign
        ``journal.json`` is a one-line ``ValueError``."""
        return cls._read_header(os.path.join(folder, JOURNAL_FILE))

    @staticmethod
    def _read_header(path: str) -> Optional[Dict]:
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:  # written atomically: only a foreign file is bad
            raise ValueError(f"{path}: not a readable journal ({e}); remove it or use another "
                             "output folder") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file; use another output folder")
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: journal version {data.get('version')}, this code writes "
                             f"{VERSION}; add --overwrite to start again")
        return data.get("fingerprint")

    def clear(self) -> None:
        """Delete every shard (the fingerprint file is rewritten by the caller)."""
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        os.makedirs(self.shard_dir, exist_ok=True)

    # -- shards ----------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The shard file of ``key``."""
        return os.path.join(self.shard_dir, _shard_name(key))

    def done(self, key: str) -> bool:
        return os.path.isfile(self.path(key))

    def pending(self, keys: Iterable[str]) -> List[str]:
        """The keys without a shard, in the given order."""
        present = set(os.listdir(self.shard_dir)) if os.path.isdir(self.shard_dir) else set()
        return [k for k in keys if _shard_name(k) not in present]

    def put(self, key: str, value: Any) -> None:
        """Write ``key``'s shard atomically (replacing an existing one)."""
        atomic_write_json({"key": key, "value": value}, self.path(key),
                          separators=(",", ":"), sort_keys=True)

    def remove(self, key: str) -> None:
        """Delete ``key``'s shard if there is one (e.g. a stale "skipped" note once redone)."""
        try:
            os.remove(self.path(key))
        except FileNotFoundError:
            pass

    def get(self, key: str) -> Any:
        """The value of ``key``'s shard (``KeyError`` naming the file if it is absent)."""
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise KeyError(f"{path}: no shard for {key!r} (unit not finished)") from None
        except ValueError as e:
            raise ValueError(f"{path}: unreadable shard ({e}); delete it to redo {key!r}") from e
        if data.get("key") != key:
            raise ValueError(f"{path}: holds {data.get('key')!r}, not {key!r}")
        return data["value"]

    def collect(self, keys: Sequence[str]) -> List[Any]:
        """The values of ``keys``, in order; a missing shard is an error naming it."""
        return [self.get(k) for k in keys]

    def keys(self) -> List[str]:
        """Every finished key (sorted)."""
        out = []
        for name in sorted(os.listdir(self.shard_dir)) if os.path.isdir(self.shard_dir) else []:
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(self.shard_dir, name), encoding="utf-8") as f:
                    out.append(json.load(f)["key"])
        return sorted(out)


# -- fingerprint helpers -------------------------------------------------------------------------
def _files(paths: Iterable[str]) -> List[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            for folder, dirs, names in os.walk(p):
                dirs.sort()
                out += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
        else:
            out.append(p)
    return out


def hash_files(paths: Iterable[str], root: Optional[str] = None) -> str:
    """sha256 over the bytes of every file (folders walked in name order) and its name relative
    to ``root`` (else its base name): equal contents under equal names give equal hashes."""
    h = hashlib.sha256()
    for path in _files(paths):
        name = os.path.relpath(path, root) if root else os.path.basename(path)
        h.update(name.replace(os.sep, "/").encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def hash_cache_dir() -> str:
    """Where ``stat_files`` keeps the hashes it computed: ``$DIFFEWS_CACHE/file_hashes``, else
    ``$XDG_CACHE_HOME/diffews/file_hashes``, else ``~/.cache/diffews/file_hashes`` (read from
    the environment at each call)."""
    root = os.environ.get("DIFFEWS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "diffews")
    return os.path.join(root, "file_hashes")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_CACHE_WARNED = False  # an unwritable cache folder is said once per process


def cached_sha256(path: str) -> str:
    """sha256 of the bytes of ``path``, cached by (real path, size, modification time in ns):
    one small json per file in ``hash_cache_dir()``, written atomically (processes may share
    it). A file whose size or time changed is hashed again; a cache that cannot be read or
    written is not used (logged once), never an error."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    name = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()
    entry = os.path.join(hash_cache_dir(), name[:2], name + ".json")
    try:
        with open(entry, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and {k: data.get(k) for k in key} == key \
                and isinstance(data.get("sha256"), str):
            return data["sha256"]
    except (OSError, ValueError):
        pass
    if st.st_size >= 1 << 30:
        logger.info("%s: hashing its %.1f GiB once (cached in %s)", path, st.st_size / 2 ** 30,
                    hash_cache_dir())
    digest = _sha256_file(real)
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        atomic_write_json(dict(key, sha256=digest), entry, sort_keys=True)
    except OSError as e:
        global _CACHE_WARNED
        if not _CACHE_WARNED:
            _CACHE_WARNED = True
            logger.warning("%s: cannot keep file hashes there (%s); large weights are hashed "
                           "again by each run (set DIFFEWS_CACHE to a writable folder)",
                           hash_cache_dir(), e.strerror or e)
    return digest


def stat_files(paths: Iterable[str]) -> str:
    """The identity of large files (weights, folders of them walked in name order): per file,
    its base name, size and the sha256 of all its bytes (``cached_sha256``: read once until its
    size or modification time changes). A retrained, fine-tuned in place or replaced checkpoint
    changes it; a copy under the same name does not."""
    h = hashlib.sha256()
    for path in _files(paths):
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}\0{size}\0{cached_sha256(path)}\0".encode("utf-8"))
    return h.hexdigest()
