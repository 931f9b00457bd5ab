# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The error types that every layer may raise.

They live in the base layer so that tasks and data code can raise them without importing the
command-line layer (``diffews.cli``), which turns them into one ``error:`` line (``UsageError``:
exit status 2; the others 1).
"""

__all__ = ["UsageError", "SupportSetError"]


class UsageError(ValueError):
    """The command line or the config is wrong (exit status 2)."""


class SupportSetError(ValueError):
    """A support set that cannot be used as asked (empty, another model or working size, a bad
    file); every model's support sets raise it."""
