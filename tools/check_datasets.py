#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Check a prepared datasets tree against what the few-shot loaders read.

    python tools/check_datasets.py --benchmark all [--dataset-root $DETECTRON2_DATASETS]

For each benchmark: the folders, the split lists and a sample of the listed images and masks.
Prints OK or every missing path; exits 1 if anything is missing or unreadable. The expected
trees are in datasets/README.md. A root that does not exist, or any other error, is one
``error:`` line (exit status 1; 2 for a wrong command line); --debug shows the traceback.
"""

import os
import sys

from diffews.cli import README_SECTIONS, check_counts, entry_parser, run_cli
from diffews.data.datasets.coco20i import check_coco20i
from diffews.data.datasets.coco_fsod import check_fsod
from diffews.data.datasets.roots import dataset_root
from diffews.data.datasets.fss1000 import check_fss1000
from diffews.data.datasets.lvis92i import check_lvis92i
from diffews.data.datasets.pascal5i import check_pascal5i
from diffews.data.datasets.vos import check_vos

CHECKS = {
    "coco": lambda root, splits, n: check_coco20i(root, splits, n),
    "pascal": lambda root, splits, n: check_pascal5i(root, splits, n),
    "fss": lambda root, splits, n: check_fss1000(root, splits, n),
    "lvis": lambda root, splits, n: check_lvis92i(root, n),
    "fsod": lambda root, splits, n: check_fsod(root, n),  # TFA few-shot instance segmentation
    "davis": lambda root, splits, n: check_vos(root, "davis", n),  # DAVIS 2016/2017 (VOS)
    "ytvos": lambda root, splits, n: check_vos(root, "ytvos", n),  # YouTube-VOS 2018 valid
}
# datasets/README.md section of each benchmark (diffews.cli.README_SECTIONS is per folder)
_FOLDERS = {"COCO2014": "coco", "VOC2012": "pascal", "FSS-1000": "fss", "LVIS": "lvis"}


def get_parser():
    parser = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                          config="", dataset_root=True, output=None, overrides=False)
    parser.add_argument("--benchmark", default="all", choices=sorted(CHECKS) + ["all"])
    parser.add_argument("--splits", default=None, help="'shipped' (default), 'tree' or a folder")
    parser.add_argument("--sample", type=int, default=20, help="listed files checked per split")
    return parser


def cli(argv=None) -> int:
    """The command line: parse, check the tree; one ``error:`` line and exit status 1/2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args, {"sample": 1})
    return run_cli(lambda: check(args), args.debug)


main = cli  # the older name (tests and scripts call check_datasets.main(argv))


def check(args) -> int:
    root = dataset_root(args.dataset_root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{root}: the datasets root does not exist; pass --dataset-root or set "
            "DETECTRON2_DATASETS to the folder prepared as in "
            "datasets/README.md"
        )
    failed = []
    for name in sorted(CHECKS) if args.benchmark == "all" else [args.benchmark]:
        try:
            missing = CHECKS[name](root, args.splits, args.sample)
        except ValueError as e:  # a file exists but cannot be parsed
            missing = [f"unreadable: {e}"]
        failed += [name] if missing else []
        print(f"{name}: " + ("OK" if not missing else f"{len(missing)} missing under {root}"))
        for path in missing:
            print(f"  missing: {path}" if not path.startswith("unreadable") else f"  {path}")
    if failed:
        sections = [README_SECTIONS[folder] for folder, b in _FOLDERS.items() if b in failed]
        where = f" (section {', '.join(repr(s) for s in sections)})" if sections else ""
        print(f"See datasets/README.md{where} for how to prepare the missing data.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli())
