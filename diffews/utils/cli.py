# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What every entry point shares: one-line errors, config overrides and config loading.

Errors. ``run_cli(fn, debug)`` calls ``fn()`` and turns any exception into one line on stderr,
``error: <message>``, and an exit status:

* **2**, a usage error: the command line or the config is wrong (a missing config file, an
  unknown config key, a bad ``--fold`` / ``--shot``, an image size the model cannot take,
  inference asked for without weights). ``UsageError`` and argparse's own errors.
* **1**, a runtime or data error: a file or folder on disk is missing, half-written or corrupt
  (dataset, ``MODEL.DIFFEWS.PRETRAINED``, checkpoint, output folder), bad data, a NaN loss ...

``--debug`` (added by ``add_common_arguments``) prints the full traceback instead.

Config overrides. One style for every tool, detectron2's: trailing ``KEY VALUE`` pairs after the
options (``argparse.REMAINDER``). Tools that used to take ``--opts KEY VALUE ...`` still accept it
(``add_common_arguments(parser, opts_flag=True)``). ``load_config_checked`` names the closest valid
key of a misspelt one.
"""

import argparse
import difflib
import logging
import os
import re
import sys
import traceback
from typing import Callable, List, Optional, Sequence

logger = logging.getLogger(__name__)

__all__ = ["UsageError", "OneLineArgumentParser", "one_line_errors", "add_common_arguments",
           "config_overrides", "load_config_checked", "format_error", "run_cli", "exit_status"]

EXIT_ERROR, EXIT_USAGE = 1, 2
OPTS_NOTE = ("note: --opts is accepted for compatibility; the documented style is trailing "
             "KEY VALUE pairs after the options")
# datasets/README.md section of each dataset folder under $DETECTRON2_DATASETS
README_SECTIONS = {"COCO2014": "COCO-20i", "VOC2012": "PASCAL-5i", "FSS-1000": "FSS-1000",
                   "LVIS": "LVIS-92i"}


class UsageError(ValueError):
    """The command line or the config is wrong (exit status 2)."""


def _argparse_error(parser: argparse.ArgumentParser, message: str):
    print(f"error: {message} (see {parser.prog} --help)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ...`` line (exit status 2)
    instead of the usage block."""

    def error(self, message: str):
        _argparse_error(self, message)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give an existing parser (e.g. detectron2's ``default_argument_parser()``) one-line errors."""
    parser.error = lambda message: _argparse_error(parser, message)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser, opts_flag: bool = False,
                         positional_opts: bool = True) -> argparse.ArgumentParser:
    """Add ``--debug`` and the config overrides: trailing ``KEY VALUE ...`` (``args.opts``) and,
    with ``opts_flag``, the older ``--opts KEY VALUE ...`` (``args.opts_flag``). Read both with
    ``config_overrides(args)``. ``positional_opts=False`` when the parser already has ``opts``
    (detectron2's ``default_argument_parser``)."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    if opts_flag:
        parser.add_argument("--opts", dest="opts_flag", nargs=argparse.REMAINDER, default=None,
                            metavar="KEY VALUE", help="same as trailing KEY VALUE pairs (kept for "
                            "compatibility; trailing pairs are the documented style)")
    if positional_opts:
        parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                            help="config overrides after the options, e.g. MODEL.WEIGHTS "
                            "weight/coco_fold0 MODEL.DEVICE cpu")
    return parser


def config_overrides(args) -> List[str]:
    """The ``KEY VALUE`` list of ``args``: trailing pairs, then those given after ``--opts``."""
    opts = list(getattr(args, "opts", None) or [])
    flag = getattr(args, "opts_flag", None)
    if flag is not None:
        print(OPTS_NOTE)
        opts += list(flag)
    return opts


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
    from detectron2.config import get_cfg

    from ..config import add_diffews_config

    cfg = get_cfg()
    add_diffews_config(cfg)
    return cfg


def load_config_checked(config_file: str, opts: Sequence[str] = ()):
    """``diffews.config.load_config`` with one-line ``UsageError`` s: a missing or unreadable config
    file, an option given after the overrides, an odd number of overrides, an unknown key (the
    closest valid key is named; nodes that allow new keys, e.g. ``DATASETS.CUSTOM``, still do) or
    a value of the wrong type. Missing files named by the config stay ``OSError`` (exit status 1).
    Returned unfrozen."""
    import yaml

    from ..config import load_config

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
        return load_config(config_file, opts)
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


# ---- errors ------------------------------------------------------------------------------------
_EXPECTED = (OSError, ValueError, KeyError, ImportError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _with_readme_section(message: str, path: Optional[str]) -> str:
    """Name the datasets/README.md section of a missing dataset path."""
    if not path or "datasets/README.md" not in message:
        return message
    parts = os.path.normpath(path).split(os.sep)
    for folder, section in README_SECTIONS.items():
        if folder in parts:
            return message.replace("datasets/README.md",
                                   f'datasets/README.md (section "{section}")', 1)
    return message


def format_error(e: BaseException) -> str:
    """One line for an exception: its message (a KeyError's without quotes); for an exception
    re-raised from a DataLoader worker or a spawned process, the original exception's last line;
    a missing dataset path gets its README section; an unexpected type is named."""
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = str(e)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception|Interrupt)?: ", "", last.strip())
    text = _one_line(text) or type(e).__name__
    text = _with_readme_section(text, getattr(e, "path", None) or text.split(":", 1)[0])
    if not isinstance(e, _EXPECTED):
        text = f"{type(e).__name__}: {text} (rerun with --debug for the traceback)"
    return text


def exit_status(e: BaseException) -> int:
    """2 for usage errors (``UsageError``, inference without weights), 1 for the rest."""
    from ..checkpoint import UntrainedModelError

    return EXIT_USAGE if isinstance(e, (UsageError, UntrainedModelError)) else EXIT_ERROR


def run_cli(fn: Callable[[], object], debug: bool = False) -> int:
    """Call ``fn()``; return 0, or print one ``error:`` line and return the exit status.

    With ``debug`` the traceback is printed before the error line.
    """
    try:
        result = fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (every error becomes one line)
        if debug:
            traceback.print_exc()
        print(f"error: {format_error(e)}", file=sys.stderr)
        return exit_status(e)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def launch_cli(args, main: Callable, precheck: Callable[[], object]) -> int:
    """``run_cli`` around detectron2's ``launch(main, args.num_gpus, ...)``: with several
    processes, ``precheck()`` runs once here first, so that a bad input fails with one line
    before any process is spawned (each process then checks again in ``main``)."""
    from detectron2.engine import launch

    def run():
        if args.num_gpus > 1:
            precheck()
        return launch(main, args.num_gpus, dist_url=args.dist_url, args=(args,))

    return run_cli(run, args.debug)
