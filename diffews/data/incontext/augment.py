# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The geometric augmentation of SINE's training samples and the image tensor it produces.

The original (aim-uofa/SINE ``sine/data/dataset.py`` l.128-157, ``build_augmentation``) applies
detectron2's ``RandomFlip`` (horizontal, p = 0.5), ``ResizeScale(0.1, 2.0, 896, 896)`` and
``FixedSizeCrop(896, pad=False)`` to every reference and target image, independently. Here the
same three transforms are drawn from an explicit ``numpy.random.RandomState`` instead of numpy's
global generator, with the same draws in the same order (flip ``uniform() < 0.5``, scale
``uniform(min, max)``, crop offset ``uniform(0, 1)``), and returned as detectron2 ``Transform``
objects, which then resize images with PIL bilinear and masks / panoptic PNGs with nearest, and
crop polygons with shapely, as the original's do:

* scale: ``s = min(896 r / h, 896 r / w)``, new size ``round(h s), round(w s)``;
* crop: offset ``round(max(size - 896, 0) * u)``, window 896 x 896 (a smaller image stays whole).

``to_model_image``: ``ToTensor`` (/255) then ImageNet mean/std normalisation (RGB), zero-padded
bottom/right to the working size (zeros in normalised space), as the original's
``dino_transform`` + ``pad_img`` (``sine/data/coco.py`` l.118-159).
"""

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FLIPS", "draw_transforms", "to_model_image",
           "pad_to"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLIPS = ("horizontal", "vertical", "none")


def draw_transforms(rng: np.random.RandomState, height: int, width: int, image_size: int = 896,
                    min_scale: float = 0.1, max_scale: float = 2.0,
                    flip: str = "horizontal") -> Tuple[T.TransformList, Tuple[int, int]]:
    """Draw flip, large-scale-jitter resize and crop for an image of ``height`` x ``width``.

    Args:
        rng: the generator (one ``uniform`` draw for the flip unless ``flip`` is "none", one for
            the scale, one for the crop).
        image_size: the square working size the image is scaled into and cropped to.
        min_scale, max_scale: range of the scale factor of ``image_size``.
        flip: "horizontal", "vertical" or "none" (the original's ``--random_flip``).

    Returns:
        (the transforms, the (h, w) of the augmented image).
    """
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
    tfms = []
    if flip != "none":
        if rng.uniform(0.0, 1.0) < 0.5:
            tfms.append(T.HFlipTransform(width) if flip == "horizontal"
                        else T.VFlipTransform(height))
        else:
            tfms.append(T.NoOpTransform())
    scale = rng.uniform(min_scale, max_scale)
    factor = min(image_size * scale / height, image_size * scale / width)
    new_h, new_w = (int(v) for v in np.round(np.multiply((height, width), factor)).astype(int))
    tfms.append(T.ResizeTransform(height, width, new_h, new_w, Image.BILINEAR))
    offset = np.round(np.maximum(np.subtract((new_h, new_w), image_size), 0)
                      * rng.uniform(0.0, 1.0)).astype(int)
    tfms.append(T.CropTransform(int(offset[1]), int(offset[0]), image_size, image_size, new_w,
                                new_h))
    return T.TransformList(tfms), (min(new_h, image_size), min(new_w, image_size))


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` bottom/right to ``size`` x ``size``."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"pad_to: {tuple(x.shape)} is larger than {size} x {size}")
    return F.pad(x, (0, size - w, 0, size - h))


def to_model_image(image: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(h, w, 3) uint8 RGB -> (3, size, size) float32: /255, normalised, zero-padded."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return pad_to(x, size)
