# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What the web demo does with one press of its button, without any Gradio: read the uploads
(within ``InputLimits``), encode the supports (once per distinct support set, in a cache bounded
by bytes), segment the queries with the ``Predictor``, draw the results and zip the masks.

The page (``diffews.web_demo.app``) is a view over ``WebDemoSession.run``; every input error is a
``DemoInputError`` whose one-line message the page shows.
"""

import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..predictor import Predictor
from ..utils.atomic import atomic_open
from .access import FolderPolicy
from .cache import SupportCache, default_cache_bytes
from .inputs import (MAX_SUPPORTS, DemoInputError, InputLimits, SupportInput, open_checked,
                     parse_support, read_rgb, support_key)
from .results import QueryResult, RunOutput, png_bytes, result_panel

logger = logging.getLogger(__name__)

__all__ = ["WebDemoSession", "demo_runs", "RUN_MARKER"]


RUN_MARKER = ".diffews_web_demo_run"  # in every run folder the demo writes, and only there


def _name(path: Optional[str]) -> str:
    return os.path.basename(path) if path else "?"


def demo_runs(output_dir: str) -> List[str]:
    """The run folders of ``output_dir`` that the demo wrote (those holding ``RUN_MARKER``; not
    symlinks), oldest first (by the marker's time, then name)."""
    runs = []
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(output_dir, name)
        marker = os.path.join(path, RUN_MARKER)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            stamp = os.lstat(marker).st_mtime_ns
        except OSError:  # no marker: not ours
            continue
        runs.append((stamp, name, path))
    return [path for _, _, path in sorted(runs)]


class WebDemoSession:
    """The demo's state: the predictor, the cache of encoded support sets, the folder policy and
    the folder the mask zips are written to. ``run`` is thread-safe (one model call at a time).

    Args:
        predictor: the loaded ``Predictor`` (``build_predictor``).
        batch_size: queries per model pass.
        cache_bytes: most bytes of encoded support sets kept (each set's ``nbytes``; least
            recently used dropped first); None: ``default_cache_bytes`` of the predictor's device.
        max_queries: most queries per run (a folder with more is an error).
        allowed_roots: server folders (and their subtrees) whose images may be queries; none:
            the folder field is off.
        limits: pixels and bytes one image may have.
        output_dir: where the zips go (a new temporary folder by default), one folder per run
            marked as the demo's (``RUN_MARKER``); the last ``keep_runs`` of them are kept, and
            nothing else in the folder is touched.
    """

    def __init__(self, predictor: Predictor, batch_size: int = 4,
                 cache_bytes: Optional[int] = None, max_queries: int = 200,
                 allowed_roots: Sequence[str] = (), limits: InputLimits = InputLimits(),
                 output_dir: Optional[str] = None, keep_runs: int = 20):
        if min(batch_size, max_queries, keep_runs) < 1:
            raise ValueError("batch_size, max_queries and keep_runs must be >= 1")
        self.predictor = predictor
        self.batch_size = batch_size
        self.cache = SupportCache(cache_bytes if cache_bytes is not None
                                  else default_cache_bytes(predictor.device))
        self.max_queries = max_queries
        self.folders = FolderPolicy(allowed_roots)
        self.limits = limits
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="diffews_web_demo_")
        self.keep_runs = keep_runs
        self._lock = threading.Lock()
        self._runs = 0

    @property
    def allow_folders(self) -> bool:
        return self.folders.enabled

    # -- inputs --------------------------------------------------------------------------------
    def read_supports(self, editors: Sequence[Optional[Dict]],
                      mask_files: Sequence[Optional[str]]) -> List[SupportInput]:
        if len(editors) != len(mask_files) or len(editors) > MAX_SUPPORTS:
            raise DemoInputError(f"at most {MAX_SUPPORTS} supports, each an image and a mask")
        supports = [parse_support(i + 1, e, m, self.limits)
                    for i, (e, m) in enumerate(zip(editors, mask_files))]
        supports = [s for s in supports if s is not None]
        if not supports:
            raise DemoInputError("no support: upload at least one support image and give it a "
                                 "mask (upload a mask file or paint the object)")
        return supports

    def read_queries(self, files: Optional[Sequence[str]], folder: Optional[str]
                     ) -> List[Tuple[str, str, str]]:
        """The uploaded query files, then the images of ``folder``, as (file name, path, name in
        messages) triples. Every header is checked here (pixels, bytes), so that a bad file stops
        the run before the model does any work; pixels are decoded later, one batch at a time."""
        queries = [(_name(p), p, f"query {_name(p)}") for p in files or []]
        folder = (folder or "").strip()
        if folder:
            if not self.folders.enabled:
                raise DemoInputError("folders on the server are off on this demo; upload the "
                                     "query images instead")
            # messages name the path as typed, never where its symlinks lead
            queries += [(name, path, f"query {os.path.join(folder, name)}")
                        for name, path in self.folders.images(folder)]
        if not queries:
            raise DemoInputError("no query: add query images or a folder path on the server")
        if len(queries) > self.max_queries:
            raise DemoInputError(f"{len(queries)} queries; the web demo segments at most "
                                 f"{self.max_queries} per run (use tools/demo.py for more)")
        for _, path, what in queries:
            open_checked(path, what, self.limits).close()
        return queries

    # -- supports ------------------------------------------------------------------------------
    def support_set(self, supports: Sequence[SupportInput]) -> Tuple[object, Dict]:
        """The encoded set of these supports, from the cache when the same pixels and masks were
        encoded before. Returns (set, info) with info's keys key, state ("reused", "encoded",
        "re-encoded"), seconds (spent encoding), evicted (sets dropped now), cached."""
        key = support_key(supports)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, dict(key=key, state="reused", seconds=0.0, evicted=0, cached=True)
        state = "re-encoded" if self.cache.was_evicted(key) else "encoded"
        start = time.perf_counter()
        encoded = self.predictor.encode_supports([s.image for s in supports],
                                                 [s.mask for s in supports])
        seconds = time.perf_counter() - start
        dropped = self.cache.put(key, encoded)
        kept = key in self.cache
        logger.info("%s %d support(s) in %.2f s (key %s, %.1f MiB)%s", state, len(supports),
                    seconds, key[:16], encoded.nbytes / 2**20,
                    "" if kept else ", not cached: larger than the cache")
        return encoded, dict(key=key, state=state, seconds=seconds, cached=kept,
                             evicted=len([d for d in dropped if d != key]))

    # -- one run -------------------------------------------------------------------------------
    def run(self, editors: Sequence[Optional[Dict]], mask_files: Sequence[Optional[str]],
            query_files: Optional[Sequence[str]], folder: Optional[str] = None,
            progress: Optional[Callable[[int, int], None]] = None) -> RunOutput:
        """Read the uploads, segment every query, write the zip of masks.

        Args:
            editors, mask_files: one entry per support slot (see ``parse_support``).
            query_files: paths of uploaded query images.
            folder: a folder on the server whose images are queries too (under the allowed roots).
            progress: called with (queries done, total) after each model pass.
        """
        supports = self.read_supports(editors, mask_files)
        queries = self.read_queries(query_files, folder)
        with self._lock:
            encoded, info = self.support_set(supports)
            shots = len(supports)
            del supports  # the run holds one batch of pixels at a time from here on
            zip_path, results = self._segment(queries, encoded, progress)
        return RunOutput(results, shots, info["key"], info["state"], info["seconds"],
                         encoded.nbytes, info["evicted"], info["cached"], self.cache.max_bytes,
                         zip_path)

    def _segment(self, queries: Sequence[Tuple[str, str, str]], encoded,
                 progress: Optional[Callable[[int, int], None]]
                 ) -> Tuple[str, List[QueryResult]]:
        """Segment ``queries`` batch by batch, each mask written at once into ``masks.zip``
        (``<query stem>_mask.png``, 0/255 at the query's size) of a new run folder; the zip
        appears complete or not at all (``atomic_open``)."""
        run_dir = self._new_run_dir()
        zip_path = os.path.join(run_dir, "masks.zip")
        results: List[QueryResult] = []
        seen = set()
        with atomic_open(zip_path, "wb") as fh, \
                zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for start in range(0, len(queries), self.batch_size):
                chunk = queries[start:start + self.batch_size]
                images = [read_rgb(path, what, self.limits) for _, path, what in chunk]
                t0 = time.perf_counter()
                preds = self.predictor.predict(images, encoded, batch_size=len(chunk))
                seconds = (time.perf_counter() - t0) / len(chunk)
                for (name, _, _), image, p in zip(chunk, images, preds):
                    # True: found; False: judged absent or nothing found (an empty mask);
                    # None: the predictor made no presence decision (the mask as it is)
                    present = p.get("present")
                    mask = p["mask"] if present is not False else np.zeros_like(p["mask"])
                    zf.writestr(self._zip_name(name, seen), png_bytes(mask.astype(np.uint8) * 255))
                    presence = p.get("presence")
                    results.append(QueryResult(
                        name, (image.shape[1], image.shape[0]), float(mask.mean()),
                        float(p["score"]), present, None if presence is None else float(presence),
                        seconds, result_panel(image, mask, p["pred_image"]), p["pred_image"]))
                del images, preds
                if progress is not None:
                    progress(len(results), len(queries))
        return zip_path, results

    @staticmethod
    def _zip_name(name: str, seen: set) -> str:
        stem = os.path.splitext(os.path.basename(name))[0]
        entry, i = f"{stem}_mask.png", 1
        while entry in seen:  # two queries of the same file name
            i += 1
            entry = f"{stem}_{i}_mask.png"
        seen.add(entry)
        return entry

    def _new_run_dir(self) -> str:
        """A new folder ``run-<date>-<time>-<random>`` of ``output_dir`` holding the marker file
        ``RUN_MARKER``; then the oldest marked folders beyond ``keep_runs`` are deleted. Only
        marked folders are ever deleted: a user's own ``run-x/`` in ``--output`` stays."""
        os.makedirs(self.output_dir, exist_ok=True)
        self._runs += 1
        run_dir = tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"),
                                   dir=self.output_dir)
        with open(os.path.join(run_dir, RUN_MARKER), "w") as f:
            f.write(f"written by the DiffewS web demo (pid {os.getpid()}, run {self._runs}); "
                    "the folder is deleted when newer runs replace it\n")
        for old in demo_runs(self.output_dir)[:-self.keep_runs]:
            shutil.rmtree(old, ignore_errors=True)
        return run_dir
