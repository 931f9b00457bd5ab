# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Who may use the page and which server folders it may read.

A demo served on the network (``--host 0.0.0.0``) must not show the server's files to whoever
reaches the port: query folders are read only under allowed roots, resolved (symlinks, ``..``)
before the check, and a refused path reads exactly like a missing one.
"""

import ipaddress
import logging
import os
from typing import List, Optional, Sequence, Tuple

from ..predictor import IMAGE_EXTENSIONS
from ..utils.errors import UsageError
from .inputs import DemoInputError

logger = logging.getLogger(__name__)

__all__ = ["is_loopback", "FolderPolicy", "folder_roots", "parse_auth", "read_auth_file",
           "exposure_warning", "auth_warnings"]


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1; any other name or address is the network."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def _inside(path: str, root: str) -> bool:
    # commonpath, not startswith: /rootx is not inside /root
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


class FolderPolicy:
    """The server folders whose images may be queries: those under ``roots`` (none: folders
    off). Roots and requested paths are both resolved with ``os.path.realpath``."""

    def __init__(self, roots: Sequence[str] = ()):
        self.roots: List[str] = []
        for r in roots:
            real = os.path.realpath(r)
            if not os.path.isdir(real):
                raise UsageError(f"--allowed-root {r}: no such folder")
            self.roots.append(real)

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(_inside(real, root) for root in self.roots)

    def images(self, folder: str) -> List[Tuple[str, str]]:
        """The image files of ``folder`` (sorted by name, not recursive) as (file name, resolved
        path), each a regular file whose resolved path is inside a root too (a symlink out of the
        root is left out).

        Raises:
            DemoInputError: "not an allowed folder" for a refused, missing or non-folder path
                alike, so that the page does not tell which paths exist on the server.
        """
        real = os.path.realpath(folder)
        if not (self.enabled and any(_inside(real, root) for root in self.roots)
                and os.path.isdir(real)):
            raise DemoInputError(f"{folder}: not an allowed folder")
        try:
            names = sorted(os.listdir(real))
        except OSError as e:
            raise DemoInputError(f"{folder}: not an allowed folder") from e
        found = []
        for name in names:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(real, name)
            target = os.path.realpath(path)
            # a regular file (not a FIFO that would block the reader) inside a root
            if os.path.isfile(target) and self.allows(target):
                found.append((name, target))
            else:
                logger.warning("web demo: %s left out (outside the allowed roots or not a "
                               "file)", path)
        if not found:
            raise DemoInputError(f"{folder}: no image files in this folder "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        return found


def folder_roots(host: str, allowed_roots: Sequence[str], share: bool,
                 cwd: Optional[str] = None) -> List[str]:
    """The folder roots a server gets: none with ``share``; the given ``allowed_roots``; else the
    current folder's subtree on a loopback host and nothing on the network."""
    if share:
        return []
    if allowed_roots:
        return list(allowed_roots)
    return [cwd or os.getcwd()] if is_loopback(host) else []


def parse_auth(text: str, where: str = "--auth") -> Tuple[str, str]:
    """``USER:PASS`` -> (user, password); the password may contain ':'."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UsageError(f"{where}: expected USER:PASS with a non-empty user and password")
    return user, password


def read_auth_file(path: str) -> List[Tuple[str, str]]:
    """One ``USER:PASS`` per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"--auth-file {path}: cannot read it ({e.strerror or e})") from e
    pairs = [parse_auth(line.strip(), f"--auth-file {path} line {i}")
             for i, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not pairs:
        raise UsageError(f"--auth-file {path}: no USER:PASS line")
    return pairs


def exposure_warning(host: str, auth, share: bool = False) -> Optional[str]:
    """The one-line warning of a page anyone may reach without a login (served on the network,
    or through a public ``--share`` link whatever the host), else None."""
    if auth:
        return None
    if share:
        return ("web demo: --share without a login: the public gradio.live link lets anyone who "
                "has it run the model, upload images and fill its memory, whatever --host says; "
                "add --auth-file FILE (one USER:PASS a line)")
    if is_loopback(host):
        return None
    return (f"web demo: serving on {host} without --auth-file: anyone who can reach this port can "
            "run the model, upload images and fill its memory; add --auth-file FILE (one "
            "USER:PASS a line)")


def auth_warnings(auth_flags: Sequence[str], auth_file: Optional[str]) -> List[str]:
    """One-line warnings about how the logins were given: ``--auth USER:PASS`` shows the password
    to every user of the machine (``ps``, ``/proc/PID/cmdline``) and stays in the shell's
    history; an ``--auth-file`` that other users may read shows it too."""
    out = []
    if auth_flags:
        out.append("web demo: --auth puts the password on the command line, where every user of "
                   "this machine sees it (ps) and the shell history keeps it; use --auth-file "
                   "FILE (one USER:PASS a line, chmod 600) instead")
    if auth_file:
        try:
            mode = os.stat(auth_file).st_mode & 0o777
        except OSError:  # read_auth_file reports it
            mode = 0
        if mode & 0o077:
            out.append(f"web demo: --auth-file {auth_file} may be read by other users (mode "
                       f"{mode:o}); chmod 600 {auth_file}")
    return out
