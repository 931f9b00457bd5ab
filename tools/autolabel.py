#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Label a dataset from a few examples per class: COCO instance annotations out, resumable.

  python tools/autolabel.py --config-file configs/Base-DiffewS.yaml --supports SRC \
      --images DIR_OR_LIST --output OUT [--num-gpus N] [--save-masks] MODEL.WEIGHTS W
"""

import logging
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import (check_counts, check_output_dir, entry_parser, launch_cli,
                         load_entry_config, preflight)
from diffews.tasks import autolabel

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

EPILOG = """\
SRC is a class-folder tree (<class>/<name>.jpg + <name>.png), a COCO instances json with a few
annotated images (their folder: --supports-images, default the json's folder) or a folder of
saved SupportSet files (<class>.pt). DIR_OR_LIST is a folder of images (recursive) or a text file
with one image path a line.

Every image is encoded once and predicted against every class's supports (TEST.FSOD.BATCH_SIZE
classes per model pass, --batch-size); classes judged absent (--presence-threshold, default
MODEL.DIFFEWS.PRESENCE_THRESHOLD, else the one calibrated weights carry; < 0 keeps every class)
give nothing; each mask becomes scored
instances (TEST.FSOD.INSTANCE_MODE, MIN_AREA, TOPK, CLASS_SCORE). OUT gets annotations.json
(COCO: images, categories from SRC, annotations with RLE segmentation, bbox, area, score),
skipped.json (unreadable images and why), support_sets/ (one SupportSet per class; reusable as
SRC), with --save-masks masks/<image file name>.png (a/x.jpg -> masks/a/x.jpg.png; class index
1..C per pixel, 0 = none) and journal/.

A run killed at any moment and started again with the same command labels only the images left;
its annotations.json equals an uninterrupted run's. Another command (supports, weights,
thresholds, config) on the same OUT is refused unless --overwrite, which deletes only what the
earlier run wrote; an OUT that is no autolabel output (no journal/) but holds annotations.json,
skipped.json, masks/, support_sets/ or journal/ is refused. More than --max-bad-fraction
unreadable images stop the run, naming the first. --num-gpus N processes split the images (the
result equals one process's). One run at a time per OUT: a second one, --overwrite or not, is
refused with one line naming the running one (pid, host, command). Exit status 2 for a wrong
command line or config, 1 for files and data; --debug shows the traceback. README.md, "Label
your own images".
"""


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, device=True, distributed=True,
                     output_help="results folder (annotations.json, skipped.json, journal/)",
                     batch_size="classes per model pass (TEST.FSOD.BATCH_SIZE; default: the "
                     "config's)")
    p.add_argument("--supports", required=True, metavar="SRC",
                   help="class-folder tree, COCO json, or folder of SupportSet .pt files")
    p.add_argument("--supports-images", default=None, metavar="DIR",
                   help="image folder of a COCO json --supports (default: the json's folder)")
    p.add_argument("--images", required=True, metavar="DIR_OR_LIST",
                   help="folder of images to label (recursive) or a file with one path a line")
    p.add_argument("--presence-threshold", type=float, default=None, metavar="T",
                   help="drop classes judged absent below T (default: the config's "
                   "MODEL.DIFFEWS.PRESENCE_THRESHOLD, else the threshold calibrated weights "
                   "carry; < 0: keep every class)")
    p.add_argument("--max-bad-fraction", type=float, default=None, metavar="F",
                   help="stop when more than this fraction of the images is unreadable "
                   "(default: the config's DATALOADER.MAX_BAD_FRACTION)")
    p.add_argument("--save-masks", action="store_true",
                   help="also write one label PNG per image: OUT/masks/<image file name>.png")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an OUT that holds another command's results (only "
                   "the files that run wrote are deleted)")
    return p


def setup(args):
    """The frozen config, the job and ``check_job``'s result: every input checked, no model
    built."""
    cfg = load_entry_config(args, {"batch_size": "TEST.FSOD.BATCH_SIZE"})
    cfg.OUTPUT_DIR = args.output
    cfg.freeze()
    job = autolabel.LabelJob(
        supports=args.supports, images=args.images, output=args.output,
        supports_images=args.supports_images, presence_threshold=args.presence_threshold,
        max_bad_fraction=(cfg.DATALOADER.MAX_BAD_FRACTION if args.max_bad_fraction is None
                          else args.max_bad_fraction),
        save_masks=args.save_masks, overwrite=args.overwrite)
    preflight(cfg, output_dir=args.output, weights=[cfg.MODEL.WEIGHTS])
    return cfg, job, autolabel.check_job(cfg, job)


def output_folder(args) -> str:
    """The config loaded and OUT checked (cheap): OUT, locked by the parent process for the
    whole run (``launch_cli``)."""
    load_entry_config(args, {"batch_size": "TEST.FSOD.BATCH_SIZE"})
    return check_output_dir(args.output)


def main(args) -> int:
    setup_logger(args.output, distributed_rank=comm.get_rank(), name="diffews",
                 abbrev_name="diffews")
    cfg, job, checked = setup(args)  # in every process, before any model is built
    summary = autolabel.run(cfg, job, checked=checked)
    if summary:
        logging.getLogger("diffews.autolabel").info(
            "%d images (%d labelled now), %d annotations, %d unreadable", summary["images"],
            summary["labelled"], summary["annotations"], summary["skipped"])
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args, {"batch_size": 1, "num_gpus": 1, "num_machines": 1})
    return launch_cli(args, main, lambda: setup(args), output=lambda: output_folder(args))


if __name__ == "__main__":
    sys.exit(cli())
