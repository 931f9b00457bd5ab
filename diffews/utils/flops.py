# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``count_flops``: the FLOPs of one call, by torch's FLOP counter (the benchmarks' GFLOP columns
and ``BACKEND auto``'s gate on which parts are worth measuring)."""

from typing import Callable

import torch

__all__ = ["count_flops"]


@torch.no_grad()
def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn``, by torch's FLOP counter (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())
