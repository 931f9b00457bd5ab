# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Random model inputs, for tests and benchmarks."""

import torch


def random_episode(shots: int, size: int, seed: int) -> dict:
    """A model input dict (``DiffewS.forward``) of random pixels and masks, seeded."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
        "support_images": torch.randint(
            0, 256, (shots, 3, size, size), generator=g, dtype=torch.uint8
        ),
        "support_masks": (torch.rand(shots, size, size, generator=g) > 0.5).to(torch.uint8),
        "sem_seg": (torch.rand(size, size, generator=g) > 0.5).to(torch.uint8),
        "class_id": 0,
    }
