# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Resumable benchmark runs: ``run_fss.py``, ``run_fsod.py`` and ``run_vos.py`` on the journal of
``diffews/utils/journal.py``.

Each runner cuts its work into units whose result depends only on the unit's own inputs (FSS: a
chunk of a fold's episodes, in whole batches; FSOD: a shard of a seed's test images; VOS: one
sequence) and writes each finished unit as one atomic shard of ``OUTPUT/journal/`` (FSOD: of each
seed's folder). Started again with the same command, a runner does only the units without a
shard and computes its final numbers from all shards, read in key order: the same numbers as an
uninterrupted run's. Several processes (detectron2 ``launch``) split the pending units
rank::world; the main process creates the journal, the others attach after a barrier.

The fingerprint of a command (``run_fingerprint``, the one builder every runner uses) is the config
without what cannot change a result (``config_fingerprint``: ``OUTPUT_DIR``, ``DATALOADER``
(workers, and the bad-data policy, which decides whether a run stops, not what a finished unit
holds), the device's index, ``TEST.FSOD.SUPPORT_DIR``, a cache whose sets are checked against the
model anyway, and the paths of the weights), the identity of the weights and of the other files
the model reads (``files_identity``; for DiffewS ``PRETRAINED``'s UNet and VAE), and each
runner's identity of its data (episodes, support split, test images, dataset, supports). Another
command on the same folder is refused before the model is built (``check_resume``), one line naming
the first key that differs, unless ``--overwrite``, which deletes the old shards and final files
first.
"""

import hashlib
import json
import logging
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.utils import comm

from ..predictor import predictor_class
from ..utils.journal import Journal, stat_files

__all__ = ["JOURNAL", "run_fingerprint", "config_fingerprint", "files_identity", "digest",
           "chunk_ranges", "check_resume", "open_journal", "my_share", "log_progress"]

JOURNAL = "journal"  # the journal's folder inside a run's output folder
OVERWRITE_HELP = "start again in an output folder that holds another command's results"


def config_fingerprint(cfg, drop: Sequence[str] = ()) -> Dict:
    """The config as a JSON dict without what cannot change a result (module docstring), nor
    ``MODEL.WEIGHTS`` and the model's other paths (``Predictor.path_keys``: ``files_identity``
    stands for them), nor the dotted keys of ``drop``."""
    config = json.loads(json.dumps(cfg))
    config.pop("OUTPUT_DIR", None)
    config.pop("DATALOADER", None)
    config.get("TEST", {}).get("FSOD", {}).pop("SUPPORT_DIR", None)
    model = config.get("MODEL", {})
    model["DEVICE"] = str(model.get("DEVICE", "")).split(":")[0]  # cuda:1 computes as cuda:0
    for dotted in ["MODEL.WEIGHTS", *predictor_class(cfg).path_keys, *drop]:
        *path, last = dotted.split(".")
        node = config
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return config


def files_identity(path: str) -> str:
    """``stat_files`` of a local weights file or folder; "" when empty (an untrained model), the
    path itself when it does not exist (the preflight reports it)."""
    if not path:
        return ""
    return stat_files([path]) if os.path.exists(path) else path


def run_fingerprint(cfg, weights: Optional[str] = "", drop: Sequence[str] = (), **data) -> Dict:
    """The fingerprint of a resumable run: ``{"config", "weights", "model_files", **data}``.

    Args:
        weights: the weights whose identity goes in ("" = ``cfg.MODEL.WEIGHTS``; None = none,
            e.g. when ``data`` holds each fold's).
        drop: dotted config keys that cannot change this runner's results.
        data: the runner's identity of its inputs (episodes, supports, test images ...).
    """
    model_files = predictor_class(cfg).model_files(cfg)
    out = {"config": config_fingerprint(cfg, drop),
           "model_files": stat_files(model_files) if model_files else ""}
    if weights is not None:
        out["weights"] = files_identity(weights or cfg.MODEL.WEIGHTS)
    out.update(data)
    return out


def digest(obj) -> str:
    """sha256 of ``obj`` as canonical JSON (a data identity: episodes, image lists)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_ranges(n: int, size: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of ``size`` (the last shorter)."""
    size = max(int(size), 1)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def check_resume(folder: str, fingerprint: Dict, overwrite: bool, what: str) -> None:
    """Refuse (``JournalMismatch``, exit status 2) a folder holding another command's journal,
    writing nothing; nothing to check with ``overwrite``."""
    if not overwrite:
        Journal.verify(folder, fingerprint, what)


def open_journal(folder: str, fingerprint: Dict, overwrite: bool = False,
                 what: Optional[str] = None, stale: Iterable[str] = ()) -> Journal:
    """The journal in every process: created (or checked) by the main process, which with
    ``overwrite`` first deletes the ``stale`` final outputs (files or folders) so that none
    outlives the reset; the others attach after a barrier."""
    journal = None
    if comm.is_main_process():
        if overwrite:
            for path in stale:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
        journal = Journal(folder, fingerprint, overwrite=overwrite, what=what)
    comm.synchronize()
    if journal is None:
        journal = Journal(folder, fingerprint, create=False, what=what)
    return journal


def my_share(keys: Sequence[str]) -> List[str]:
    """This process's part of the pending keys (rank::world). Every process must have listed
    the same pending keys: call ``comm.synchronize()`` between ``pending`` and the first put."""
    return list(keys[comm.get_rank()::comm.get_world_size()])


def log_progress(logger: logging.Logger, what: str, total: int, pending: int, unit: str) -> None:
    """One line saying how much an earlier run of the same command already did."""
    if comm.is_main_process() and pending < total:
        logger.info("%s: resuming, %d of %d %s already done (journal), %d left", what,
                    total - pending, total, unit, pending)
