# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One fold of an episodic few-shot segmentation evaluation, resumable (``job.py``).

The fold's fixed episodes (``TEST.FSS`` SHOT, SEED, NUM_EPISODES or EPISODES_FILE, NEGATIVE_RATIO)
are cut into chunks of ``--chunk-episodes`` (rounded up to whole batches of
``TEST.FSS.BATCH_SIZE``, so a batch never spans two chunks and every chunk is batched as one
uninterrupted process batches it). A finished chunk is one journal shard (``tasks/resume.py``)
under the key ``fold<F>/episodes<first>-<last>``: per episode its id, class, background /
foreground intersection and union pixel counts (docs/PROTOCOLS.md section 2a) and its presence
row, plus the episodes skipped for bad data. The fold's mIoU / FB-IoU are computed by
``FSSEvaluator`` from every chunk's counts in episode order: exact integer sums, so a resumed or
distributed run gives the numbers, and the files, of one uninterrupted process.
"""

import logging
import os
from typing import Dict, List, Sequence

import numpy as np
from detectron2.utils import comm

from ...data.episodes import build_fss_test_loader
from ...evaluation import FSSEvaluator, run_episodes
from ...utils.journal import Journal
from ...utils.visualize import save_episode
from ..resume import chunk_ranges, digest, log_progress, my_share

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK", "episodes_identity", "chunk_keys", "ChunkEvaluator", "evaluate_fold"]

DEFAULT_CHUNK = 100  # episodes per journal shard (a kill loses at most this many per process)


def episodes_identity(dataset: Sequence[Dict]) -> str:
    """A digest of the episodes: ids, classes, query and support images (id and file name)."""
    def image(r):
        return [r.get("image_id"), os.path.basename(str(r.get("file_name", "")))]

    return digest([[e["episode_id"], e["class_id"], bool(e.get("negative")), image(e["query"]),
                    [image(s) for s in e["supports"]]] for e in dataset])


def chunk_keys(fold: int, num_episodes: int, chunk: int, batch_size: int) -> Dict[str, tuple]:
    """``{key: (start, stop)}`` of a fold's chunks, in order; ``chunk`` rounded up to a multiple
    of ``batch_size``."""
    size = -(-max(int(chunk), 1) // int(batch_size)) * int(batch_size)
    return {f"fold{fold}/episodes{a:06d}-{b - 1:06d}": (a, b)
            for a, b in chunk_ranges(num_episodes, size)}


class ChunkEvaluator(FSSEvaluator):
    """An ``FSSEvaluator`` whose per-episode rows go to, and come from, journal shards."""

    def take(self) -> List[list]:
        """The JSON rows of the episodes processed since the last call: ``[episode_id,
        class_id, [[I_bg, I_fg], [U_bg, U_fg]], [object in query, presence, mask not empty,
        absent-target episode]]`` (the running mIoU keeps them)."""
        rows = [[e, c, n.tolist(), list(p[1:])]
                for (e, c, n), p in zip(self._records, self._presence)]
        self._records, self._presence = [], []
        return rows

    def add(self, rows: Sequence[list]) -> None:
        """Add rows of ``take`` (from a shard) as if their episodes were processed here."""
        for e, c, counts, presence in rows:
            self._records.append((e, int(c), np.asarray(counts, dtype=np.int64)))
            self._presence.append((e, *presence))


def _run_chunks(cfg, predictor, dataset_name, dataset, journal: Journal, spans: Dict[str, tuple],
                mine: List[str], vis_dir: str, save_vis: int, desc: str) -> None:
    """Evaluate this process's chunks, one shard per finished chunk."""
    indices = [i for k in mine for i in range(*spans[k])]
    owner = {dataset[i]["episode_id"]: k for k in mine for i in range(*spans[k])}
    left = {k: spans[k][1] - spans[k][0] for k in mine}
    rows: Dict[str, Dict] = {k: {"episodes": [], "skipped": []} for k in mine}
    loader = build_fss_test_loader(cfg, dataset_name, episodes=dataset, indices=indices)
    evaluator = ChunkEvaluator(dataset_name, distributed=False,
                               original_size=cfg.TEST.FSS.ORIGINAL_SIZE)
    skipped_seen = 0

    def flush():
        nonlocal skipped_seen
        for row in evaluator.take():
            rows[owner[row[0]]]["episodes"].append(row)
            left[owner[row[0]]] -= 1
        for s in loader.skipped[skipped_seen:]:
            rows[owner[s["episode_id"]]]["skipped"].append(s)
            left[owner[s["episode_id"]]] -= 1
        skipped_seen = len(loader.skipped)
        for key in [k for k, n in left.items() if n == 0]:
            journal.put(key, rows.pop(key))  # the chunk is complete: one atomic shard
            del left[key]

    def after(inputs, outputs):
        for x, y in zip(inputs, outputs):
            if isinstance(x["episode_id"], int) and x["episode_id"] < save_vis:
                save_episode(x, y, vis_dir)
        flush()

    run_episodes(predictor.predict_episodes, loader, evaluator, desc, on_batch=after)
    flush()
    if left:
        raise RuntimeError(f"{dataset_name}: chunks {sorted(left)} incomplete after the loader "
                           "ended (episode ids not unique?)")


def evaluate_fold(cfg, predictor, dataset_name: str, dataset: List[Dict], fold: int,
                  journal: Journal, output: str, chunk: int = DEFAULT_CHUNK,
                  save_vis: int = 0) -> Dict:
    """One fold in every process: the chunks without a shard, split rank::world, then (main
    process) the evaluator's "fss" dict from all shards, with "skipped_episodes" (episodes
    dropped for bad data, ``DATALOADER.SKIP_BAD_SAMPLES``); ``{}`` in the other processes.
    ``FSSEvaluator`` writes ``output/<dataset>/fss_results.json``."""
    spans = chunk_keys(fold, len(dataset), chunk, cfg.TEST.FSS.BATCH_SIZE)
    keys = list(spans)
    todo = journal.pending(keys)
    log_progress(logger, dataset_name, len(keys), len(todo), "chunks")
    comm.synchronize()  # every process listed the same pending chunks before anyone writes
    mine = my_share(todo)
    if mine:
        _run_chunks(cfg, predictor, dataset_name, dataset, journal, spans, mine,
                    os.path.join(output, "vis", dataset_name), save_vis, dataset_name)
    comm.synchronize()
    if not comm.is_main_process():
        return {}
    evaluator = ChunkEvaluator(dataset_name, distributed=False,
                               output_dir=os.path.join(output, dataset_name),
                               original_size=cfg.TEST.FSS.ORIGINAL_SIZE)
    skipped = []
    for value in journal.collect(keys):  # key order = episode order
        evaluator.add(value["episodes"])
        skipped += value["skipped"]
    results = evaluator.evaluate()
    return {**results["fss"], "skipped_episodes": skipped}
