#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised video object segmentation with DiffewS on DAVIS 2016/2017 or YouTube-VOS 2018.

  python inference_vos/run_vos.py --config-file configs/vos/Base-DAVIS17.yaml \
      --dataset davis17_val --output output/vos/davis17_val MODEL.WEIGHTS weight/coco_fold0
"""

import argparse
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from diffews.checkpoint import require_inference_weights  # noqa: E402
from diffews.data.datasets.common import dataset_root  # noqa: E402
from diffews.data.datasets.vos import VOS_DATASETS  # noqa: E402
from diffews.cli import (  # noqa: E402
    OneLineArgumentParser, UsageError, add_common_arguments, config_overrides, load_config_checked,
    run_cli,
)

EPILOG = """\
Per object, the first annotated frame with its given mask is a fixed support and up to
MEM_SIZE - 1 past predicted frames, chosen by score decayed linearly with their distance in time
(ratio DECAY_RATIO), are added; every frame is one query per object, VAE-encoded once, and each
memory entry is encoded once (diffews/tasks/vos.py). Frames are resized to INPUT.IMAGE_SIZE squared;
masks are written at the frame's size as palette PNGs in the official results layout:
<output>/<video>/<frame>.png (DAVIS) or <output>/Annotations/<video>/<frame>.png plus
<output>/submission.zip (YouTube-VOS). DAVIS val is scored at the end (global_results-val.csv,
per-sequence_results-val.csv in --output, as inference_vos/eval_davis.py does); DAVIS test-dev
and YouTube-VOS are scored by their servers. See inference_vos/README.md.
"""


def get_parser():
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG")
    p.add_argument("--dataset", default=None, choices=sorted(VOS_DATASETS),
                   help="registered VOS dataset (default: the config's DATASETS.TEST[0])")
    p.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS, "
                   "else ./datasets); see datasets/README.md")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="results folder (default <OUTPUT_DIR>/<dataset>)")
    p.add_argument("--mem-size", type=int, default=None, metavar="N",
                   help="supports per object incl. the first frame (TEST.VOS.MEM_SIZE)")
    p.add_argument("--decay-ratio", type=float, default=None, metavar="R",
                   help="linear score decay ratio, 0 = none (TEST.VOS.DECAY_RATIO)")
    p.add_argument("--no-reuse", action="store_true", help="re-encode every support on every "
                   "frame (TEST.VOS.REUSE_SUPPORTS False; same masks, slower)")
    p.add_argument("--videos", default=None, metavar="NAME[,NAME...]",
                   help="only these videos (comma-separated)")
    p.add_argument("--save-vis", action="store_true",
                   help="write <output>/vis/<video>.jpg: a strip of frames with the masks")
    p.add_argument("--no-eval", action="store_true", help="do not score DAVIS val at the end")
    return add_common_arguments(p)


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    opts = config_overrides(args)
    if args.mem_size is not None:
        opts += ["TEST.VOS.MEM_SIZE", str(args.mem_size)]
    if args.decay_ratio is not None:
        opts += ["TEST.VOS.DECAY_RATIO", str(float(args.decay_ratio))]
    if args.no_reuse:
        opts += ["TEST.VOS.REUSE_SUPPORTS", "False"]
    cfg = load_config_checked(args.config_file, opts)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset not in VOS_DATASETS:
        raise UsageError(f"--dataset: {dataset!r} is not a VOS dataset; choose from "
                         f"{', '.join(VOS_DATASETS)}")
    if cfg.TEST.VOS.MEM_SIZE < 1 or cfg.TEST.VOS.DECAY_RATIO < 0:
        raise UsageError(f"--mem-size must be >= 1 and --decay-ratio >= 0 (got "
                         f"{cfg.TEST.VOS.MEM_SIZE}, {cfg.TEST.VOS.DECAY_RATIO})")
    cfg.freeze()
    require_inference_weights(cfg)  # before reading the dataset and building the model
    from diffews.evaluation.vos_evaluation import format_davis_tables
    from diffews.tasks.vos import run_vos

    output = args.output or f"{cfg.OUTPUT_DIR.rstrip('/')}/{dataset}"
    logging.getLogger("diffews.run_vos").info(
        "%s: memory %d (first frame + %d), decay ratio %g, support reuse %s -> %s", dataset,
        cfg.TEST.VOS.MEM_SIZE, cfg.TEST.VOS.MEM_SIZE - 1, cfg.TEST.VOS.DECAY_RATIO,
        "on" if cfg.TEST.VOS.REUSE_SUPPORTS else "off", output)
    videos = [v for v in args.videos.split(",") if v] if args.videos else None
    summary = run_vos(cfg, dataset, output, root=args.root, videos=videos,
                      save_vis=args.save_vis, evaluate=not args.no_eval)
    print(f"{dataset}: {summary['videos']} videos, {summary['frames']} frames, "
          f"{summary['fps']:.2f} frames/s; results in {output}")
    meta = MetadataCatalog.get(dataset)
    if "zip" in summary:
        print(f"Submit {summary['zip']} to the YouTube-VOS evaluation server.")
    elif "scores" in summary:
        print(format_davis_tables(summary["scores"], meta.split))
    elif meta.has_full_gt:
        print(f"Score with: python inference_vos/eval_davis.py --davis-root "
              f"{os.path.join(dataset_root(args.root), 'DAVIS17', 'trainval')} --results {output} "
              f"--set {meta.split} --year {meta.year}")
    else:
        print(f"Zip the sequence folders of {output} and submit them to the DAVIS server.")
    return 0


if __name__ == "__main__":
    args = get_parser().parse_args()
    sys.exit(run_cli(lambda: main(args), args.debug))
