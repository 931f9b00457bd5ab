# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's per-task input rules on uint8 images and masks (docs/SINE.md section 5).

Each task of the original resizes differently before the shared steps (``to_unit`` /255,
``normalize`` with the ImageNet mean/std, ``pad`` with zeros at the bottom and right):

- FSS (aim-uofa/SINE tools/eval_fss.py l.24-89, inference_fss/data/dataset.py l.29-32,
  inference_fss/data/coco.py l.37-46): image square-resized to IMAGE_SIZE with PIL bilinear
  (antialiased), aspect ratio not kept; masks with legacy nearest (``F.interpolate`` "nearest");
- FSIS (inference_fsod/fsdet/data/dataset_mapper_fsl.py l.161-250, detectron2's
  ``ResizeShortestEdge`` test augmentation): shorter side to MIN_SIZE_TEST, longer side capped at
  MAX_SIZE_TEST, rounded ``int(x + 0.5)``, PIL bilinear on uint8; channels in INPUT.FORMAT order
  (the original feeds BGR to DINOv2 with the RGB mean/std); polygon masks rasterised at the
  resized size;
- VOS (tools/eval_vos.py l.60-134, inference_vos/inference/data/video_reader_nonorm.py
  l.41-91): frame to [0, 1], shorter side to FRAME_SIZE (bilinear on the tensor, no
  antialias: torchvision 0.15's tensor default, the original's pinned version), then the longer
  side to IMAGE_SIZE (``vos_model_resize``), masks nearest.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_unit", "normalize", "pad", "fss_image",
           "fss_mask", "fsis_size", "fsis_image", "fsis_mask", "fsis_polygon_mask",
           "vos_frame", "vos_frame_mask", "vos_model_size", "vos_model_resize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"SINE {what}: expected a uint8 (H, W, 3) array, got {image.dtype} "
                         f"{image.shape}")
    return np.ascontiguousarray(image)


def to_unit(image) -> torch.Tensor:
    """uint8 (H, W, 3) array or (3, H, W) tensor in [0, 255] -> float32 (3, H, W) in [0, 1],
    as torchvision's ``ToTensor`` (``x.float() / 255``)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(_check_image(image)).permute(2, 0, 1)
    return image.to(torch.float32).div(255)


def normalize(unit: torch.Tensor, mean: Optional[torch.Tensor] = None,
              std: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> ``(x - mean) / std`` as torchvision's ``Normalize``; mean
    and std (3, 1, 1) default to the ImageNet values."""
    if mean is None:
        mean = torch.tensor(IMAGENET_MEAN, dtype=unit.dtype, device=unit.device).view(3, 1, 1)
    if std is None:
        std = torch.tensor(IMAGENET_STD, dtype=unit.dtype, device=unit.device).view(3, 1, 1)
    return (unit - mean) / std


def pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dims at the bottom and right to ``size`` x ``size``."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"SINE input {h}x{w} is larger than MODEL.SINE.PAD_SIZE {size}")
    return F.pad(x, (0, size - w, 0, size - h))


# -- FSS -----------------------------------------------------------------------------------------
def fss_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (size, size, 3): PIL bilinear, aspect ratio not kept."""
    from PIL import Image

    return np.array(Image.fromarray(_check_image(image)).resize((size, size), Image.BILINEAR))


def fss_mask(mask, size: int) -> torch.Tensor:
    """(H, W) mask (non-zero = foreground) -> float32 (size, size) {0, 1}, legacy nearest
    (source pixel floor(dst * in / out))."""
    m = (torch.as_tensor(np.asarray(mask)) != 0).to(torch.float32)
    return F.interpolate(m[None, None], size=(size, size), mode="nearest")[0, 0]


# -- FSIS ----------------------------------------------------------------------------------------
def fsis_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output (h, w) for one short-edge length."""
    from detectron2.data.transforms import ResizeShortestEdge

    return tuple(ResizeShortestEdge.get_output_shape(height, width, min_size, max_size))


def fsis_image(image: np.ndarray, min_size: int, max_size: int, fmt: str = "BGR") -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (h, w, 3) resized as detectron2's test augmentation (PIL
    bilinear), channels in ``fmt`` ("RGB" or "BGR", detectron2's INPUT.FORMAT)."""
    from detectron2.data.transforms import ResizeTransform
    from PIL import Image

    image = _check_image(image)
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be RGB or BGR for SINE, got {fmt!r}")
    if fmt == "BGR":
        image = np.ascontiguousarray(image[:, :, ::-1])
    h, w = image.shape[:2]
    new_h, new_w = fsis_size(h, w, min_size, max_size)
    return np.array(ResizeTransform(h, w, new_h, new_w, Image.BILINEAR).apply_image(image))


def fsis_mask(mask, size: Tuple[int, int]) -> torch.Tensor:
    """A bitmask (H, W) at the original size -> float32 (h, w) {0, 1} at the resized ``size``,
    PIL nearest (detectron2's ``apply_segmentation``), for supports given as bitmasks."""
    from detectron2.data.transforms import ResizeTransform
    from PIL import Image

    m = (np.asarray(mask) != 0).astype(np.uint8)
    out = ResizeTransform(m.shape[0], m.shape[1], size[0], size[1], Image.NEAREST)
    return torch.from_numpy(out.apply_segmentation(m).astype(np.float32))


def fsis_polygon_mask(polygons: Sequence[Sequence[float]], orig: Tuple[int, int],
                      size: Tuple[int, int]) -> torch.Tensor:
    """COCO polygons of one instance in original pixel coordinates -> float32 (h, w) {0, 1}
    rasterised at the resized ``size`` (coordinates scaled by new/old size, then pycocotools,
    union of the parts), as the original mapper does (dataset_mapper_fsl.py l.25-39, l.189-195).
    """
    from detectron2.data.transforms import ResizeTransform
    from pycocotools import mask as coco_mask

    resize = ResizeTransform(orig[0], orig[1], size[0], size[1])
    scaled = resize.apply_polygons([np.asarray(p, dtype=np.float64).reshape(-1, 2)
                                    for p in polygons])
    rles = coco_mask.frPyObjects([p.reshape(-1) for p in scaled], size[0], size[1])
    m = coco_mask.decode(rles)
    if m.ndim == 3:
        m = m.any(axis=2)
    return torch.from_numpy(m.astype(np.float32))


# -- VOS -----------------------------------------------------------------------------------------
def vos_frame(frame: np.ndarray, frame_size: int) -> torch.Tensor:
    """uint8 (H, W, 3) RGB frame -> float32 (3, h, w) in [0, 1], shorter side ``frame_size``
    (torchvision ``resize`` on the tensor, bilinear, no antialias; longer side
    ``int(frame_size * long / short)``)."""
    from torchvision.transforms.functional import resize

    return resize(to_unit(frame), [frame_size], antialias=False)


def vos_frame_mask(mask: torch.Tensor, frame_size: int) -> torch.Tensor:
    """(n, H, W) masks at the original frame size -> (n, h, w) nearest at the frame size
    (``(int(H / min * size), int(W / min * size))``, eval_vos's ``resize_mask``)."""
    h, w = mask.shape[-2:]
    short = min(h, w)
    size = (int(h / short * frame_size), int(w / short * frame_size))
    return F.interpolate(mask[None].float(), size, mode="nearest")[0]


def vos_model_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """eval_vos's ``resize``: the longer side to ``size``, the other ``int(size / aspect)``
    (landscape) or ``int(size * aspect)`` (portrait or square), aspect = width / height."""
    aspect = width / height
    if aspect > 1:
        return int(size / aspect), size
    return size, int(size * aspect)


def vos_model_resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h', w') at ``vos_model_size`` with ``F.interpolate`` (bilinear
    align_corners False, no antialias; "nearest" for masks)."""
    return F.interpolate(x, size=vos_model_size(x.shape[-2], x.shape[-1], size), mode=mode)
