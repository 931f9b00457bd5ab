#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Check a prepared datasets tree against what the few-shot loaders read.

    python tools/check_datasets.py --benchmark all [--root $DETECTRON2_DATASETS]

For each benchmark: the folders, the split lists and a sample of the listed images and masks.
Prints OK or every missing path; exits 1 if anything is missing or unreadable. The expected
trees are in datasets/README.md.
"""

import argparse
import sys

from diffews.data.datasets.common import dataset_root
from diffews.data.datasets.coco20i import check_coco20i
from diffews.data.datasets.fss1000 import check_fss1000
from diffews.data.datasets.lvis92i import check_lvis92i
from diffews.data.datasets.pascal5i import check_pascal5i

CHECKS = {
    "coco": lambda root, splits, n: check_coco20i(root, splits, n),
    "pascal": lambda root, splits, n: check_pascal5i(root, splits, n),
    "fss": lambda root, splits, n: check_fss1000(root, splits, n),
    "lvis": lambda root, splits, n: check_lvis92i(root, n),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="all", choices=sorted(CHECKS) + ["all"])
    parser.add_argument("--root", default=None, help="default $DETECTRON2_DATASETS or ./datasets")
    parser.add_argument("--splits", default=None, help="'shipped' (default), 'tree' or a folder")
    parser.add_argument("--sample", type=int, default=20, help="listed files checked per split")
    args = parser.parse_args(argv)
    root = dataset_root(args.root)
    failed = False
    for name in sorted(CHECKS) if args.benchmark == "all" else [args.benchmark]:
        try:
            missing = CHECKS[name](root, args.splits, args.sample)
        except ValueError as e:  # a file exists but cannot be parsed
            missing = [f"unreadable: {e}"]
        failed |= bool(missing)
        print(f"{name}: " + ("OK" if not missing else f"{len(missing)} missing under {root}"))
        for path in missing:
            print(f"  missing: {path}" if not path.startswith("unreadable") else f"  {path}")
    if failed:
        print("See datasets/README.md for how to prepare the missing data.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
