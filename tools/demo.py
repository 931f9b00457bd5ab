#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Segment query images given K annotated support images (supports encoded once for all queries).

  python tools/demo.py --config-file configs/Base-DiffewS.yaml \
      --support dog1.jpg dog1.png [--support dog2.jpg dog2.png ...] --query a.jpg [b.jpg folder/ ...] \
      --output out/ MODEL.WEIGHTS weight/coco_fold0 [MODEL.DEVICE cuda]
"""

import argparse
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.utils.logger import setup_logger  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffews.tasks.demo import support_panels, write_outputs  # noqa: E402
from diffews.predictor import DiffewSPredictor, list_images  # noqa: E402
from diffews.cli import (OneLineArgumentParser, add_common_arguments,  # noqa: E402
                               config_overrides, load_config_checked, run_cli)
from diffews.utils.image import check_image_file  # noqa: E402

EPILOG = """\
The supports are encoded once (DiffewSPredictor.encode_supports) and every query is segmented
against all of them (K = number of --support). A --query folder stands for its image files.
Images are resized to INPUT.IMAGE_SIZE squared (bilinear), masks with nearest; a mask file is any
image where a non-zero pixel means foreground. For each query QUERY.jpg the demo writes, in
--output, QUERY_mask.png (0/255 at the query's size), QUERY_pred.png (the decoded prediction before
thresholding, at the working size) and QUERY_overlay.jpg (the mask over the query, supports
beside), and prints its foreground fraction and confidence score.

Errors (a missing or unreadable file, a mask whose size differs from its image, MODEL.WEIGHTS
empty) stop the demo with a one-line message naming the file and exit status 1 (2 for a wrong
command line or config). An empty support mask is a warning, not an error: the queries still run,
with a support that shows no foreground. Set MODEL.DIFFEWS.ALLOW_UNTRAINED True to run an
untrained model on purpose.
"""


def get_parser():
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG")
    p.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMG", "MASK"),
                   help="a support image and its mask; repeat for K shots")
    p.add_argument("--query", nargs="+", required=True, metavar="IMG_OR_FOLDER")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, default=4, help="queries per model pass")
    return add_common_arguments(p, opts_flag=True)


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    log = logging.getLogger("diffews.tasks.demo")
    cfg = load_config_checked(args.config_file, config_overrides(args))
    cfg.freeze()
    queries = list_images(args.query)
    for q in queries:  # a missing or non-image query fails before the model is loaded
        check_image_file(q)
    panels = support_panels(args.support)  # reads every support file: errors before the model
    predictor = DiffewSPredictor.from_config(cfg)
    supports = predictor.encode_supports([i for i, _ in args.support], [m for _, m in args.support])
    os.makedirs(args.output, exist_ok=True)
    log.info("%d support(s) encoded once, %d query image(s), working size %d", len(supports),
             len(queries), predictor.image_size)
    results = predictor.iter_predict(queries, supports, batch_size=args.batch_size)
    for result in tqdm(results, total=len(queries), desc="queries", disable=len(queries) < 2):
        info = write_outputs(args.output, result, panels)
        print(f"{result['name']}: {100 * info['fraction']:.1f}% foreground, score "
              f"{result['score']:.2f} -> {info['mask']}")
    return 0


if __name__ == "__main__":
    args = get_parser().parse_args()
    sys.exit(run_cli(lambda: main(args), args.debug))
