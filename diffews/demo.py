# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Run DiffewS on image files: one episode per query with the same supports (``tools/demo.py``)."""

import logging
import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

from .utils.image import ImageReadError, image_to_tensor, read_image, read_mask, resize_image, resize_mask
from .utils.overlay import PRED_COLOR, SUPPORT_COLOR, overlay_mask, side_by_side

logger = logging.getLogger(__name__)


@dataclass
class Support:
    image_file: str
    mask_file: str
    image: np.ndarray  # (H, W, 3) uint8, original size
    mask: np.ndarray  # (H, W) bool, original size


def read_supports(pairs: List[Tuple[str, str]]) -> List[Support]:
    """Read (image, mask) file pairs; raise ``ImageReadError`` naming the file at fault.

    An empty support mask is allowed (the episode still runs: the model then sees a support with no
    foreground) and logged as a warning.
    """
    supports = []
    for image_file, mask_file in pairs:
        image, mask = read_image(image_file), read_mask(mask_file)
        if mask.shape != image.shape[:2]:
            raise ImageReadError(
                f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_file} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            logger.warning("%s: empty support mask (no foreground pixel); running anyway", mask_file)
        supports.append(Support(image_file, mask_file, image, mask))
    return supports


def make_episode(query: np.ndarray, supports: List[Support], size: int) -> dict:
    """Model input for one query (see ``DiffewS.forward``), everything resized to ``size``."""
    return {
        "image": image_to_tensor(resize_image(query, size)),
        "support_images": torch.stack([image_to_tensor(resize_image(s.image, size)) for s in supports]),
        "support_masks": torch.stack(
            [torch.from_numpy(resize_mask(s.mask.astype(np.uint8), size)) for s in supports]
        ),
    }


def write_outputs(output_dir: str, query_file: str, query: np.ndarray, supports: List[Support],
                  result: dict, size: int) -> dict:
    """Write ``<stem>_mask.png`` (0/255, original size), ``<stem>_pred.png`` (decoded prediction,
    working size) and ``<stem>_overlay.jpg`` (mask over the query, supports beside it)."""
    stem = os.path.splitext(os.path.basename(query_file))[0]
    h, w = query.shape[:2]
    mask = resize_mask(result["pred_mask"].cpu().numpy().astype(np.uint8), (h, w))
    paths = {k: os.path.join(output_dir, f"{stem}_{k}") for k in ("mask.png", "pred.png", "overlay.jpg")}
    Image.fromarray(mask * 255).save(paths["mask.png"])
    Image.fromarray(result["pred_image"].permute(1, 2, 0).cpu().numpy()).save(paths["pred.png"])
    panels = [overlay_mask(query, mask, PRED_COLOR)]
    panels += [overlay_mask(s.image, s.mask, SUPPORT_COLOR) for s in supports]
    titles = ["query: prediction"] + [f"support {i + 1}" for i in range(len(supports))]
    Image.fromarray(side_by_side(panels, titles)).save(paths["overlay.jpg"], quality=92)
    return {"mask": paths["mask.png"], "fraction": float(mask.mean())}


__all__ = ["Support", "read_supports", "make_episode", "write_outputs"]
