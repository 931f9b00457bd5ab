# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The error type that every layer may raise for a wrong command line or config.

It lives in the base layer so that tasks and data code can raise it without importing the
command-line layer (``diffews.cli``), which turns it into one ``error:`` line and exit status 2.
"""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """The command line or the config is wrong (exit status 2)."""
