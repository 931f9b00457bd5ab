#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Segment query images given K annotated support images (one episode per query).

  python tools/demo.py --config-file configs/Base-DiffewS.yaml \
      --support dog1.jpg dog1.png [--support dog2.jpg dog2.png ...] --query a.jpg [b.jpg ...] \
      --output out/ [--opts MODEL.WEIGHTS weight/coco_fold0 MODEL.DEVICE cuda]
"""

import argparse
import logging
import os
import sys

import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from diffews import DiffewSCheckpointer
from diffews.config import load_config
from diffews.demo import make_episode, read_supports, write_outputs
from diffews.utils.image import ImageReadError, read_image

EPILOG = """\
Each query forms one episode with all the supports (K = number of --support). Images are resized
to INPUT.IMAGE_SIZE squared (bilinear), masks with nearest; a mask file is any image where a
non-zero pixel means foreground. For each query QUERY.jpg the demo writes, in --output,
QUERY_mask.png (0/255 at the query's size), QUERY_pred.png (the decoded prediction before
thresholding, at the working size) and QUERY_overlay.jpg (the mask over the query, supports beside).

Errors (a missing or unreadable file, a mask whose size differs from its image) stop the demo
with a one-line message naming the file and exit status 1. An empty support mask is a warning,
not an error: the episode still runs, with a support that shows no foreground.
"""


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG")
    p.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMG", "MASK"),
                   help="a support image and its mask; repeat for K shots")
    p.add_argument("--query", nargs="+", required=True, metavar="IMG")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS path MODEL.DEVICE cpu")
    return p


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    log = logging.getLogger("diffews")
    try:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"{args.config_file}: no such config file")
        cfg = setup_cfg(args)
        supports = read_supports(args.support)
        queries = [(f, read_image(f)) for f in args.query]
        model = build_model(cfg).eval()
        if cfg.MODEL.WEIGHTS:
            DiffewSCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    except (ImageReadError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    os.makedirs(args.output, exist_ok=True)
    size = cfg.INPUT.IMAGE_SIZE
    log.info("%d support(s), %d query image(s), working size %d", len(supports), len(queries), size)
    for query_file, query in queries:
        with torch.no_grad():
            (result,) = model([make_episode(query, supports, size)])
        info = write_outputs(args.output, query_file, query, supports, result, size)
        print(f"{query_file}: {100 * info['fraction']:.1f}% foreground -> {info['mask']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_parser().parse_args()))
