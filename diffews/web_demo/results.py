# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What one run gives back to the page: a small record per query (its picture is drawn at once,
so that a run of many large queries does not hold their pixels), and the run's summary."""

import io
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from ..utils.overlay import PRED_COLOR, draw_contour, overlay_mask

__all__ = ["QueryResult", "RunOutput", "result_panel", "fit_size", "png_bytes", "PANEL_HEIGHT",
           "PANEL_MAX_WIDTH"]

PANEL_HEIGHT = 256  # the pictures of the page's results
PANEL_MAX_WIDTH = 1024  # each of the two pictures of a result: at most 4:1 shown at full height


@dataclass
class QueryResult:
    """One segmented query.

    name: the upload's file name (or the server path of a folder image); size: (W, H);
    fraction: foreground share of the mask; score: the prediction's score in [0, 1];
    present: the predictor's presence decision: True found, False "not found" (the mask is
    empty), None no decision was made (the page shows "—");
    presence: its presence value when it gives one; seconds: model time of this query;
    panel: the picture the page shows (``result_panel``); pred_image: (S, S, 3) uint8, the
    decoded prediction.
    """

    name: str
    size: Tuple[int, int]
    fraction: float
    score: float
    present: Optional[bool]
    presence: Optional[float]
    seconds: float
    panel: np.ndarray
    pred_image: np.ndarray


@dataclass
class RunOutput:
    """One run. support_state: "reused", "encoded" (new) or "re-encoded" (it had been evicted);
    evicted: sets dropped from the cache to make room for this one; cached: whether this set is
    kept (False: larger than the whole cache)."""

    results: List[QueryResult]
    shots: int
    support_key: str
    support_state: str
    support_seconds: float
    support_bytes: int
    evicted: int
    cached: bool
    cache_limit: int
    zip_path: str

    @property
    def support_reused(self) -> bool:
        return self.support_state == "reused"

    def status(self) -> str:
        """The page's one-paragraph summary (Markdown)."""
        k, key = self.shots, self.support_key[:16]
        mib, limit = self.support_bytes / 2**20, self.cache_limit / 2**20
        if self.support_state == "reused":
            sup = (f"**Support set reused** (same {k} support(s) as an earlier run, key "
                   f"`{key}`): no support was encoded again.")
        elif self.support_state == "re-encoded":
            sup = (f"**Support set re-encoded**: {k} support(s) in {self.support_seconds:.2f} s "
                   f"(key `{key}`, {mib:.1f} MiB): it had been evicted from the cache "
                   f"({limit:.0f} MiB) since its last use.")
        else:
            sup = (f"**Support set encoded**: {k} support(s) in {self.support_seconds:.2f} s "
                   f"(key `{key}`, {mib:.1f} MiB)" +
                   (", cached for the next runs." if self.cached else "."))
        if not self.cached:
            sup += (f" Not cached: {mib:.1f} MiB is more than the whole cache ({limit:.0f} MiB, "
                    "--cache-mb).")
        if self.evicted:
            sup += (f" {self.evicted} older set(s) evicted from the cache ({limit:.0f} MiB) to "
                    "make room.")
        n = len(self.results)
        total = sum(r.seconds for r in self.results)
        absent = sum(r.present is False for r in self.results)
        found = f" Not found in {absent} of them (empty masks)." if absent else ""
        return (f"{sup} {n} quer{'y' if n == 1 else 'ies'} segmented in {total:.2f} s "
                f"({total / max(n, 1):.3f} s per query).{found}")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def result_panel(image: np.ndarray, mask: np.ndarray, pred_image: np.ndarray,
                 height: int = PANEL_HEIGHT, max_width: int = PANEL_MAX_WIDTH) -> np.ndarray:
    """The query with its mask tinted and outlined, beside the decoded prediction.

    Each of the two pictures is scaled, aspect ratio kept, to fit a box of ``height`` x
    ``max_width`` (so a 400 x 1 query is a 1024 x 3 strip, not 102,400 x 256) with each side at
    least 1 pixel; small pictures are enlarged with nearest so that mask edges stay sharp, large
    ones are shrunk before drawing (a 40-megapixel query is not overlaid at full size).

    Args:
        image: (H, W, 3) uint8 query; mask: (H, W) bool; pred_image: (S, S, 3) uint8.
    Returns:
        (height, W', 3) uint8 with W' <= 2 * max_width + 6, white where a picture is smaller
        than the box.
    """
    shown_size = fit_size(image.shape[:2], height, max_width)
    if shown_size[0] < image.shape[1] or shown_size[1] < image.shape[0]:
        image = np.asarray(Image.fromarray(image).resize(shown_size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shown_size,
                                                                             Image.NEAREST)) > 0
    shown = draw_contour(overlay_mask(image, mask, PRED_COLOR), mask, (255, 255, 255))
    panels = []
    for im in (shown, pred_image):
        size = fit_size(im.shape[:2], height, max_width)
        enlarged = size[0] >= im.shape[1] and size[1] >= im.shape[0]
        resample = Image.NEAREST if enlarged else Image.BILINEAR
        pic = Image.fromarray(im)
        panels.append(pic if pic.size == size else pic.resize(size, resample))
    gap = 6
    canvas = Image.new("RGB", (sum(p.width for p in panels) + gap, height), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (panels[0].width + gap, 0))
    return np.asarray(canvas)


def fit_size(hw: Tuple[int, int], height: int, max_width: int) -> Tuple[int, int]:
    """(width, height) of an (h, w) picture scaled to fit ``height`` x ``max_width``, aspect ratio
    kept, each side rounded and at least 1."""
    h, w = hw
    scale = min(height / h, max_width / w)
    return max(1, min(max_width, round(w * scale))), max(1, min(height, round(h * scale)))
