# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Image and mask I/O and the reference code's resizing rules.

Images are resized with PIL bilinear (what torchvision's ``Resize`` does on PIL images in the
reference code); masks with ``torch.nn.functional.interpolate(mode="nearest")``, which samples
``floor(i * in / out)`` and therefore differs from PIL's NEAREST at some pixels. Using the same
rule as the reference keeps ground truth and support masks pixel-identical to it.

Reading: the stored pixel grid, as Pillow decodes it. EXIF orientation is not applied (the
reference reads ``Image.open(path).convert('RGB')``, aim-uofa/DiffewS
evaluation_util/data/coco.py l.91, and its masks are stored in the same grid). Images are
Pillow's ``convert("RGB")``; labels are described at ``label_array``. A file that Pillow cannot
open or decode (not an image, truncated, corrupt, or more pixels than Pillow's
decompression-bomb guard allows, ``PIL.Image.MAX_IMAGE_PIXELS``) is an ``ImageReadError`` whose
one-line message starts with the file's path; no other exception escapes the readers.
"""

import logging
import os
import struct
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

# what Pillow's openers and decoders raise on a bad file (UnidentifiedImageError is an OSError;
# DecompressionBombWarning is raised when a warnings filter turns it into an error)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                 TypeError, ZeroDivisionError, OverflowError, MemoryError,
                 Image.DecompressionBombError, Image.DecompressionBombWarning)
GREY_MODES = ("1", "L", "P", "I", "F")  # one band whose stored values are the label
ALPHA_MODES = ("LA", "La", "PA")  # a grey value or palette index, then alpha
RGB_MODES = ("RGB", "RGBA", "RGBX", "RGBa")


class ImageReadError(ValueError):
    """A file is missing or is not a readable image; the message names the file."""


def _reason(e: BaseException) -> str:
    """``e`` as one short line (Pillow's messages may hold newlines or be empty)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _refusal(what: str, e: BaseException) -> ImageReadError:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(f"{what}: more pixels than Pillow's decompression-bomb guard "
                              f"allows ({_reason(e)}); not decoded")
    return ImageReadError(f"{what}: not a readable image ({_reason(e)})")


def _warn_large(img: Image.Image, path: str) -> None:
    w, h = img.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:  # Pillow warned without naming the file
        logger.warning("%s: %dx%d is %.0f megapixels (above Pillow's warning limit of %.0f)",
                       path, w, h, w * h / 1e6, limit / 1e6)


def _open(path: str) -> Image.Image:
    """The decoded image of ``path`` (pixels loaded, file closed)."""
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such file")
    img = None
    try:
        img = Image.open(path)
        _warn_large(img, path)
        img.load()
    except DECODE_ERRORS as e:
        if img is not None:
            img.close()
        raise _refusal(path, e) from e
    return img


def check_image_file(path: str) -> Tuple[int, int]:
    """Raise ``ImageReadError`` unless ``path`` is a file whose header PIL can identify (cheap:
    the pixels are not decoded), so that a long run fails on a bad file before it starts.

    Returns:
        (height, width) from the header.
    """
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            _warn_large(img, path)
            return int(img.size[1]), int(img.size[0])
    except DECODE_ERRORS as e:
        raise _refusal(path, e) from e


def _rgb(img: Image.Image, what: str) -> np.ndarray:
    try:
        return np.asarray(img.convert("RGB"))
    except DECODE_ERRORS as e:  # a lazily opened image decodes here; or a mode without RGB
        raise _refusal(what, e) from e


def label_array(img: Image.Image, what: str = "mask") -> np.ndarray:
    """The label of a PIL image, no colour conversion where the mode has a single value:

    - 1, L, P, I, I;16*, F: the stored values (bits, grey levels, palette indices, 16-bit or
      float values);
    - LA, PA: the grey value or palette index (alpha is not part of the label);
    - RGB, RGBA: the largest colour channel (any non-zero colour counts; alpha is not part);
    - other colour modes (CMYK, YCbCr, LAB ...): converted to RGB by Pillow, then as RGB.

    Returns:
        np.ndarray: (H, W), the dtype of the values (bool, uint8, uint16, int32, float32).
    Raises:
        ImageReadError: naming ``what`` when the pixels cannot be decoded or converted.
    """
    try:
        if img.mode in GREY_MODES or img.mode.startswith("I;16"):
            return np.asarray(img)
        if img.mode in ALPHA_MODES:
            return np.asarray(img)[..., 0]
        rgb = img if img.mode in RGB_MODES else img.convert("RGB")
        return np.asarray(rgb)[..., :3].max(axis=2)
    except DECODE_ERRORS as e:
        raise _refusal(what, e) from e


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    return _rgb(_open(path), path)


def read_label(path: str) -> np.ndarray:
    """Read a label image as stored (palette indices or grey values, no colour conversion;
    ``label_array`` gives the rule of every mode).

    Returns:
        np.ndarray: (H, W) integer (or bool, or float) array.
    """
    return label_array(_open(path), path)


def read_grey(path: str) -> np.ndarray:
    """Read an image file as Pillow's ``convert("L")`` (how the reference reads FSS-1000 masks,
    aim-uofa/DiffewS evaluation_util/data/fss.py l.78, before thresholding them).

    Returns:
        np.ndarray: (H, W) uint8.
    """
    img = _open(path)
    try:
        return np.asarray(img.convert("L"))
    except DECODE_ERRORS as e:
        raise _refusal(path, e) from e


def read_pixels(path: str) -> np.ndarray:
    """Read an image file's pixels as Pillow stores them (``np.array`` of the image, no mode
    conversion): palette indices of a P PNG, grey levels, 16-bit or float values, bits.

    Returns:
        np.ndarray: (H, W) for one-band modes, (H, W, C) for the others (e.g. RGB, LA).
    """
    img = _open(path)
    try:
        return np.array(img)
    except DECODE_ERRORS as e:
        raise _refusal(path, e) from e


def read_mask(path: str) -> np.ndarray:
    """Read a binary mask: any non-zero pixel is foreground.

    Returns:
        np.ndarray: (H, W) bool.
    """
    return read_label(path) != 0


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
        return _rgb(image, what)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageReadError(f"{what}: an image array must be uint8 in [0, 255], got "
                                 f"{image.dtype}")
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
    (an RGB mask counts a pixel whose any channel is non-zero; a PIL image or file follows
    ``label_array``)."""
    if isinstance(mask, (str, os.PathLike)):
        return read_mask(os.fspath(mask))
    if isinstance(mask, Image.Image):
        arr = label_array(mask, what)
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
