#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Segment query images given K annotated support images (supports encoded once for all queries).

  python tools/demo.py --config-file configs/Base-DiffewS.yaml \
      --support dog1.jpg dog1.png [--support dog2.jpg dog2.png ...] --query a.jpg [b.jpg folder/
      ...] \\ [--output output/demo] [--device cuda] MODEL.WEIGHTS weight/coco_fold0
"""

import argparse
import logging
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import check_counts, entry_parser, load_entry_config, preflight, run_cli, \
    take_trailing_overrides
from diffews.predictor import build_predictor, list_images
from diffews.tasks.demo import support_panels, write_outputs
from diffews.utils.image import check_image_file

from detectron2.utils.logger import setup_logger
from tqdm import tqdm

DEFAULT_OUTPUT = "output/demo"

EPILOG = """\
The supports are encoded once (the predictor's encode_supports) and every query is segmented
against all of them (K = number of --support). A --query folder stands for its image files.
Images are resized to INPUT.IMAGE_SIZE squared (bilinear), masks with nearest; a mask file is any
image where a non-zero pixel means foreground. For each query QUERY.jpg the demo writes, in
--output, QUERY_mask.png (0/255 at the query's size), QUERY_pred.png (the decoded prediction before
thresholding, at the working size) and QUERY_overlay.jpg (the mask over the query, supports
beside), and prints its foreground fraction and confidence score.

Errors (a missing or half-written MODEL.DIFFEWS.PRETRAINED folder, an unwritable --output, a
missing or unreadable file, a mask whose size differs from its image, MODEL.WEIGHTS empty) stop
the demo, before the model is built, with a one-line message naming the file and exit status 1
(2 for a wrong command line or config; --debug shows the traceback). An empty support mask is a
warning, not an error: the queries still run, with a support that shows no foreground. Set
MODEL.DIFFEWS.ALLOW_UNTRAINED True to run an untrained model on purpose.
"""


class _Queries(argparse.Action):
    """``--query a.jpg b/ MODEL.WEIGHTS w``: the queries stop at the first config key."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, take_trailing_overrides(namespace, list(values)))


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, output="optional", device=True,
                     output_help=f"where the masks and pictures go (default {DEFAULT_OUTPUT})",
                     batch_size="queries per model pass (default 4)")
    p.set_defaults(batch_size=4)
    p.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMG", "MASK"),
                   help="a support image and its mask; repeat for K shots")
    p.add_argument("--query", nargs="+", required=True, metavar="IMG_OR_FOLDER",
                   action=_Queries, help="query images or folders; trailing KEY VALUE overrides "
                   "may follow directly")
    return p


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    log = logging.getLogger("diffews.tasks.demo")
    output = args.output or DEFAULT_OUTPUT
    cfg = load_entry_config(args)
    cfg.freeze()
    # PRETRAINED, image size, output folder, MODEL.WEIGHTS: before anything is read or built
    preflight(cfg, output_dir=output, weights=[cfg.MODEL.WEIGHTS])
    queries = list_images(args.query)
    for q in queries:  # a missing or non-image query fails before the model is loaded
        check_image_file(q)
    panels = support_panels(args.support)  # reads every support file: errors before the model
    predictor = build_predictor(cfg)
    supports = predictor.encode_supports([i for i, _ in args.support], [m for _, m in args.support])
    log.info("%d support(s) encoded once, %d query image(s), working size %d", len(supports),
             len(queries), predictor.image_size)
    results = predictor.iter_predict(queries, supports, batch_size=args.batch_size)
    for result in tqdm(results, total=len(queries), desc="queries", disable=len(queries) < 2):
        info = write_outputs(output, result, panels)
        print(f"{result['name']}: {100 * info['fraction']:.1f}% foreground, score "
              f"{result['score']:.2f} -> {info['mask']}")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args, {"batch_size": 1})
    if not args.query:
        parser.error("--query needs at least one image or folder before the config overrides")
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
