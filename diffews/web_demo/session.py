# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What the web demo does with one press of its button, without any Gradio: read the uploads,
encode the supports (once per distinct support set), segment the queries with
``DiffewSPredictor``, draw the results and zip the masks.

The page (``diffews.web_demo.app``) is a view over ``WebDemoSession.run``; every input error is a
``DemoInputError`` whose one-line message the page shows.
"""

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..modeling.support_set import SupportSet
from ..predictor import DiffewSPredictor, list_images
from ..utils.image import ImageReadError, as_rgb, read_image, read_mask
from ..utils.overlay import PRED_COLOR, draw_contour, overlay_mask

logger = logging.getLogger(__name__)

__all__ = ["DemoInputError", "SupportInput", "QueryResult", "RunOutput", "WebDemoSession",
           "parse_support", "MAX_SUPPORTS"]

MAX_SUPPORTS = 5


class DemoInputError(ValueError):
    """An upload or field of the page is wrong; the message names it and says what to do."""


@dataclass
class SupportInput:
    """One annotated support. image: (H, W, 3) uint8; mask: (H, W) bool; source: where the
    mask came from ("mask file NAME" or "painted")."""

    image: np.ndarray
    mask: np.ndarray
    source: str


@dataclass
class QueryResult:
    """One segmented query: image (H, W, 3) uint8, mask (H, W) bool at the query's size,
    pred_image (S, S, 3) uint8 the decoded prediction, score in [0, 1], seconds of model time."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    pred_image: np.ndarray
    score: float
    seconds: float


@dataclass
class RunOutput:
    results: List[QueryResult]
    supports: List[SupportInput]
    support_key: str
    support_reused: bool
    support_seconds: float
    zip_path: str

    def status(self) -> str:
        """The page's one-paragraph summary (Markdown)."""
        k = len(self.supports)
        if self.support_reused:
            sup = (f"**Support set reused** (same {k} support(s) as an earlier run, key "
                   f"`{self.support_key}`): no support was encoded again.")
        else:
            sup = (f"**Support set encoded**: {k} support(s) in {self.support_seconds:.2f} s "
                   f"(key `{self.support_key}`), cached for the next runs.")
        n = len(self.results)
        total = sum(r.seconds for r in self.results)
        return (f"{sup} {n} quer{'y' if n == 1 else 'ies'} segmented in {total:.2f} s "
                f"({total / max(n, 1):.3f} s per query).")


def _name(path: Optional[str]) -> str:
    return os.path.basename(path) if path else "?"


def _read(reader: Callable[[str], np.ndarray], path: str, what: str, shown: str) -> np.ndarray:
    """``reader(path)`` with a short message naming ``shown`` (an upload's file name, not the
    server's temporary path)."""
    try:
        return reader(path)
    except ImageReadError as e:
        raise DemoInputError(f"{what} {shown}: not a readable image; give a PNG or JPEG "
                             "file") from e


def parse_support(index: int, editor: Optional[Dict], mask_file: Optional[str]
                  ) -> Optional[SupportInput]:
    """One support slot of the page: the image (with any painting) and an optional mask file.

    Args:
        index: the slot number shown in the page (1-based), for messages.
        editor: the ImageEditor's value, ``{"background": (H, W, 3|4) uint8 or None, "layers":
            [(H, W, 4) uint8, ...], "composite": ...}``, or None. Painted pixels are those of
            non-zero alpha in any layer.
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
        mask = _read(read_mask, mask_file, f"{what}: mask file", _name(mask_file))
        source = f"mask file {_name(mask_file)}"
        if mask.shape != image.shape[:2]:
            raise DemoInputError(
                f"{what}: mask file {_name(mask_file)} is {mask.shape[1]}x{mask.shape[0]} but "
                f"its image is {image.shape[1]}x{image.shape[0]}; upload the mask of this image")
        if not mask.any():
            raise DemoInputError(f"{what}: mask file {_name(mask_file)} has no foreground pixel "
                                 "(non-zero = foreground)")
        return SupportInput(image, mask, source)
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
    """A hash of the supports' pixels and masks, in order (the support-set cache's key)."""
    h = hashlib.sha256()
    for s in supports:
        h.update(np.asarray(s.image.shape, np.int64).tobytes())
        h.update(np.ascontiguousarray(s.image).tobytes())
        h.update(np.packbits(s.mask).tobytes())
    return h.hexdigest()[:16]


class WebDemoSession:
    """The demo's state: the predictor, a small LRU cache of encoded support sets, and the
    folder the mask zips are written to. ``run`` is thread-safe (one run at a time).

    Args:
        predictor: the loaded ``DiffewSPredictor``.
        batch_size: queries per model pass (1: each query's time is its own).
        cache_size: support sets kept encoded (least recently used dropped first).
        max_queries: most queries per run (a folder with more is an error).
        allow_folders: whether a folder path on the server may be given (off with ``--share``).
        output_dir: where the zips go (a new temporary folder by default); the last
            ``keep_runs`` runs are kept.
    """

    def __init__(self, predictor: DiffewSPredictor, batch_size: int = 1, cache_size: int = 4,
                 max_queries: int = 200, allow_folders: bool = True,
                 output_dir: Optional[str] = None, keep_runs: int = 20):
        if min(batch_size, cache_size, max_queries, keep_runs) < 1:
            raise ValueError("batch_size, cache_size, max_queries and keep_runs must be >= 1")
        self.predictor = predictor
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.max_queries = max_queries
        self.allow_folders = allow_folders
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="diffews_web_demo_")
        self.keep_runs = keep_runs
        self._cache: "OrderedDict[str, SupportSet]" = OrderedDict()
        self._lock = threading.Lock()
        self._runs = 0

    # -- inputs --------------------------------------------------------------------------------
    def read_supports(self, editors: Sequence[Optional[Dict]],
                      mask_files: Sequence[Optional[str]]) -> List[SupportInput]:
        if len(editors) != len(mask_files) or len(editors) > MAX_SUPPORTS:
            raise DemoInputError(f"at most {MAX_SUPPORTS} supports, each an image and a mask")
        supports = [parse_support(i + 1, e, m) for i, (e, m) in enumerate(zip(editors, mask_files))]
        supports = [s for s in supports if s is not None]
        if not supports:
            raise DemoInputError("no support: upload at least one support image and give it a "
                                 "mask (upload a mask file or paint the object)")
        return supports

    def read_queries(self, files: Optional[Sequence[str]], folder: Optional[str]
                     ) -> List[Tuple[str, np.ndarray]]:
        """The uploaded query files, then the images of ``folder``, as (file name, (H, W, 3)
        uint8) pairs. Errors name an upload by its file name and a folder image by its path."""
        uploads = [(p, _name(p)) for p in files or []]
        folder = (folder or "").strip()
        found = []
        if folder:
            if not self.allow_folders:
                raise DemoInputError("folders on the server are disabled on a shared demo; "
                                     "upload the query images instead")
            if not os.path.isdir(folder):
                raise DemoInputError(f"{folder}: no such folder on the server")
            found = [(p, p) for p in list_images([folder])]
        queries = uploads + found
        if not queries:
            raise DemoInputError("no query: add query images or a folder path on the server")
        if len(queries) > self.max_queries:
            raise DemoInputError(f"{len(queries)} queries; the web demo segments at most "
                                 f"{self.max_queries} per run (use tools/demo.py for more)")
        return [(_name(p), _read(read_image, p, "query", shown)) for p, shown in queries]

    # -- supports ------------------------------------------------------------------------------
    def support_set(self, supports: Sequence[SupportInput]) -> Tuple[SupportSet, str, bool, float]:
        """The encoded set of these supports, from the cache when the same pixels and masks were
        encoded before. Returns (set, key, reused, seconds spent encoding)."""
        key = support_key(supports)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], key, True, 0.0
        start = time.perf_counter()
        encoded = self.predictor.encode_supports([s.image for s in supports],
                                                 [s.mask for s in supports])
        seconds = time.perf_counter() - start
        self._cache[key] = encoded
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        logger.info("encoded %d support(s) in %.2f s (key %s)", len(supports), seconds, key)
        return encoded, key, False, seconds

    # -- one run -------------------------------------------------------------------------------
    def run(self, editors: Sequence[Optional[Dict]], mask_files: Sequence[Optional[str]],
            query_files: Optional[Sequence[str]], folder: Optional[str] = None,
            progress: Optional[Callable[[int, int], None]] = None) -> RunOutput:
        """Read the uploads, segment every query, write the zip of masks.

        Args:
            editors, mask_files: one entry per support slot (see ``parse_support``).
            query_files: paths of uploaded query images.
            folder: a folder on the server whose images are queries too.
            progress: called with (queries done, total) after each model pass.
        """
        supports = self.read_supports(editors, mask_files)
        queries = self.read_queries(query_files, folder)
        with self._lock:
            encoded, key, reused, support_seconds = self.support_set(supports)
            results: List[QueryResult] = []
            for start in range(0, len(queries), self.batch_size):
                chunk = queries[start:start + self.batch_size]
                t0 = time.perf_counter()
                preds = self.predictor.predict([im for _, im in chunk], encoded,
                                               batch_size=len(chunk))
                seconds = (time.perf_counter() - t0) / len(chunk)
                for (name, image), p in zip(chunk, preds):
                    results.append(QueryResult(name, image, p["mask"], p["pred_image"],
                                               p["score"], seconds))
                if progress is not None:
                    progress(len(results), len(queries))
            zip_path = self._write_zip(results)
        return RunOutput(results, supports, key, reused, support_seconds, zip_path)

    def _write_zip(self, results: Sequence[QueryResult]) -> str:
        """``masks.zip`` of ``<query stem>_mask.png`` files (0/255, the query's size), in a new
        run folder (written under a temporary name, then renamed)."""
        self._runs += 1
        run_dir = os.path.join(self.output_dir, f"run{self._runs:05d}")
        os.makedirs(run_dir, exist_ok=True)
        self._prune()
        seen = set()
        tmp = os.path.join(run_dir, ".masks.zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for r in results:
                stem = os.path.splitext(r.name)[0]
                name, i = f"{stem}_mask.png", 1
                while name in seen:  # two queries of the same file name
                    i += 1
                    name = f"{stem}_{i}_mask.png"
                seen.add(name)
                buf = _png_bytes(r.mask.astype(np.uint8) * 255)
                zf.writestr(name, buf)
        path = os.path.join(run_dir, "masks.zip")
        os.replace(tmp, path)
        return path

    def _prune(self) -> None:
        runs = sorted(d for d in os.listdir(self.output_dir) if d.startswith("run"))
        for d in runs[:-self.keep_runs]:
            shutil.rmtree(os.path.join(self.output_dir, d), ignore_errors=True)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def result_panel(result: QueryResult, height: int = 256) -> np.ndarray:
    """(height, W, 3) uint8: the query with its mask tinted and outlined, beside the decoded
    prediction; small images are enlarged with nearest so that mask edges stay sharp."""
    shown = draw_contour(overlay_mask(result.image, result.mask, PRED_COLOR), result.mask,
                         (255, 255, 255))
    panels = []
    for im in (shown, result.pred_image):
        h, w = im.shape[:2]
        resample = Image.NEAREST if h < height else Image.BILINEAR
        panels.append(Image.fromarray(im).resize((max(1, round(w * height / h)), height),
                                                 resample))
    gap = 6
    canvas = Image.new("RGB", (sum(p.width for p in panels) + gap, height), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (panels[0].width + gap, 0))
    return np.asarray(canvas)

