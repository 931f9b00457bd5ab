# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Work that the main process does once and the other processes of a launch then reuse."""

from typing import Callable, TypeVar

from detectron2.utils import comm

__all__ = ["main_process_first"]

T = TypeVar("T")


def main_process_first(compute: Callable[[], T], load: Callable[[], T], what: str) -> T:
    """``compute()`` in the main process (e.g. encode and save the support sets); the others wait,
    then ``load()`` what it saved. With one process, just ``compute()``.

    A failure in the main process is raised there and, as a ``RuntimeError`` naming ``what``, in
    every other process, so that no process waits forever at a later barrier.
    """
    if comm.get_world_size() == 1:
        return compute()
    result, error, failure = None, None, None
    if comm.is_main_process():
        try:
            result = compute()
        except Exception as e:  # noqa: BLE001 (re-raised below, after the others are told)
            error, failure = e, f"{type(e).__name__}: {e}"
    status = comm.all_gather(failure)  # also the barrier the other processes wait at
    if error is not None:
        raise error
    if status[0] is not None:
        raise RuntimeError(f"the main process failed to prepare {what}: {status[0]}")
    return result if comm.is_main_process() else load()
