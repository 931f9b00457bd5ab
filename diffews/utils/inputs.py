# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The predictor's inputs: images encoded once (``EncodedImage``), folders of images, batches.

Kept apart from ``diffews.predictor`` (which re-exports them): nothing here needs the model.
"""

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Tuple

import numpy as np
import torch

from .image import ImageReadError

__all__ = ["EncodedImage", "IMAGE_EXTENSIONS", "input_name", "list_images", "as_list", "chunks",
           "chunks_iter"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class EncodedImage:
    """An image VAE-encoded once at the working size, reusable as a query (``predict``,
    ``predict_many``) and as a support image (``encode_supports``: only its mask is encoded).

    Attributes:
        latent: (C, s, s) posterior-mean latent on the model's device.
        size: the image's original (height, width).
        name: its file path, or a description such as "query 3 (array)".
    """

    latent: torch.Tensor
    size: Tuple[int, int]
    name: str


def input_name(x, what: str, i: int) -> str:
    """A path as given, an ``EncodedImage``'s name, else ``"<what> <i> (<type>)"``."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if isinstance(x, EncodedImage):
        return x.name
    return f"{what} {i} ({type(x).__name__})"


def list_images(paths: Iterable[str]) -> List[str]:
    """Files as given, folders expanded to their image files (sorted by name)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ImageReadError(
                    f"{p}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


def as_list(items) -> Iterable:
    """A single image (path, array, PIL image, EncodedImage) as a list of one; other iterables
    as they are."""
    from PIL import Image

    if isinstance(items, (str, os.PathLike, np.ndarray, Image.Image, EncodedImage)):
        return [items]
    return items if not isinstance(items, (list, tuple)) else list(items)


def chunks(items: List, n: int) -> Iterator[List]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def chunks_iter(items: Iterable, n: int) -> Iterator[List]:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
