# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Writing VOS results as the benchmarks' scorers and servers read them: palette PNGs with the
DAVIS palette (``<out>/<video>/<frame>.png`` for DAVIS, ``<out>/Annotations/<video>/<frame>.png``
for YouTube-VOS), only the frames a record's ``save_frames`` lists, and the YouTube-VOS submission
zip. Every file is written atomically (``utils.atomic``). Records: ``vos.py``.
"""

import os
import zipfile
from typing import Dict, Iterable, List, Optional

import numpy as np
from PIL import Image

from ...utils.atomic import atomic_open, atomic_path

__all__ = ["DAVIS_PALETTE", "save_label_png", "result_file", "write_result",
           "missing_results", "zip_ytvos_submission"]


def _voc_palette() -> np.ndarray:
    """(256, 3) uint8 PASCAL VOC colour map, the palette of DAVIS and YouTube-VOS annotations:
    the bits of index i are spread over the high bits of R, G, B (i's bit 3k+c -> bit 7-k of c)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for k in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - k)
            c >>= 3
        pal[i] = rgb
    return pal


DAVIS_PALETTE = _voc_palette()


def save_label_png(label_map: np.ndarray, path: str) -> None:
    """Write an (H, W) object-id map as a palette PNG with the DAVIS palette, atomically."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"{path}: a label map must be HxW, got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(f"{path}: object ids must be in 0..255, got {label_map.min()}.."
                         f"{label_map.max()}")
    img = Image.fromarray(label_map.astype(np.uint8))  # mode "L"; the palette makes it "P"
    img.putpalette(DAVIS_PALETTE.flatten().tolist())
    with atomic_open(path, "wb") as f:  # a killed run never leaves a truncated result PNG
        img.save(f, format="PNG")


def result_file(out_dir: str, layout: str, video: str, frame: str) -> str:
    """The result PNG of a frame: ``<out>/<video>/<frame>.png`` (DAVIS) or
    ``<out>/Annotations/<video>/<frame>.png`` (YouTube-VOS)."""
    if layout == "davis":
        return os.path.join(out_dir, video, frame + ".png")
    if layout == "ytvos":
        return os.path.join(out_dir, "Annotations", video, frame + ".png")
    raise ValueError(f"results layout must be 'davis' or 'ytvos', got {layout!r}")


def write_result(record: Dict, index: int, label_map: np.ndarray, out_dir: str,
                 layout: str) -> Optional[str]:
    """Write frame ``index``'s label map if the protocol keeps it; returns the path or None."""
    if index not in set(record["save_frames"]):
        return None
    path = result_file(out_dir, layout, record["video"], record["frames"][index])
    save_label_png(label_map, path)
    return path


def missing_results(records: Iterable[Dict], out_dir: str, layout: str) -> List[str]:
    """Result files the protocol needs that are not in ``out_dir``."""
    return [p for r in records for t in r["save_frames"]
            for p in [result_file(out_dir, layout, r["video"], r["frames"][t])]
            if not os.path.isfile(p)]


def zip_ytvos_submission(out_dir: str, records: Optional[List[Dict]] = None,
                         zip_path: Optional[str] = None) -> str:
    """Zip ``<out_dir>/Annotations`` as the YouTube-VOS server expects (entries
    ``Annotations/<video>/<frame>.png``), atomically; with ``records``, first check that every
    required frame is there. Returns the zip path (default ``<out_dir>/submission.zip``)."""
    ann = os.path.join(out_dir, "Annotations")
    if not os.path.isdir(ann):
        raise FileNotFoundError(f"{ann}: no results to zip")
    if records is not None:
        missing = missing_results(records, out_dir, "ytvos")
        if missing:
            raise FileNotFoundError(f"{len(missing)} result files missing, e.g. {missing[0]}")
    zip_path = zip_path or os.path.join(out_dir, "submission.zip")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for video in sorted(os.listdir(ann)):
            for name in sorted(os.listdir(os.path.join(ann, video))):
                if name.endswith(".png"):
                    zf.write(os.path.join(ann, video, name), f"Annotations/{video}/{name}")
    return zip_path
