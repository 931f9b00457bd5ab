# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One set of in-context weights on every benchmark and shot, in one table beside the paper's
numbers (``inference_fss/run_incontext.py``). Each (benchmark, shot) is one ``run.run`` over every
fold, in ``<output>/<benchmark>_<K>shot/``; the table goes to the log and to
``<output>/incontext_results.json``."""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.utils import comm
from tabulate import tabulate

from ...config import fold_weights
from ...data.episodes import BENCHMARK_FOLDS
from ...predictor import build_predictor
from ...utils.atomic import atomic_write_json
from .job import FSSJob, check, run

logger = logging.getLogger(__name__)

__all__ = ["BENCHMARKS", "NAMES", "PAPER", "incontext_jobs", "run_incontext", "table"]

BENCHMARKS = ("coco", "pascal", "fss", "lvis")
NAMES = {"coco": "COCO-20i", "pascal": "PASCAL-5i", "fss": "FSS-1000", "lvis": "LVIS-92i",
         "synthetic": "synthetic"}
# DiffewS in-context weights, mean mIoU over folds, (1-shot, 5-shot) (docs/METHOD.md section 9);
# the paper gives no PASCAL-5i number for them
PAPER = {"coco": (71.3, 72.2), "fss": (87.8, 88.0), "lvis": (31.4, 35.4)}


def incontext_jobs(cfg, benchmarks: Sequence[str], shots: Sequence[int], output: str
                   ) -> List[Tuple[str, int, object, FSSJob]]:
    """(benchmark, shot, config with ``TEST.FSS.SHOT``, job over every fold) of each run."""
    jobs = []
    for benchmark in benchmarks:
        for shot in shots:
            c = cfg.clone()
            c.defrost()
            c.TEST.FSS.SHOT = int(shot)
            c.freeze()
            jobs.append((benchmark, int(shot), c, FSSJob(
                benchmark=benchmark, folds=list(range(BENCHMARK_FOLDS[benchmark])),
                output=os.path.join(output, f"{benchmark}_{shot}shot"))))
    return jobs


def table(summaries: dict, shots) -> tuple:
    """Rows ``[benchmark, folds, mIoU per shot, paper mIoU per shot, FB-IoU per shot]`` and their
    headers, from ``{(benchmark, shot): run summary}``."""
    benchmarks = list(dict.fromkeys(b for b, _ in summaries))
    headers = (["benchmark", "folds"] + [f"{k}-shot mIoU" for k in shots]
               + [f"paper {k}-shot" for k in shots] + [f"{k}-shot FB-IoU" for k in shots])
    rows = []
    for b in benchmarks:
        runs = [summaries[(b, k)] for k in shots]
        paper = [dict(zip((1, 5), PAPER[b])).get(k) if b in PAPER else None for k in shots]
        rows.append([NAMES[b], len(runs[0]["folds"])]
                    + [f"{r['mean']['mIoU']:.1f}" for r in runs]
                    + [f"{p:.1f}" if p is not None else "-" for p in paper]
                    + [f"{r['mean']['FB-IoU']:.1f}" for r in runs])
    return headers, rows


def run_incontext(cfg, benchmarks: Sequence[str], shots: Sequence[int], output: str,
                  predictor=None) -> Optional[Dict]:
    """Every (benchmark, shot) run with one model, then the table (module docstring); the
    table's dict in the main process, None in the others."""
    summaries = {}
    for benchmark, shot, c, job in incontext_jobs(cfg, benchmarks, shots, output):
        checked = check(c, job)
        if predictor is None:  # one model for every run
            c0 = c.clone()
            c0.defrost()
            c0.MODEL.WEIGHTS = fold_weights(c, 0)
            predictor = build_predictor(c0)
        summary = run(c, job, checked, predictor=predictor)
        if comm.is_main_process():
            summaries[(benchmark, shot)] = summary
    if not comm.is_main_process():
        return None
    headers, rows = table(summaries, list(shots))
    logger.info("in-context weights, mean over folds:\n%s",
                tabulate(rows, headers=headers, tablefmt="pipe"))
    out = {"shots": list(shots), "headers": headers, "rows": rows,
           "runs": {f"{b}_{k}shot": s for (b, k), s in summaries.items()}}
    atomic_write_json(out, os.path.join(output, "incontext_results.json"), indent=2)
    return out
