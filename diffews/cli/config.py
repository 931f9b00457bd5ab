# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Config loading for entry points: the config file, then the trailing ``KEY VALUE`` overrides,
then the values of the tool's own flags (``--shot``, ``--device`` ...), all merged by detectron2's
``merge_from_list`` in that order, so a flag and its config key can never disagree.

Every failure is a one-line ``UsageError`` naming the file or key; an unknown key names the
closest valid one.
"""

import difflib
import os
import re
from typing import Dict, List, Optional, Sequence

from ..utils.errors import UsageError
from .errors import _one_line

__all__ = ["load_config_checked", "load_entry_config", "flag_overrides"]


def _all_keys(cfg, prefix: str = "") -> List[str]:
    from detectron2.config import CfgNode

    keys = []
    for k, v in cfg.items():
        full = prefix + k
        keys.extend(_all_keys(v, full + ".") if isinstance(v, CfgNode) else [full])
    return keys


def _unknown_key(key: str, cfg, where: str) -> UsageError:
    candidates = _all_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # a misspelt last part under the right node, or the right part elsewhere
        last = key.rsplit(".", 1)[-1]
        close = [k for k in candidates if k.rsplit(".", 1)[-1] == last][:1]
    hint = f"; did you mean {close[0]}?" if close else ""
    return UsageError(f"{where}: unknown config key {key}{hint} (every DiffewS key is listed "
                      "in diffews/config.py)")


def _default_cfg():
    from ..config import build_config

    return build_config()


def load_config_checked(config_file: str, opts: Sequence[str] = ()):
    """``diffews.config.build_config`` with one-line ``UsageError`` s: a missing or unreadable
    config file, an option given after the overrides, an odd number of overrides, an unknown key
    (the closest valid key is named; nodes that allow new keys, e.g. ``DATASETS.CUSTOM``, still do)
    or a value of the wrong type. Missing files named by the config stay ``OSError`` (exit status
    1). Returned unfrozen."""
    import yaml

    from ..config import build_config

    if not config_file:
        raise UsageError("--config-file is required")
    if not os.path.isfile(config_file):
        raise UsageError(f"{config_file}: no such config file (--config-file)")
    opts = [str(o) for o in opts]
    options = [o for o in opts if re.match(r"--[A-Za-z]", o)]
    if options:
        raise UsageError(f"option {options[0]} comes after the config overrides; put options "
                         "before the trailing KEY VALUE pairs")
    if len(opts) % 2:
        raise UsageError(f"config overrides must be KEY VALUE pairs; got {len(opts)} items "
                         f"ending with {opts[-1]!r}")
    try:
        return build_config(config_file, opts)
    except OSError:
        raise
    except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as e:
        # yacs: KeyError (file) or AssertionError (overrides) for an unknown key, ValueError for a
        # value of the wrong type; YAML syntax errors; a missing _BASE_ (AssertionError)
        text = _one_line(e.args[0] if isinstance(e, KeyError) and e.args else e)
        match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", text)
        if match:
            key = match.group(1)
            where = "config override" if key in opts[0::2] else config_file
            raise _unknown_key(key, _default_cfg(), where) from e
        where = "config override" if any(k in text for k in opts[0::2]) else config_file
        raise UsageError(f"{where}: {text}") from e




def flag_overrides(args, flags: Dict[str, str]) -> List[str]:
    """``KEY VALUE`` pairs of the flags that were given: ``flags`` maps an ``args`` attribute to
    its config key (``{"shot": "TEST.FSS.SHOT"}``); a flag left at ``None`` adds nothing."""
    pairs = []
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            pairs += [key, str(value)]
    return pairs


def load_entry_config(args, flags: Optional[Dict[str, str]] = None,
                      config_file: Optional[str] = None):
    """The config of an entry point: ``--config-file`` (or ``config_file``), the trailing
    overrides (and ``--opts``), then the flags of ``flags`` plus the common ones (``--device`` ->
    ``MODEL.DEVICE``). Returned unfrozen."""
    from .args import config_overrides

    flags = dict(flags or {})
    flags.setdefault("device", "MODEL.DEVICE")
    opts = config_overrides(args) + flag_overrides(args, flags)
    return load_config_checked(config_file or args.config_file, opts)
