# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reading a mask and a confidence out of the decoded prediction image (METHOD.md 3.2)."""

import torch

__all__ = ["relative_threshold", "prediction_score"]


def relative_threshold(image: torch.Tensor, rel_threshold: float = 0.25,
                       abs_threshold: float = 0.0) -> torch.Tensor:
    """(3, H, W) or (N, 3, H, W) uint8 prediction -> (H, W) or (N, H, W) bool mask.

    The reference's rule: mean over RGB of the prediction in [0, 1] > ``rel_threshold`` x its max
    over all pixels and channels, or > ``abs_threshold`` when that is > 0.
    """
    p = image.float() / 255.0
    mean = p.mean(dim=-3)
    if abs_threshold > 0:
        return mean > abs_threshold
    peak = p.amax(dim=(-3, -2, -1), keepdim=True)[..., 0, :, :]
    return mean > rel_threshold * peak


def prediction_score(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Confidence of a prediction in [0, 1]: the mean brightness of the decoded prediction inside
    the mask minus that outside it (both on the RGB mean in [0, 1]; an empty side counts 0). A
    clean white-on-black mask image scores about 1; a dim or grey prediction, whose relative
    threshold picks up little contrast, scores near 0; an empty mask scores 0.

    Args:
        image: (3, H, W) or (N, 3, H, W) uint8; mask: (H, W) or (N, H, W) bool.
    Returns:
        scalar or (N,) float tensor.
    """
    p = image.float().mean(dim=-3) / 255.0
    m = mask.to(p.dtype)
    inside = (p * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp(min=1)
    outside = (p * (1 - m)).sum(dim=(-2, -1)) / (1 - m).sum(dim=(-2, -1)).clamp(min=1)
    empty = m.sum(dim=(-2, -1)) == 0
    return torch.where(empty, torch.zeros_like(inside), (inside - outside).clamp(0, 1))
