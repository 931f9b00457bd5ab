# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Run an entry point: one-line errors around detectron2's ``launch``."""

from typing import Callable

from .errors import run_cli

__all__ = ["launch_cli"]


def launch_cli(args, main: Callable, precheck: Callable[[], object]) -> int:
    """``run_cli`` around ``launch(main, args.num_gpus, num_machines, machine_rank, dist_url)``.

    With several processes, ``precheck()`` (the config, files and folders) runs once here first,
    so that a bad input fails with one line before any process is spawned; ``main`` runs the same
    checks in each process before it builds the model.
    """
    from detectron2.engine import launch

    def run():
        if args.num_gpus * getattr(args, "num_machines", 1) > 1:
            precheck()
        return launch(main, args.num_gpus, num_machines=getattr(args, "num_machines", 1),
                      machine_rank=getattr(args, "machine_rank", 0), dist_url=args.dist_url,
                      args=(args,))

    return run_cli(run, args.debug)
