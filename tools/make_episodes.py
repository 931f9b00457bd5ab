#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Write the fixed test episodes of a benchmark fold as a JSON episode file (one episode per line).

    python tools/make_episodes.py --benchmark coco --fold 0 --shot 1 [--output coco_f0_1shot.json]

COCO-20i and PASCAL-5i episodes need only the split lists (shipped in datasets/splits/); FSS-1000
lists the test class folders and LVIS-92i reads LVIS/lvis_val.pkl under --dataset-root. The
default --output is output/episodes/<benchmark>_fold<F>_<K>shot.json. The file is what
``inference_fss/run_fss.py --episodes`` and ``TEST.FSS.EPISODES_FILE`` read. It records the
episode generator version (``diffews.data.episodes.GENERATOR_VERSION``); rewriting a file of an
older version says so. Errors are one line (exit status 2: command line, 1: data); --debug shows
the traceback.
"""

import logging
import os
import sys

from diffews.cli import UsageError, check_counts, entry_parser, run_cli
from diffews.cli.preflight import check_output_dir
from diffews.data.episodes import (BENCHMARK_FOLDS, GENERATOR_VERSION, make_episodes,
                                   read_episode_file, save_episodes, stale_version)

logger = logging.getLogger("diffews.make_episodes")

DEFAULT_OUTPUT = "output/episodes/<benchmark>_fold<F>_<K>shot.json"


def get_parser():
    parser = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                          config="", dataset_root=True, output="optional", overrides=False,
                          output_help=f"JSON file to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARK_FOLDS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-episodes", type=int, default=0,
                        help="0 = the protocol count (1000 coco/pascal, one per image fss, "
                        "2300 lvis)")
    parser.add_argument("--splits", default=None, help="'shipped' (default), 'tree' (the "
                        "dataset tree's own splits/ folder) or a folder laid out like "
                        "datasets/splits/")
    return parser


def write(args) -> int:
    """Draw the episodes and write them, saying whether an existing file is regenerated."""
    output = args.output or os.path.join(
        "output", "episodes", f"{args.benchmark}_fold{args.fold}_{args.shot}shot.json")
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder; give the path of a .json file")
    check_output_dir(os.path.dirname(os.path.abspath(output)), "--output folder")
    previous = None
    if os.path.isfile(output):
        try:
            previous = read_episode_file(output)[1]
        except ValueError as e:
            raise UsageError(f"--output {output} exists and is not an episode file ({e}); choose "
                             "another path or delete it") from e
    episodes = make_episodes(args.benchmark, args.fold, args.shot, args.dataset_root, args.seed,
                             args.num_episodes or None, args.splits)
    if previous is not None:
        stale = stale_version(previous)
        if stale:
            logger.info("regenerating %s: %s; this is episode generator version %d", output,
                        stale, GENERATOR_VERSION)
        else:
            logger.info("rewriting %s (same episode generator version %d)", output,
                        GENERATOR_VERSION)
    save_episodes(episodes, output, benchmark=args.benchmark, fold=args.fold, shot=args.shot,
                  seed=args.seed, splits=args.splits or "shipped")
    logger.info("wrote %d episodes to %s (episode generator version %d)", len(episodes), output,
                GENERATOR_VERSION)
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, write; one ``error:`` line and exit status 1/2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    folds = BENCHMARK_FOLDS[args.benchmark]
    if args.fold not in range(folds):
        parser.error(f"--fold {args.fold}: {args.benchmark} has folds 0..{folds - 1}")
    check_counts(parser, args, {"shot": 1, "num_episodes": 0})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    return run_cli(lambda: write(args), args.debug)


main = cli  # the older name (tests and scripts call make_episodes.main(argv))

if __name__ == "__main__":
    sys.exit(cli())
