# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Pictures of episodes: masks drawn over images, panels side by side."""

from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw

SUPPORT_COLOR = (0, 160, 255)
PRED_COLOR = (255, 40, 40)
GT_COLOR = (40, 220, 40)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color=PRED_COLOR, alpha: float = 0.5
) -> np.ndarray:
    """Tint the mask's pixels of an (H, W, 3) uint8 image; ``mask`` is (H, W), non-zero = on."""
    out = image.astype(np.float32).copy()
    on = mask.astype(bool)
    out[on] = (1 - alpha) * out[on] + alpha * np.asarray(color, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def draw_contour(image: np.ndarray, mask: np.ndarray, color=GT_COLOR) -> np.ndarray:
    """Draw the 1-pixel inner boundary of a (H, W) mask on an (H, W, 3) uint8 image."""
    m = mask.astype(bool)
    p = np.pad(m, 1, constant_values=False)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    out = image.copy()
    out[m & ~interior] = color
    return out


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] = (), height: int = 256,
                 gap: int = 4) -> np.ndarray:
    """Resize (H, W, 3) uint8 panels to one height and lay them out left to right, with titles."""
    resized: List[Image.Image] = []
    for p in panels:
        h, w = p.shape[:2]
        resized.append(
            Image.fromarray(p).resize((max(1, round(w * height / h)), height), Image.BILINEAR)
        )
    width = sum(im.width for im in resized) + gap * (len(resized) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, im in enumerate(resized):
        canvas.paste(im, (x, 0))
        if i < len(titles) and titles[i]:
            draw.rectangle([x, 0, x + 7 * len(titles[i]) + 6, 14], fill=(0, 0, 0))
            draw.text((x + 3, 1), titles[i], fill=(255, 255, 255))
        x += im.width + gap
    return np.asarray(canvas)
