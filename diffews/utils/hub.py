# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Model hub ids for ``MODEL.WEIGHTS``, ``MODEL.DIFFEWS.PRETRAINED`` and ``from_pretrained``.

An id has an explicit prefix, so that it can never be mistaken for a relative local path such as
``weight/coco_fold0``:

- ``hf://ORG/NAME[/SUBFOLDER][@REVISION]``: Hugging Face, through ``huggingface_hub``'s
  ``snapshot_download`` into its cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), only the files under SUBFOLDER;
- ``modelscope://ORG/NAME[/SUBFOLDER][@REVISION]``: ModelScope, through the ``modelscope``
  library's ``snapshot_download`` into its own cache (``pip install modelscope``).

``resolve_hub_path`` returns the local snapshot folder (plus SUBFOLDER). A local path that exists
always wins, whatever its spelling. A failure is one line naming the id and the cache folder:
``HubError`` (an ``OSError``: missing files, exit status 1) for a download that failed or an id
that is not cached while offline (``HF_HUB_OFFLINE=1``), ``HubLibraryError`` (an
``ImportError``) when ``modelscope`` is not installed, ``HubIdError`` (a ``ValueError``: a config
error, exit status 2) for a malformed id. This module imports nothing else of diffews (base floor).
"""

import inspect
import os
import re
from typing import NamedTuple, Optional

__all__ = ["HubId", "HubError", "HubIdError", "HubLibraryError", "parse_hub_id", "is_hub_id",
           "resolve_hub_path", "resolve_config_paths", "hf_cache_dir", "modelscope_cache_dir",
           "PREFIXES"]

# prefix -> hub name used in messages
PREFIXES = {"hf://": "Hugging Face", "modelscope://": "ModelScope"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubError(OSError):
    """A hub id could not be made a local folder (not cached while offline, download failed,
    subfolder missing from the snapshot)."""


class HubIdError(ValueError):
    """A string with a hub prefix that is not a valid id (a config error)."""


class HubLibraryError(ImportError):
    """The library of a hub is not installed."""


class HubId(NamedTuple):
    hub: str          # "hf" or "modelscope"
    repo_id: str      # ORG/NAME
    subfolder: str    # "" for the repository root
    revision: Optional[str]
    text: str         # the id as written


def is_hub_id(text) -> bool:
    """True if ``text`` starts with a hub prefix (``hf://``, ``modelscope://``)."""
    return isinstance(text, str) and text.startswith(tuple(PREFIXES))


def parse_hub_id(text: str, key: str = "path") -> Optional[HubId]:
    """The parts of a hub id; ``None`` if ``text`` has no hub prefix. Raises ``HubIdError``
    naming ``key`` for a malformed id."""
    if not is_hub_id(text):
        return None
    prefix = next(p for p in PREFIXES if text.startswith(p))
    rest, revision = text[len(prefix):], None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not revision:
            raise HubIdError(f"{key}: {text}: empty revision after '@'")
    parts = [p for p in rest.split("/") if p]
    form = f"{prefix}ORG/NAME[/SUBFOLDER][@REVISION]"
    if len(parts) < 2 or not (_NAME.match(parts[0]) and _NAME.match(parts[1])):
        raise HubIdError(f"{key}: {text} is not a hub id of the form {form}")
    if any(p in (".", "..") for p in parts[2:]):
        raise HubIdError(f"{key}: {text}: '.' and '..' are not allowed in the subfolder")
    return HubId("hf" if prefix == "hf://" else "modelscope", f"{parts[0]}/{parts[1]}",
                 "/".join(parts[2:]), revision, text)


def hf_cache_dir() -> str:
    """Hugging Face's hub cache, read from the environment at call time (``huggingface_hub``
    reads it once at import, so a later change, e.g. in a test, would otherwise be missed)."""
    path = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
        path = os.path.join(home, "hub")
    return os.path.abspath(os.path.expanduser(path))


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def modelscope_cache_dir() -> str:
    """ModelScope's cache folder as its library computes it (``MODELSCOPE_CACHE`` otherwise)."""
    try:
        from modelscope.hub.utils.utils import get_cache_dir

        return os.fspath(get_cache_dir())
    except Exception:  # library missing or moved: the documented default
        path = os.environ.get("MODELSCOPE_CACHE") or os.path.join(
            "~", ".cache", "modelscope", "hub"
        )
        return os.path.abspath(os.path.expanduser(path))


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _allow_patterns(hid: HubId):
    # fnmatch's "*" crosses "/", so "sub/*" takes the whole subtree and nothing else
    return [f"{hid.subfolder}/*"] if hid.subfolder else None


def _download_hf(hid: HubId, key: str) -> str:
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    offline = _hf_offline()
    try:
        return snapshot_download(hid.repo_id, revision=hid.revision, cache_dir=cache,
                                 allow_patterns=_allow_patterns(hid), local_files_only=offline)
    except Exception as e:  # not cached, offline, unknown repo or revision, network: one line
        where = "not in the cache and HF_HUB_OFFLINE is set" if offline else "download failed"
        raise HubError(f"{key}: cannot get {hid.text} from Hugging Face ({where}; cache folder "
                       f"{cache}): {_reason(e)}") from e


def _download_modelscope(hid: HubId, key: str) -> str:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as e:
        raise HubLibraryError(f"{key}: {hid.text} is a ModelScope id and the modelscope library "
                              "is not installed: pip install modelscope") from e
    kwargs = {}
    if hid.revision:
        kwargs["revision"] = hid.revision
    params = inspect.signature(snapshot_download).parameters
    # the pattern argument was renamed across modelscope versions; old ones download everything
    for name in ("allow_patterns", "allow_file_pattern"):
        if hid.subfolder and name in params:
            kwargs[name] = _allow_patterns(hid)
            break
    try:
        return snapshot_download(hid.repo_id, **kwargs)
    except Exception as e:
        raise HubError(f"{key}: cannot get {hid.text} from ModelScope (cache folder "
                       f"{modelscope_cache_dir()}): {_reason(e)}") from e


def resolve_hub_path(path, key: str = "path"):
    """``path`` itself unless it is a hub id that is not an existing local path; for an id, the
    local folder of its snapshot (plus subfolder), downloaded into the hub's cache if needed.

    Empty values, non-strings and plain paths (existing or not) come back unchanged, so that the
    usual "does not exist" errors name them as before.
    """
    if not is_hub_id(path) or os.path.exists(path):
        return path
    hid = parse_hub_id(path, key)
    folder = _download_hf(hid, key) if hid.hub == "hf" else _download_modelscope(hid, key)
    target = os.path.join(os.fspath(folder), *hid.subfolder.split("/")) if hid.subfolder \
        else os.fspath(folder)
    if not os.path.isdir(target):
        # offline, huggingface_hub returns a cached snapshot without checking that it holds
        # the requested subfolder; online, a misspelt subfolder matches no file
        cache = hf_cache_dir() if hid.hub == "hf" else modelscope_cache_dir()
        raise HubError(f"{key}: {path}: the snapshot of {hid.repo_id} has no folder "
                       f"{hid.subfolder!r} ({folder}; cache folder {cache})")
    return target


def resolve_config_paths(cfg) -> None:
    """Replace hub ids in ``MODEL.DIFFEWS.PRETRAINED``, ``MODEL.SINE.ENCODER.WEIGHTS`` and
    ``MODEL.WEIGHTS`` of an unfrozen detectron2 config by local folders, in place. A
    ``MODEL.WEIGHTS`` holding ``{fold}`` is left as it is: the per-fold id is resolved when the
    fold's weights are taken (``diffews.config.fold_weights``)."""
    cfg.MODEL.DIFFEWS.PRETRAINED = resolve_hub_path(cfg.MODEL.DIFFEWS.PRETRAINED,
                                                    "MODEL.DIFFEWS.PRETRAINED")
    if "SINE" in cfg.MODEL:
        cfg.MODEL.SINE.ENCODER.WEIGHTS = resolve_hub_path(cfg.MODEL.SINE.ENCODER.WEIGHTS,
                                                          "MODEL.SINE.ENCODER.WEIGHTS")
    if "{fold}" not in cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = resolve_hub_path(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
