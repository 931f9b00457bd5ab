# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Run an entry point: one-line errors around detectron2's ``launch``, the output folder's lock
held around it."""

import contextlib
from typing import Callable, Optional

from ..utils.lock import OutputLock
from .errors import run_cli

__all__ = ["launch_cli"]


def launch_cli(args, main: Callable, precheck: Callable[[], object],
               output: Optional[Callable[[], str]] = None) -> int:
    """``run_cli`` around ``launch(main, args.num_gpus, num_machines, machine_rank, dist_url)``.

    With several processes, ``precheck()`` (the config, files and folders) runs once here first,
    so that a bad input fails with one line before any process is spawned; ``main`` runs the same
    checks in each process before it builds the model.

    ``output()`` (cheap: the config loaded, the folder checked) names the run's output folder:
    this process, the parent of the launch, holds its ``utils/lock.OutputLock`` around the whole
    launch, so that a second run on the same folder is refused with one line naming this one
    before anything is deleted or journalled, and a refused run spawns no process (none is left
    waiting for it). With several machines only machine 0 takes it.
    """
    from detectron2.engine import launch

    def run():
        if args.num_gpus * getattr(args, "num_machines", 1) > 1:
            precheck()
        lock = contextlib.nullcontext()
        if output is not None and getattr(args, "machine_rank", 0) == 0:
            folder = output()
            lock = OutputLock(folder, what=f"--output {folder}")
        with lock:
            return launch(main, args.num_gpus, num_machines=getattr(args, "num_machines", 1),
                          machine_rank=getattr(args, "machine_rank", 0), dist_url=args.dist_url,
                          args=(args,))

    return run_cli(run, args.debug)
