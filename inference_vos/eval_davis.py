#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Score DAVIS semi-supervised results exactly as davis2017-evaluation does.

    python inference_vos/eval_davis.py [--dataset-root DIR] --results DIR --set val --year 2017

The ground truth is ``<dataset-root>/DAVIS17/trainval`` (``--dataset-root`` defaults to
``$DETECTRON2_DATASETS``, else ./datasets; datasets/README.md); the older ``--davis-root DIR``
names that DAVIS folder itself (deprecated). ``--results`` holds ``<sequence>/<frame>.png`` palette
PNGs (object ids). Writes ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv``
into it (``%.3f``, as the official script) and prints the official tables. ``--year 2016`` scores
the DAVIS 2016 list (``ImageSets/2016/<set>.txt``) with all objects merged into one. Bad input (a
missing folder, sequence or frame, more objects than the ground truth) prints one line and exits
with status 1 (2 for a wrong command line); ``--debug`` shows the traceback. The rules are in
diffews/evaluation/vos_evaluation.py and inference_vos/README.md.
"""

import argparse
import os
import sys
import time

from diffews.cli import add_list_argument, deprecate, entry_parser, parse_list, run_cli
from diffews.data.datasets.roots import dataset_root
from diffews.evaluation.vos_evaluation import evaluate_davis
from diffews.evaluation.davis_report import format_davis_tables, write_davis_csvs


class _DavisFolder(argparse.Action):
    """The older ``--davis-root``: the DAVIS folder itself, not the datasets root."""

    def __call__(self, parser, namespace, values, option_string=None):
        deprecate(f"{option_string} DAVIS_FOLDER", "--dataset-root DIR (the DAVIS folder is "
                  "DIR/DAVIS17/trainval)")
        namespace.davis_folder = values


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     config="", dataset_root=True, output=None, overrides=False,
                     deprecated_roots=("--root",))
    p.add_argument("--davis-root", action=_DavisFolder, dest="davis_folder", default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--results", required=True, help="folder with one sub-folder per sequence")
    p.add_argument("--set", default="val", choices=["train", "val"],
                   help="sequence list ImageSets/<year>/<set>.txt (test-dev is scored online)")
    p.add_argument("--year", default="2017", choices=["2016", "2017"])
    add_list_argument(p, "--sequences", default=None, help="score only these sequences")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def davis_folder(args) -> str:
    """The DAVIS trainval folder: the deprecated ``--davis-root``, else under the datasets root
    (as the DAVIS readers of diffews.data.datasets.vos find it)."""
    if args.davis_folder:
        return args.davis_folder
    return os.path.join(dataset_root(args.dataset_root), "DAVIS17", "trainval")


def score(args) -> int:
    start = time.time()
    sequences = parse_list(args.sequences, str, "--sequences")
    scores = evaluate_davis(davis_folder(args), args.results, args.set, args.year, sequences,
                            progress=not args.no_progress)
    paths = write_davis_csvs(scores, args.results, args.set)
    print(format_davis_tables(scores, args.set))
    print(f"\nWrote {paths[0]} and {paths[1]}")
    print(f"Total time: {time.time() - start:.1f} s")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, score; one ``error:`` line and exit status 1/2 on failure."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: score(args), args.debug)


main = cli  # the older name (tests and scripts call eval_davis.main(argv))

if __name__ == "__main__":
    sys.exit(cli())
