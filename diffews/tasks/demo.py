# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Writing the demo's outputs (``tools/demo.py``): the mask, the decoded prediction and an overlay
picture per query. The segmentation itself is ``DiffewSPredictor``'s."""

import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from ..utils.image import ImageReadError, read_image, read_mask
from ..utils.overlay import PRED_COLOR, SUPPORT_COLOR, overlay_mask, side_by_side

__all__ = ["support_panels", "write_outputs"]


def support_panels(pairs: List[Tuple[str, str]]) -> List[np.ndarray]:
    """Each (image file, mask file) support as its image with the mask tinted (for overlays).
    Reads every file, so that a missing or mismatched one fails before the model is loaded."""
    panels = []
    for image_file, mask_file in pairs:
        image, mask = read_image(image_file), read_mask(mask_file)
        if mask.shape != image.shape[:2]:
            raise ImageReadError(f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                                 f"image {image_file} is {image.shape[1]}x{image.shape[0]}")
        panels.append(overlay_mask(image, mask, SUPPORT_COLOR))
    return panels


def write_outputs(output_dir: str, result: Dict, supports: List[np.ndarray]) -> Dict:
    """Write ``<stem>_mask.png`` (0/255, the query's size), ``<stem>_pred.png`` (decoded
    prediction, working size) and ``<stem>_overlay.jpg`` (mask over the query, supports beside).

    Args:
        result: a ``DiffewSPredictor.predict`` dict of a query given as a file path.
        supports: ``support_panels`` of the supports.
    Returns:
        {"mask": path of the mask file, "fraction": foreground fraction}.
    """
    stem = os.path.splitext(os.path.basename(result["name"]))[0]
    paths = {
        k: os.path.join(output_dir, f"{stem}_{k}") for k in ("mask.png", "pred.png", "overlay.jpg")
    }
    mask = result["mask"]
    Image.fromarray(mask.astype(np.uint8) * 255).save(paths["mask.png"])
    Image.fromarray(result["pred_image"]).save(paths["pred.png"])
    panels = [overlay_mask(read_image(result["name"]), mask, PRED_COLOR)] + list(supports)
    titles = [f"query: prediction ({result['score']:.2f})"]
    titles += [f"support {i + 1}" for i in range(len(supports))]
    Image.fromarray(side_by_side(panels, titles)).save(paths["overlay.jpg"], quality=92)
    return {"mask": paths["mask.png"], "fraction": float(mask.mean())}
