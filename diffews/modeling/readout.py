# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reading a mask, a confidence and a presence signal out of the decoded prediction image
(docs/METHOD.md section 3.2 for the mask rule; the score and the presence signals are ours).

The decoded prediction is an RGB image whose channel mean ``p`` in [0, 1] is white where the
model puts the object. Its relative threshold (``p > 0.25 * max p``) always marks pixels, also on
a query without the object; the score and the presence signals below say how much to trust it.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["relative_threshold", "prediction_score", "prediction_score_array", "confidence_map",
           "presence_signals", "mask_peak", "PRESENCE_SIGNALS", "MEASURED_SIGNALS",
           "SPECK_PIXELS"]

# Presence signals (higher = more likely present), all from one query pass:
# * "score": ``prediction_score`` of the prediction and its mask;
# * "peak": the 99th percentile of ``p`` over the mask's pixels (0 for an empty mask): how
#   bright the marked object decodes, whatever its size (a model trained on absent-target
#   episodes decodes their empty answer dark: the absolute readout of design (a));
# * "attention": share of the fused self-attention mass the query's tokens put on the supports'
#   keys, averaged over fused layers, heads and tokens (``kv_fusion``, only when asked for);
# * "head": the learned presence head's probability (``presence_head``; models that have one).
PRESENCE_SIGNALS = ("score", "peak", "attention", "head")
# the signals measured inside the query pass (``query_pass_measured``), not read from the image
MEASURED_SIGNALS = ("attention", "head")
# ``prediction_score`` scales the score of a mask of n < SPECK_PIXELS pixels by n / SPECK_PIXELS
# (a single bright pixel on black scores 1/16, not 1): the size of TEST.FSOD.MIN_AREA's default
SPECK_PIXELS = 16


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


def _side_stats(
    p: torch.Tensor, m: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and (population) std of ``p`` over the pixels where ``m`` is 1, per image."""
    n = m.sum(dim=(-2, -1))
    mean = (p * m).sum(dim=(-2, -1)) / n.clamp(min=1)
    var = (((p - mean[..., None, None]) ** 2) * m).sum(dim=(-2, -1)) / n.clamp(min=1)
    return n, mean, var.clamp(min=0).sqrt()


def prediction_score(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Confidence of a mask read from a decoded prediction, in [0, 1] (the model's batched form;
    ``prediction_score_array`` is the same on one numpy image).

    With ``p`` the RGB mean in [0, 1] and (mu, sigma) its mean and standard deviation inside and
    outside the mask, the score is the gap between the two sides' one-sigma bands::

        score = clamp((mu_in - sigma_in) - (mu_out + sigma_out), 0, 1)

    times ``min(1, n_in / SPECK_PIXELS)`` (a minimum-area term: a speck of n_in < 16 pixels
    is not a confident object), and 0 when either side is empty: a mask with no background
    (every pixel marked, which the relative threshold does on a uniform or dim prediction)
    shows no contrast, whatever its brightness. Values: clean white-on-black of at least 16
    pixels 1; a single white pixel on black 1/16; uniform at any grey level 0; all-foreground
    0; empty 0; i.i.d. uniform noise (mask at 0.25 x max) about 1/2 - 1/sqrt(12) = 0.21; a
    white object on a grey g background 1 - g (a dim object: its brightness minus the
    background's).

    Args:
        image: (3, H, W) or (N, 3, H, W) uint8; mask: (H, W) or (N, H, W) bool.
    Returns:
        scalar or (N,) float32 tensor.
    """
    p = image.float().mean(dim=-3) / 255.0
    m = mask.to(p.dtype)
    n_in, mu_in, sd_in = _side_stats(p, m)
    n_out, mu_out, sd_out = _side_stats(p, 1 - m)
    gap = ((mu_in - sd_in) - (mu_out + sd_out)).clamp(0, 1) * (n_in / SPECK_PIXELS).clamp(max=1)
    return torch.where((n_in == 0) | (n_out == 0), torch.zeros_like(gap), gap)


def prediction_score_array(pred_image: np.ndarray, mask: np.ndarray) -> float:
    """``prediction_score`` of one prediction as the predictor returns it.

    Args:
        pred_image: (H, W, 3) uint8 decoded prediction (``result["pred_image"]``).
        mask: (H, W) bool (non-zero = in the mask), of the same size.
    Returns:
        the score, a float in [0, 1] (see ``prediction_score`` for what it means).
    """
    pred_image, mask = np.asarray(pred_image), np.asarray(mask)
    if pred_image.ndim != 3 or pred_image.shape[2] != 3 or pred_image.dtype != np.uint8:
        raise ValueError(f"prediction_score: pred_image must be H x W x 3 uint8, got "
                         f"{pred_image.shape} {pred_image.dtype}")
    if mask.shape != pred_image.shape[:2]:
        raise ValueError(f"prediction_score: mask {mask.shape} and pred_image "
                         f"{pred_image.shape[:2]} differ in size")
    image = torch.from_numpy(np.ascontiguousarray(pred_image.transpose(2, 0, 1)))
    return float(prediction_score(image, torch.from_numpy(mask.astype(bool))))


def confidence_map(pred_image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(S, S, 3) uint8 decoded prediction -> (H, W) float32 per-pixel confidence in [0, 1]: the
    RGB mean / 255, nearest-resized to ``size`` as the predicted mask is (VOS merges objects by
    it, instance segmentation scores instances by it)."""
    from ..utils.image import resize_mask

    prob = np.asarray(pred_image).astype(np.float32).mean(axis=-1) / 255.0
    return resize_mask(prob, tuple(size))


def mask_peak(image: torch.Tensor, mask: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """The ``q`` quantile of the RGB mean ``p`` in [0, 1] over each mask's pixels (0 for an
    empty mask): (N, 3, H, W) uint8 and (N, H, W) bool -> (N,) float32."""
    p = image.float().mean(dim=-3) / 255.0
    out = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
    for i in range(p.shape[0]):
        inside = p[i][mask[i]]
        if inside.numel():
            out[i] = torch.quantile(inside, q)
    return out


def presence_signals(image: torch.Tensor, mask: torch.Tensor, score: torch.Tensor,
                     measured: Optional[Dict[str, torch.Tensor]] = None
                     ) -> Dict[str, torch.Tensor]:
    """The presence signals of ``PRESENCE_SIGNALS`` for (N, 3, H, W) uint8 predictions, their
    (N, H, W) masks and (N,) scores; those of ``MEASURED_SIGNALS`` only as ``measured`` gives
    them ({name: (N,) tensor}, from ``query_pass_measured``).

    Returns:
        {signal name: (N,) float32 tensor}.
    """
    out = {"score": score.float(), "peak": mask_peak(image, mask)}
    for name, value in (measured or {}).items():
        if name not in MEASURED_SIGNALS:
            raise ValueError(f"unknown measured presence signal {name!r}")
        out[name] = value.detach().float().to(score.device)
    return out
