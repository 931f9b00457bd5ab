# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The flags every entry point shares, spelt one way.

``entry_parser(description, ...)`` builds the parser of an entry point with the flags it asks
for, always with the same name, meaning and default:

==========================  =====================================================================
``--config-file CFG``       the YAML config (detectron2 style, ``_BASE_`` chains)
``--dataset-root DIR``      datasets root (default ``$DETECTRON2_DATASETS``, else ``./datasets``)
``--output DIR``            where results go (each tool documents its default)
``--device DEV``            ``cpu``, ``cuda``, ``cuda:1`` ... (sets ``MODEL.DEVICE``)
``--batch-size N``          queries or episodes per model call (default: the config's key)
``--num-gpus`` ...          ``--num-machines``, ``--machine-rank``, ``--dist-url``: detectron2's
                            ``launch``, as ``tools/train_net.py``
``--debug``                 full traceback instead of the one-line error
``KEY VALUE ...``           trailing config overrides (``--opts KEY VALUE ...`` also works)
==========================  =====================================================================

Lists are comma-separated everywhere (``--shots 1,5``, ``--videos bear,boat``); the older
space-separated form and the older flag names (``--root``, ``--davis-root``) still work and print
a deprecation warning.
"""

import argparse
import os
import re
import sys
from typing import Callable, List, Optional

__all__ = ["OneLineArgumentParser", "one_line_errors", "entry_parser", "add_common_arguments",
           "add_list_argument", "add_distributed_arguments", "parse_list", "config_overrides",
           "check_counts", "deprecate", "take_trailing_overrides"]

EXIT_USAGE = 2


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


def deprecate(old: str, new: str) -> None:
    """Print the one deprecation line of an old spelling (stderr, so results stay clean)."""
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)


class _DeprecatedAlias(argparse.Action):
    """An old flag name: stores into the new flag's ``dest`` and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecate(option_string, self.new)
        setattr(namespace, self.dest, values)


# a config key (``MODEL.WEIGHTS``): where a flag that takes several words (``--query a.jpg b.jpg``,
# the old space-separated lists) would swallow the trailing ``KEY VALUE`` overrides, they start here
_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def take_trailing_overrides(namespace, words: List[str]) -> List[str]:
    """The words of a many-word flag up to the first config key; that key and the words after it
    are the trailing overrides (``config_overrides`` reads them first)."""
    for i, word in enumerate(words):
        if _CONFIG_KEY.fullmatch(word) and not os.path.exists(word):
            namespace.trailing_overrides = words[i:]
            return words[:i]
    return words


class _ListAction(argparse.Action):
    """A comma-separated list; several space-separated words (the old form) warn and are
    joined. Stores the raw text, which ``parse_list`` turns into a list."""

    def __call__(self, parser, namespace, values, option_string=None):
        words = values if isinstance(values, list) else [values]
        words = take_trailing_overrides(namespace, words)
        if not words:
            parser.error(f"{option_string} needs a value before the config overrides")
        if len(words) > 1:
            deprecate(f"a space-separated list after {option_string}",
                      f"{option_string} {','.join(words)}")
        setattr(namespace, self.dest, ",".join(words))


def add_list_argument(parser, *names: str, default: Optional[str] = None, help: str = "",
                      metavar: str = "A,B,...", deprecated: tuple = ()) -> None:
    """A list flag: ``--shots 1,5``. Read it with ``parse_list(args.shots, int, "--shots")``."""
    parser.add_argument(*names, nargs="+", action=_ListAction, default=default, metavar=metavar,
                        help=help + " (comma-separated)")
    dest = names[0].lstrip("-").replace("-", "_")
    for old in deprecated:
        parser.add_argument(
            old,
            dest=dest,
            nargs="+",
            action=_ListAction,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def parse_list(text: Optional[str], kind: Callable = str, flag: str = "") -> Optional[list]:
    """``"1,5"`` -> ``[1, 5]`` (empty items dropped); ``None`` stays ``None``. A value that
    ``kind`` rejects raises ``ValueError`` naming the flag."""
    if text is None:
        return None
    try:
        return [kind(item.strip()) for item in str(text).split(",") if item.strip()]
    except ValueError as e:
        raise ValueError(f"{flag or 'list'}: expected a comma-separated list of "
                         f"{getattr(kind, '__name__', 'values')}, got {text!r}") from e


def add_common_arguments(parser: argparse.ArgumentParser, opts_flag: bool = True,
                         positional_opts: bool = True) -> argparse.ArgumentParser:
    """Add ``--debug`` and the config overrides: trailing ``KEY VALUE ...`` (``args.opts``) and
    ``--opts KEY VALUE ...`` (``args.opts_flag``). Read both with ``config_overrides(args)``.
    ``positional_opts=False`` when the parser already has ``opts`` (detectron2's parser)."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    if opts_flag:
        parser.add_argument("--opts", dest="opts_flag", nargs=argparse.REMAINDER, default=None,
                            metavar="KEY VALUE", help="same as trailing KEY VALUE pairs")
    if positional_opts:
        parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                            help="config overrides after the options, e.g. MODEL.WEIGHTS "
                            "weight/coco_fold0 MODEL.DEVICE cpu")
    return parser


def config_overrides(args) -> List[str]:
    """The ``KEY VALUE`` list of ``args``: trailing pairs (also those a many-word flag took,
    ``take_trailing_overrides``), then those given after ``--opts``."""
    opts = list(getattr(args, "trailing_overrides", None) or [])
    opts += list(getattr(args, "opts", None) or [])
    flag = getattr(args, "opts_flag", None)
    if flag is not None:
        opts += list(flag)
    return opts


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's ``launch`` flags, with the defaults of its ``default_argument_parser``."""
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine)")
    parser.add_argument("--dist-url", default="auto",
                        help="initialization URL for pytorch distributed backend ('auto': a free "
                        "local port, single machine only)")


def entry_parser(description: str, *, epilog: Optional[str] = None, config: str = "required",
                 dataset_root: bool = False, output: Optional[str] = "required",
                 output_help: str = "results folder", device: bool = False,
                 batch_size: Optional[str] = None, distributed: bool = False,
                 overrides: bool = True, dataset_root_help: Optional[str] = None,
                 deprecated_roots: tuple = ("--root", "--davis-root")) -> OneLineArgumentParser:
    """The parser of an entry point with the shared flags it uses (module docstring).

    Args:
        config: ``"required"``, ``"optional"`` or ``""`` (no ``--config-file``).
        output: ``"required"``, ``"optional"`` (``None`` when not given) or ``None`` (no flag).
        batch_size: the help text of ``--batch-size`` (its default is ``None``: the config's
            key, named in the help), or ``None`` for no such flag.
        overrides: trailing ``KEY VALUE`` pairs and ``--opts`` (tools without a config have none).
        dataset_root_help: the help of ``--dataset-root`` where the tool reads it differently.
        deprecated_roots: old spellings of ``--dataset-root`` accepted with a warning (a tool
            whose old flag meant something else registers it itself, e.g. eval_davis's
            ``--davis-root``, the DAVIS folder).
    """
    p = OneLineArgumentParser(description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        p.add_argument("--config-file", required=config == "required", default="",
                       metavar="CFG", help="the YAML config")
    if dataset_root:
        p.add_argument("--dataset-root", default=None, metavar="DIR",
                       help=dataset_root_help or "datasets root (default $DETECTRON2_DATASETS, "
                       "else ./datasets); see datasets/README.md")
        for old in deprecated_roots:
            p.add_argument(old, dest="dataset_root", action=_DeprecatedAlias, new="--dataset-root",
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    if output:
        p.add_argument("--output", required=output == "required", default=None, metavar="DIR",
                       help=output_help)
    if device:
        p.add_argument("--device", default=None, metavar="DEV",
                       help="cpu, cuda, cuda:1 ... (MODEL.DEVICE; default: the config's)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=None, metavar="N", help=batch_size)
    if distributed:
        add_distributed_arguments(p)
    return add_common_arguments(p, opts_flag=overrides, positional_opts=overrides) \
        if overrides else _debug_only(p)


def _debug_only(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--debug", action="store_true",
                   help="on an error, show the full traceback instead of one line")
    return p


def check_counts(parser: argparse.ArgumentParser, args, minimum: dict) -> None:
    """``parser.error`` for an integer flag below its minimum: ``{"num_gpus": 1, ...}``; flags
    left at ``None`` are skipped."""
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
