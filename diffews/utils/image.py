# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Image and mask I/O and the reference code's resizing rules.

Images are resized with PIL bilinear (what torchvision's ``Resize`` does on PIL images in the
reference code); masks with ``torch.nn.functional.interpolate(mode="nearest")``, which samples
``floor(i * in / out)`` and therefore differs from PIL's NEAREST at some pixels. Using the same
rule as the reference keeps ground truth and support masks pixel-identical to it.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """A file is missing or is not a readable image; the message names the file."""


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    return img


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    return np.asarray(_open(path).convert("RGB"))


def read_label(path: str) -> np.ndarray:
    """Read a label PNG as stored (palette indices or gray values, no colour conversion).

    Returns:
        np.ndarray: (H, W) integer array.
    """
    img = _open(path)
    arr = np.asarray(img)
    if arr.ndim == 3:  # an RGB(A) mask: any non-zero colour channel counts
        arr = arr[..., :3].max(axis=2)
    return arr


def read_mask(path: str) -> np.ndarray:
    """Read a binary mask: any non-zero pixel is foreground.

    Returns:
        np.ndarray: (H, W) bool.
    """
    return read_label(path) > 0


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) with PIL bilinear, ignoring the aspect ratio."""
    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-resize a (H, W) label array as ``F.interpolate(mode="nearest")`` does.

    Args:
        mask: (H, W) array of any integer or bool dtype.
        size: int for a square output, or (height, width).
    Returns:
        np.ndarray: the resized array, same dtype.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    t = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))[None, None]
    out = F.interpolate(t, size=hw, mode="nearest")[0, 0].numpy()
    return out.astype(mask.dtype)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor, detectron2's image convention."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
