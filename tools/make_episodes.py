#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Write the fixed test episodes of a benchmark fold as a JSON list (one episode per line).

    python tools/make_episodes.py --benchmark coco --fold 0 --shot 1 --output coco_f0_1shot.json

COCO-20i and PASCAL-5i episodes need only the split lists (shipped in datasets/splits/); FSS-1000
lists the test class folders and LVIS-92i reads LVIS/lvis_val.pkl under --root. The file is what
``inference_fss/run_fss.py --episodes`` and ``TEST.FSS.EPISODES_FILE`` read.
"""

import argparse
import logging
import sys

from diffews.data.episodes import BENCHMARK_FOLDS, make_episodes, save_episodes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARK_FOLDS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS "
                        "or ./datasets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-episodes", type=int, default=0,
                        help="0 = the protocol count (1000 coco/pascal, one per image fss, "
                        "2300 lvis)")
    parser.add_argument("--splits", default=None, help="'shipped' (default), 'tree' (the "
                        "dataset tree's own splits/ folder) or a folder laid out like "
                        "datasets/splits/")
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        episodes = make_episodes(args.benchmark, args.fold, args.shot, args.root, args.seed,
                                 args.num_episodes or None, args.splits)
    except (FileNotFoundError, ValueError) as e:  # missing tree or split list, impossible episode
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_episodes(episodes, args.output)
    logging.getLogger("make_episodes").info("wrote %d episodes to %s", len(episodes), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
