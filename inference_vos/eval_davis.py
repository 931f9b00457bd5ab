#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Score DAVIS semi-supervised results exactly as davis2017-evaluation does.

    python inference_vos/eval_davis.py --davis-root DIR --results DIR --set val --year 2017

``--results`` holds ``<sequence>/<frame>.png`` palette PNGs (object ids). Writes
``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` into it (``%.3f``, as the
official script) and prints the official tables. ``--year 2016`` scores the DAVIS 2016 list
(``ImageSets/2016/<set>.txt``) with all objects merged into one. Bad input (a missing folder,
sequence or frame, more objects than the ground truth) prints one line and exits with status 1.
The rules are in diffews/evaluation/vos_evaluation.py and inference_vos/README.md.
"""

import argparse
import os
import sys
import time

from diffews.evaluation.vos_evaluation import (
    VOSEvaluationError, evaluate_davis, format_davis_tables, write_davis_csvs,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--davis-root", default=None,
                   help="DAVIS folder with JPEGImages/480p, Annotations/480p and ImageSets "
                        "(default $DETECTRON2_DATASETS/DAVIS17/trainval)")
    p.add_argument("--results", required=True, help="folder with one sub-folder per sequence")
    p.add_argument("--set", default="val", choices=["train", "val"],
                   help="sequence list ImageSets/<year>/<set>.txt (test-dev is scored online)")
    p.add_argument("--year", default="2017", choices=["2016", "2017"])
    p.add_argument("--sequences", nargs="+", default=None, help="score only these sequences")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = args.davis_root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"),
                                           "DAVIS17", "trainval")
    start = time.time()
    try:
        scores = evaluate_davis(root, args.results, args.set, args.year, args.sequences,
                                progress=not args.no_progress)
        paths = write_davis_csvs(scores, args.results, args.set)
    except (VOSEvaluationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_davis_tables(scores, args.set))
    print(f"\nWrote {paths[0]} and {paths[1]}")
    print(f"Total time: {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
