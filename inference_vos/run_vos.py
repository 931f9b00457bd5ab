#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation (DiffewS or SINE): DAVIS 2016/2017, YouTube-VOS 2018.

  python inference_vos/run_vos.py --config-file configs/vos/Base-DAVIS17.yaml \
      --dataset davis17_val --output output/vos/davis17_val MODEL.WEIGHTS weight/coco_fold0
"""

import logging
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.cli import UsageError, add_list_argument, check_counts, check_output_dir, \
    entry_parser, load_entry_config, parse_list, preflight, run_cli
from diffews.data.datasets.vos import VOS_DATASETS
from diffews.evaluation.davis_report import format_davis_tables
from diffews.tasks import vos
from diffews.tasks.resume import OVERWRITE_HELP
from diffews.utils.lock import OutputLock

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

# flag -> config key, merged after the trailing overrides (diffews.cli.load_entry_config)
FLAGS = {"mem_size": "TEST.VOS.MEM_SIZE", "decay_ratio": "TEST.VOS.DECAY_RATIO",
         "reuse_supports": "TEST.VOS.REUSE_SUPPORTS", "batch_size": "TEST.VOS.BATCH_SIZE"}

EPILOG = """\
Per object, the first annotated frame with its given mask is a fixed reference and up to
MEM_SIZE - 1 past predicted frames, chosen by score decayed linearly with their distance in time
(ratio DECAY_RATIO), are added; every frame is encoded once. The model's own rules decide the rest
(DiffewS: diffews/predictor/diffews_video.py, frames resized to INPUT.IMAGE_SIZE squared, each
memory entry encoded once; SINE: diffews/predictor/sine_video.py, tools/eval_vos.py's loop with
TEST.VOS.FRAME_SIZE and MODEL.SINE.IMAGE_SIZE, configs/sine/sine_dinov2l_vos.yaml). Masks are
written at the frame's size as palette PNGs in the official results layout:
<output>/<video>/<frame>.png (DAVIS) or <output>/Annotations/<video>/<frame>.png plus
<output>/submission.zip (YouTube-VOS). DAVIS val is scored at the end (global_results-val.csv,
per-sequence_results-val.csv in --output, as inference_vos/eval_davis.py does); DAVIS test-dev
and YouTube-VOS are scored by their servers.

Resumable: each finished sequence is recorded in <output>/journal/; the same command started
again after a kill skips the sequences recorded (their PNGs are written) and gives the scores of
an uninterrupted run. Another command (config, weights, dataset) on the same --output is refused
unless --overwrite; a second run while one runs there is refused, whatever its flags. See
inference_vos/README.md.
"""


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, dataset_root=True,
                     output="optional", device=True,
                     output_help="results folder (default output/vos/<dataset>)",
                     batch_size="queries (frame, object) per model call (default: the config's "
                     "TEST.VOS.BATCH_SIZE)", deprecated_roots=("--root",))
    p.add_argument("--dataset", default=None, choices=sorted(VOS_DATASETS),
                   help="registered VOS dataset (default: the config's DATASETS.TEST[0])")
    p.add_argument("--mem-size", type=int, default=None, metavar="N",
                   help="supports per object incl. the first frame (TEST.VOS.MEM_SIZE)")
    p.add_argument("--decay-ratio", type=float, default=None, metavar="R",
                   help="linear score decay ratio, 0 = none (TEST.VOS.DECAY_RATIO)")
    p.add_argument("--no-reuse", dest="reuse_supports", action="store_const", const=False,
                   default=None, help="re-encode every support on every frame "
                   "(TEST.VOS.REUSE_SUPPORTS False; same masks, slower)")
    add_list_argument(p, "--videos", default=None, metavar="NAME,NAME,...",
                      help="only these videos")
    p.add_argument("--save-vis", action="store_true",
                   help="write <output>/vis/<video>.jpg: a strip of frames with the masks")
    p.add_argument("--no-eval", action="store_true", help="do not score DAVIS val at the end")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return p


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    cfg = load_entry_config(args, FLAGS)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset not in VOS_DATASETS:
        raise UsageError(f"--dataset: {dataset!r} is not a VOS dataset; choose from "
                         f"{', '.join(VOS_DATASETS)}")
    if cfg.TEST.VOS.MEM_SIZE < 1 or cfg.TEST.VOS.DECAY_RATIO < 0:
        raise UsageError(f"--mem-size must be >= 1 and --decay-ratio >= 0 (got "
                         f"{cfg.TEST.VOS.MEM_SIZE}, {cfg.TEST.VOS.DECAY_RATIO})")
    if cfg.TEST.VOS.BATCH_SIZE < 1:
        raise UsageError(f"TEST.VOS.BATCH_SIZE must be >= 1, got {cfg.TEST.VOS.BATCH_SIZE}")
    cfg.freeze()
    output = args.output or f"output/vos/{dataset}"
    videos = parse_list(args.videos, str, "--videos")
    # before the model is built: PRETRAINED, image size, weights, then the dataset's records
    # (a missing tree or --videos name), then the output folder (not created for a run that
    # cannot start)
    preflight(cfg, weights=[cfg.MODEL.WEIGHTS])
    job = vos.VOSJob(dataset, output, root=args.dataset_root, videos=videos,
                     save_vis=args.save_vis, evaluate=not args.no_eval, overwrite=args.overwrite)
    records = vos.load_vos_records(dataset, args.dataset_root, videos)
    check_output_dir(output)
    # one run at a time in --output, held to the end (scores included): a second one is refused
    # before its journal is checked, deleted or written
    with OutputLock(output, what=f"--output {output}"):
        vos.check(cfg, job, records)
        return _run(cfg, args, job, dataset, output)


def _run(cfg, args, job, dataset: str, output: str) -> int:
    """The checked job: the sequences, then the scores or how to get them."""
    logging.getLogger("diffews.run_vos").info(
        "%s: memory %d (first frame + %d), decay ratio %g, support reuse %s -> %s", dataset,
        cfg.TEST.VOS.MEM_SIZE, cfg.TEST.VOS.MEM_SIZE - 1, cfg.TEST.VOS.DECAY_RATIO,
        "on" if cfg.TEST.VOS.REUSE_SUPPORTS else "off", output)
    summary = vos.run(cfg, job)
    print(f"{dataset}: {summary['videos']} videos ({summary['resumed']} done by an earlier run), "
          f"{summary['frames']} frames, {summary['fps']:.2f} frames/s; results in {output}")
    meta = MetadataCatalog.get(dataset)
    if "zip" in summary:
        print(f"Submit {summary['zip']} to the YouTube-VOS evaluation server.")
    elif "scores" in summary:
        print(format_davis_tables(summary["scores"], meta.split))
    elif meta.has_full_gt:
        root = f" --dataset-root {args.dataset_root}" if args.dataset_root else ""
        print(f"Score with: python inference_vos/eval_davis.py{root} --results {output} "
              f"--set {meta.split} --year {meta.year}")
    else:
        print(f"Zip the sequence folders of {output} and submit them to the DAVIS server.")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, run; one ``error:`` line and exit status 1/2 on failure."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args, {"mem_size": 1, "batch_size": 1})
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
