# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One-line errors for every entry point.

``run_cli(fn, debug)`` calls ``fn()`` and turns any exception into one line on stderr,
``error: <message>``, and an exit status:

* **2**, a usage error: the command line or the config is wrong (a missing config file, an
  unknown config key, a bad ``--fold`` / ``--shot``, an image size the model cannot take,
  inference asked for without weights). ``UsageError`` and argparse's own errors.
* **1**, a runtime or data error: a file or folder on disk is missing, half-written or corrupt
  (dataset, ``MODEL.DIFFEWS.PRETRAINED``, checkpoint, output folder), bad data, a NaN loss ...

``--debug`` prints the full traceback before the error line.
"""

import os
import re
import sys
import traceback
from typing import Callable, Optional

from ..utils.errors import UsageError

__all__ = ["format_error", "run_cli", "exit_status", "EXIT_ERROR", "EXIT_USAGE",
           "README_SECTIONS"]

EXIT_ERROR, EXIT_USAGE = 1, 2
# datasets/README.md section of each dataset folder under $DETECTRON2_DATASETS
README_SECTIONS = {"COCO2014": "COCO-20i", "VOC2012": "PASCAL-5i", "FSS-1000": "FSS-1000",
                   "LVIS": "LVIS-92i"}

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
    from ..checkpoint import UntrainedModelError  # floor below: imported lazily, it loads torch

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


