#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Calibrate the presence decision on the training classes: per presence signal, AUROC and the
threshold of best F1 (or of a target precision), written as a config fragment.

  python tools/calibrate_presence.py --config-file CFG --output DIR [--episodes 200] \\
      [--precision 0.9] [--held-out DATASET] [KEY VALUE ...]
"""

import logging
import os
import sys

from diffews.cli import entry_parser, load_entry_config, preflight, run_cli

EPILOG = """\
Episodes come from the first dataset of DATASETS.TRAIN (the training classes only), seeded by
--seed: a class, --shot supports of it, a positive query (another image of the class) and a
negative query (an image without the class). Every signal (score, peak, attention) is measured in
the same query pass. The signal of highest AUROC is chosen; DIR/presence.yaml holds
MODEL.DIFFEWS.PRESENCE_SIGNAL and PRESENCE_THRESHOLD (pass it on with another --config-file's
_BASE_ or as KEY VALUE overrides), DIR/presence_calibration.json every number. --held-out DATASET
also reports each signal's AUROC and the calibrated threshold's precision and recall on DATASET
(never used to choose). Exit 2 for a wrong command line or config, 1 for files or data.
"""


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, output_help="where presence.yaml "
                     "and presence_calibration.json are written", device=True)
    p.add_argument("--episodes", type=int, default=200, help="episodes (each: one positive and "
                   "one negative query; default 200)")
    p.add_argument("--shot", type=int, default=1, help="supports per episode (default 1)")
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument("--precision", type=float, default=None, metavar="P",
                   help="threshold: the lowest reaching this precision of 'present' (default: "
                   "best F1)")
    p.add_argument("--held-out", default=None, metavar="DATASET",
                   help="a registered test dataset to report the calibration on")
    return p


def main(args) -> int:
    from detectron2.utils.logger import setup_logger

    from diffews.cli import UsageError
    from diffews.predictor import build_predictor
    from diffews.tasks.presence import calibrate, config_fragment, dataset_episodes, measure_signals
    from diffews.utils.atomic import atomic_write, atomic_write_json

    setup_logger(name="diffews", abbrev_name="diffews")
    cfg = load_entry_config(args)
    if not cfg.DATASETS.TRAIN:
        raise UsageError("DATASETS.TRAIN is empty: calibration draws from the training classes")
    if args.episodes < 1 or args.shot < 1:
        raise UsageError("--episodes and --shot must be >= 1")
    if args.precision is not None and not 0 < args.precision <= 1:
        raise UsageError(f"--precision must be in (0, 1], got {args.precision}")
    preflight(cfg, output_dir=args.output, weights=[cfg.MODEL.WEIGHTS])
    train = cfg.DATASETS.TRAIN[0]
    episodes = dataset_episodes(train, args.episodes, args.shot, args.seed)
    held = dataset_episodes(args.held_out, args.episodes, args.shot, args.seed) \
        if args.held_out else None
    cfg.freeze()
    predictor = build_predictor(cfg)
    samples = measure_signals(predictor, train, episodes)
    held_samples = measure_signals(predictor, args.held_out, held) if held else None
    report = calibrate(samples, args.precision, held_samples)
    report.update(dataset=train, held_out_dataset=args.held_out, episodes=args.episodes,
                  shot=args.shot, seed=args.seed, precision_target=args.precision)
    os.makedirs(args.output, exist_ok=True)
    atomic_write_json(report, os.path.join(args.output, "presence_calibration.json"), indent=2)
    atomic_write(os.path.join(args.output, "presence.yaml"), config_fragment(report))
    print(f"{train}: {report['positives']} positive / {report['negatives']} negative queries")
    head = "signal      AUROC  threshold  precision  recall"
    print(head + ("   | held-out AUROC  precision  recall" if held else ""))
    for name, r in report["signals"].items():
        line = (f"{name:<10} {r['AUROC']:6.3f}  {r['threshold']:9.4f}  {r['precision']:9.3f}  "
                f"{r['recall']:6.3f}")
        if held:
            h = r["held_out"]
            line += f"   | {h['AUROC']:14.3f}  {h['precision']:9.3f}  {h['recall']:6.3f}"
        print(line)
    print(f"chosen: {report['chosen']}; config fragment: "
          f"{os.path.join(args.output, 'presence.yaml')}")
    print(config_fragment(report), end="")
    logging.getLogger("diffews").info("presence calibration written to %s", args.output)
    return 0


def cli(argv=None) -> int:
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
