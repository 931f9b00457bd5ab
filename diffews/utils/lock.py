# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One writer per output folder: an OS file lock held for the whole run.

A journalled job (``utils/journal.py``) resumes safely after a kill, but two runs writing the
same output folder at once mix their shards (issue 29: a second run with ``--overwrite`` and
another config, started while the first ran, ended with the first run's annotations). The run
takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``FOLDER/.diffews.lock`` before it opens its journal
and holds it to the end; a second run is refused with one line naming the running one (pid,
host, start time, command). The operating system drops the lock when the holder's process ends,
``kill -9`` included, so a crashed run never blocks the next one; the lock file itself stays
(deleting it would let two runs lock two different files of the same name).

In a multi-process run only the main process takes the lock (the other ranks of the same run
write their own shards under it). A process forked while the lock is held (a DataLoader worker)
shares it until it exits too. Locks are advisory and local to one machine's kernel; on a
network file system they hold as far as that file system supports ``flock``.

API::

    with OutputLock(out, what=f"--output {out}"):   # OutputBusy (exit status 2) if taken
        ... the whole run: journal, shards, final outputs ...

    lock = OutputLock(out).acquire()                 # or by hand
    try: ...
    finally: lock.release()
"""

import json
import logging
import os
import shlex
import socket
import sys
import time
from typing import Dict, Optional

from .errors import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (logged once per acquire)
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["OutputLock", "OutputBusy", "LOCK_FILE", "holder_info"]

LOCK_FILE = ".diffews.lock"
MAX_COMMAND = 300  # characters of the holder's command line kept in the lock file


class OutputBusy(UsageError):
    """Another run holds the output folder's lock (exit status 2)."""


def _this_run(command: Optional[str]) -> Dict:
    if command is None:
        command = shlex.join([os.path.basename(sys.executable)] + sys.argv) if sys.argv else ""
    if len(command) > MAX_COMMAND:
        command = command[:MAX_COMMAND - 3] + "..."
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command}


def holder_info(path: str) -> Optional[Dict]:
    """What the lock file at ``path`` says about its holder (None: empty or unreadable; the
    holder may be between taking the lock and writing it)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: Optional[Dict]) -> str:
    if not info:
        return "another run (it has not written its details yet)"
    text = (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started "
            f"{info.get('started', '?')}")
    command = " ".join(str(info.get("command") or "").split())
    return f"{text}: {command}" if command else text


class OutputLock:
    """The lock of one output folder (module docstring).

    Args:
        folder: the run's output folder (created if missing).
        what: how the folder is named in the refusal (e.g. ``"--output out/"``).
        command: the command line recorded for others to see (default: this process's argv).
    """

    def __init__(self, folder: str, what: Optional[str] = None, command: Optional[str] = None):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.what = what or folder
        self.command = command
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise ``OutputBusy`` naming the holder; write this run's details.

        Returns:
            self.
        """
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:
            logger.warning("%s: no file locks on this platform; make sure no other run writes "
                           "this folder", self.what)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"{self.what}: in use by {_describe(holder_info(self.path))}; wait "
                             "for it to end or choose another output folder") from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        info = json.dumps(_this_run(self.command), sort_keys=True).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info + b"\n", 0)
        return self

    def release(self) -> None:
        """Drop the lock (the file is emptied, not deleted: see the module docstring)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:  # a read-only or vanished folder: the lock still goes with the fd
            pass
        finally:
            os.close(fd)  # the last descriptor of the lock: the kernel drops the lock with it

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.release()
