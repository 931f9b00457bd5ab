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


def check_image_file(path: str) -> None:
    """Raise ``ImageReadError`` unless ``path`` is a file whose header PIL can identify (cheap:
    the pixels are not decoded), so that a long run fails on a bad file before it starts."""
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e


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


def as_rgb(image, what: str = "image") -> np.ndarray:
    """A file path, PIL image or array as an (H, W, 3) uint8 RGB array.

    Arrays may be (H, W, 3) or (H, W, 4) (alpha dropped) or (H, W) grey, of dtype uint8.
    Raises ``ImageReadError`` naming ``what`` (or the file) when it is none of these.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageReadError(f"{what}: an image array must be uint8 in [0, 255], got {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
        raise ImageReadError(f"{what}: an image array must be HxWx3, HxWx4 or HxW, got shape "
                             f"{image.shape}")
    raise ImageReadError(f"{what}: expected a file path, a PIL image or a uint8 array, got "
                         f"{type(image).__name__}")


def as_mask(mask, what: str = "mask") -> np.ndarray:
    """A file path, PIL image or array as an (H, W) bool mask: any non-zero pixel is foreground
    (an RGB mask counts a pixel whose any channel is non-zero)."""
    if isinstance(mask, (str, os.PathLike)):
        return read_mask(os.fspath(mask))
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask)
    elif isinstance(mask, np.ndarray):
        arr = mask
    else:
        raise ImageReadError(f"{what}: expected a file path, a PIL image or an HxW array, got "
                             f"{type(mask).__name__}")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].max(axis=2) if arr.dtype != bool else arr[..., :3].any(axis=2)
    if arr.ndim != 2:
        raise ImageReadError(f"{what}: a mask must be HxW, got shape {arr.shape}")
    return arr != 0
