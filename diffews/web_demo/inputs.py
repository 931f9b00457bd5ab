# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The page's inputs: limits on what an upload may cost (pixels and the longer side read from the
header before any decoding, and bytes), the readers that apply them, and one support slot turned
into an image and a mask. Every refusal is a ``DemoInputError`` with a one-line message the page
shows.
"""

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..utils.image import DECODE_ERRORS, ImageReadError, as_rgb, label_array

__all__ = ["DemoInputError", "InputLimits", "SupportInput", "open_checked", "read_rgb",
           "read_binary_mask", "parse_support", "support_key", "MAX_SUPPORTS"]

MAX_SUPPORTS = 5
NOT_AN_IMAGE = "not a readable image; give a PNG or JPEG file"


class DemoInputError(ValueError):
    """An upload or field of the page is wrong; the message names it and says what to do."""


@dataclass(frozen=True)
class InputLimits:
    """What one image of the page may cost.

    max_pixels: width x height read from the file's header; a larger image is refused before it
        is decoded (a small PNG can expand to gigabytes of pixels).
    max_file_bytes: the file's size on disk (uploads are also cut off by Gradio at this size).
    max_side: the longer side, read from the header too: within ``max_pixels`` a 40,000,000 x 1
        PNG of a few hundred bytes is still a 40-million-pixel-wide mask and zip entry.
    """

    max_pixels: int = 40_000_000
    max_file_bytes: int = 50 * 2**20
    max_side: int = 30_000

    def __post_init__(self):
        if min(self.max_pixels, self.max_file_bytes, self.max_side) < 1:
            raise ValueError("max_pixels, max_file_bytes and max_side must be >= 1")


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


def open_checked(source: Union[str, bytes], what: str, limits: InputLimits) -> Image.Image:
    """Open an image file (a path, or the bytes of an upload) after checking its size in bytes,
    then its width x height from the header. The pixels are not decoded here.

    Raises:
        DemoInputError: naming ``what`` (an upload's file name, never a server temporary path).
    """
    try:
        nbytes = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
    except OSError as e:
        raise DemoInputError(f"{what}: {NOT_AN_IMAGE}") from e
    if nbytes > limits.max_file_bytes:
        raise DemoInputError(f"{what}: the file is {_mb(nbytes)}; the limit is "
                             f"{_mb(limits.max_file_bytes)} (--max-file-mb)")
    try:
        with warnings.catch_warnings():
            # Pillow's own guard warns above ~89 Mpx and raises above ~179 Mpx; ours is the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                             else source)
    except Image.DecompressionBombError as e:
        raise DemoInputError(f"{what}: more pixels than Pillow's decompression-bomb guard allows; "
                             f"the limit is {limits.max_pixels / 1e6:g} megapixels "
                             "(--max-pixels); downscale it") from e
    except DECODE_ERRORS as e:
        raise DemoInputError(f"{what}: {NOT_AN_IMAGE}") from e
    w, h = img.size
    if w * h > limits.max_pixels:
        img.close()
        raise DemoInputError(f"{what}: {w}x{h} is {w * h / 1e6:.1f} megapixels; the limit is "
                             f"{limits.max_pixels / 1e6:g} megapixels (--max-pixels); downscale it")
    if max(w, h) > limits.max_side:
        img.close()
        raise DemoInputError(f"{what}: {w}x{h} has a side of {max(w, h)} pixels; the limit is "
                             f"{limits.max_side} (--max-side); crop or downscale it")
    return img


def _decoded(img: Image.Image, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except DECODE_ERRORS as e:  # truncated or corrupt pixel data
        raise DemoInputError(f"{what}: {NOT_AN_IMAGE}") from e
    return img


def read_rgb(source: Union[str, bytes], what: str, limits: InputLimits) -> np.ndarray:
    """(H, W, 3) uint8, as ``diffews.utils.image.read_image`` reads it, within ``limits``."""
    with open_checked(source, what, limits) as img:
        try:
            return as_rgb(_decoded(img, what), what)
        except ImageReadError as e:  # a mode Pillow cannot convert to RGB
            raise DemoInputError(f"{what}: {NOT_AN_IMAGE}") from e


def read_binary_mask(source: str, what: str, limits: InputLimits) -> np.ndarray:
    """(H, W) bool, non-zero = foreground, as ``diffews.utils.image.read_mask`` reads it (the
    rules of ``diffews.utils.image.label_array``: palette indices or grey values as stored, alpha
    ignored; for RGB(A), any non-zero colour channel)."""
    with open_checked(source, what, limits) as img:
        try:
            return label_array(_decoded(img, what), what) != 0
        except ImageReadError as e:
            raise DemoInputError(f"{what}: {NOT_AN_IMAGE}") from e


@dataclass
class SupportInput:
    """One annotated support. image: (H, W, 3) uint8; mask: (H, W) bool; source: where the
    mask came from ("mask file NAME" or "painted")."""

    image: np.ndarray
    mask: np.ndarray
    source: str


def _name(path: Optional[str]) -> str:
    return os.path.basename(path) if path else "?"


def parse_support(index: int, editor: Optional[Dict], mask_file: Optional[str],
                  limits: InputLimits = InputLimits()) -> Optional[SupportInput]:
    """One support slot of the page: the image (with any painting) and an optional mask file.

    Args:
        index: the slot number shown in the page (1-based), for messages.
        editor: the ImageEditor's value, ``{"background": (H, W, 3|4) uint8 or None, "layers":
            [(H, W, 4) uint8, ...], "composite": ...}``, or None. Painted pixels are those of
            non-zero alpha in any layer. (The editor's files were checked against ``limits``
            before Gradio decoded them: ``app.SupportEditor``.)
        mask_file: path of an uploaded mask image (non-zero = foreground), or None. When given it
            is the mask, whatever was painted.
    Returns:
        the support, or None for an empty slot.
    """
    what = f"support {index}"
    background = editor.get("background") if editor else None
    layers = [x for x in (editor.get("layers") or []) if x is not None] if editor else []
    if background is None:
        if mask_file or any(_painted(x).any() for x in layers):
            raise DemoInputError(f"{what}: a mask but no image; upload the support image too")
        return None
    image = as_rgb(np.asarray(background), f"{what} image")
    if mask_file:
        name = _name(mask_file)
        mask = read_binary_mask(mask_file, f"{what}: mask file {name}", limits)
        if mask.shape != image.shape[:2]:
            raise DemoInputError(
                f"{what}: mask file {name} is {mask.shape[1]}x{mask.shape[0]} but "
                f"its image is {image.shape[1]}x{image.shape[0]}; upload the mask of this image")
        if not mask.any():
            raise DemoInputError(f"{what}: mask file {name} has no foreground pixel "
                                 "(non-zero = foreground)")
        return SupportInput(image, mask, f"mask file {name}")
    mask = np.zeros(image.shape[:2], bool)
    for layer in layers:
        painted = _painted(layer)
        if painted.shape != mask.shape:
            raise DemoInputError(f"{what}: the painted layer is {painted.shape[1]}x"
                                 f"{painted.shape[0]} but the image is {mask.shape[1]}x"
                                 f"{mask.shape[0]}; clear the canvas and paint again")
        mask |= painted
    if not mask.any():
        raise DemoInputError(f"{what}: no foreground painted; paint the object with the brush "
                             "or upload a mask file")
    return SupportInput(image, mask, "painted")


def _painted(layer: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels a brush touched (alpha > 0; without alpha, any non-zero value)."""
    layer = np.asarray(layer)
    if layer.ndim == 3 and layer.shape[2] == 4:
        return layer[..., 3] > 0
    return layer.reshape(layer.shape[0], layer.shape[1], -1).any(axis=2)


def support_key(supports: Sequence[SupportInput]) -> str:
    """A hash of the supports' pixels and masks, in order (the support-set cache's key). All 256
    bits are kept: two users' different supports must never share a cached set."""
    h = hashlib.sha256()
    for s in supports:
        h.update(np.asarray(s.image.shape, np.int64).tobytes())
        h.update(np.ascontiguousarray(s.image).tobytes())
        h.update(np.packbits(s.mask).tobytes())
    return h.hexdigest()
