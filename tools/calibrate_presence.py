#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Calibrate the presence decision on the training classes: per presence signal, AUROC and the
threshold of best F1 (or of a target precision) chosen on one half of the episodes and reported
on the other, written as a config fragment (and, if asked, into a copy of the weights).

  python tools/calibrate_presence.py --config-file CFG --output DIR [--episodes 200] \\
      [--precision 0.9] [--held-out DATASET] [--write-weights OUT.pth] [KEY VALUE ...]
"""

import logging
import os
import sys

from diffews.cli import entry_parser, load_entry_config, preflight, run_cli

EPILOG = """\
Episodes come from the first dataset of DATASETS.TRAIN (the training classes only), seeded by
--seed: a class, --shot supports of it, a positive query (another image of the class) and a
negative query (an image without the class). Every signal the model has (score, peak, attention;
head for a model with a presence head) is measured in the same query pass. The episodes are
split in two halves (seeded): the choice half chooses each signal's threshold and the signal of
highest AUROC, the report half reports them (never used to choose); --held-out DATASET also
reports on DATASET. A --precision target needs at least --min-true-positives true positives on
the choice half; when it cannot be reached, one line says so and the best-F1 threshold is used.
DIR/presence.yaml holds MODEL.DIFFEWS.PRESENCE_SIGNAL and PRESENCE_THRESHOLD (pass it on with
another --config-file's _BASE_ or as KEY VALUE overrides), DIR/presence_calibration.json every
number. --write-weights OUT.pth writes a copy of MODEL.WEIGHTS (a trainer .pth) that carries the
chosen signal and threshold: DiffewSPredictor then decides with them by default
(MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS). Exit 2 for a wrong command line or config, 1 for files
or data.
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
    p.add_argument("--min-true-positives", type=int, default=10, metavar="N",
                   help="true positives a --precision target needs on the choice half "
                   "(default 10)")
    p.add_argument("--write-weights", default=None, metavar="OUT.pth",
                   help="write a copy of MODEL.WEIGHTS (a trainer .pth) carrying the chosen "
                   "signal and threshold")
    return p


def print_report(report, held: bool) -> None:
    """The per-signal table (choice half | report half | held-out)."""
    print(f"{report['dataset']}: {report['positives']} positive / {report['negatives']} negative "
          f"queries; chosen on {report['choice_queries']}, reported on "
          f"{report['report_queries']}")
    head = ("signal     threshold | choice AUROC | report AUROC  prec.  recall  "
            "absent-empty present-empty")
    print(head + ("  | held-out AUROC  prec.  recall  absent-empty present-empty" if held else ""))
    for name, r in report["signals"].items():
        c, o = r["choice"], r["report"]
        line = (f"{name:<10} {r['threshold']:9.4f} | {c['AUROC']:12.3f} | {o['AUROC']:12.3f}  "
                f"{o['precision']:5.3f}  {o['recall']:6.3f}  {o['absent-empty']:11.1f}% "
                f"{o['present-empty']:12.1f}%")
        if held:
            h = r["held_out"]
            line += (f"  | {h['AUROC']:14.3f}  {h['precision']:5.3f}  {h['recall']:6.3f}  "
                     f"{h['absent-empty']:11.1f}% {h['present-empty']:12.1f}%")
        print(line)


def main(args) -> int:
    from detectron2.utils.logger import setup_logger

    from diffews.cli import UsageError
    from diffews.predictor import build_predictor
    from diffews.checkpoint import write_presence_calibration
    from diffews.tasks.presence import (calibrate, calibration_entry, config_fragment,
                                        dataset_episodes, measure_signals)
    from diffews.utils.atomic import atomic_write, atomic_write_json

    setup_logger(name="diffews", abbrev_name="diffews")
    cfg = load_entry_config(args)
    if not cfg.DATASETS.TRAIN:
        raise UsageError("DATASETS.TRAIN is empty: calibration draws from the training classes")
    if args.episodes < 2 or args.shot < 1:
        raise UsageError("--episodes must be >= 2 (one per half) and --shot >= 1")
    if args.precision is not None and not 0 < args.precision <= 1:
        raise UsageError(f"--precision must be in (0, 1], got {args.precision}")
    if args.min_true_positives < 1:
        raise UsageError(f"--min-true-positives must be >= 1, got {args.min_true_positives}")
    if args.write_weights and not cfg.MODEL.WEIGHTS.endswith(".pth"):
        raise UsageError(f"--write-weights copies MODEL.WEIGHTS, which must be a trainer "
                         f"checkpoint (.pth), got {cfg.MODEL.WEIGHTS!r}")
    preflight(cfg, output_dir=args.output, weights=[cfg.MODEL.WEIGHTS])
    train = cfg.DATASETS.TRAIN[0]
    episodes = dataset_episodes(train, args.episodes, args.shot, args.seed)
    held = dataset_episodes(args.held_out, args.episodes, args.shot, args.seed) \
        if args.held_out else None
    cfg.freeze()
    predictor = build_predictor(cfg)
    samples = measure_signals(predictor, train, episodes)
    held_samples = measure_signals(predictor, args.held_out, held) if held else None
    report = calibrate(samples, args.precision, held_samples, seed=args.seed,
                       min_true_positives=args.min_true_positives)
    report.update(dataset=train, held_out_dataset=args.held_out, episodes=args.episodes,
                  shot=args.shot, seed=args.seed, precision_target=args.precision)
    os.makedirs(args.output, exist_ok=True)
    atomic_write_json(report, os.path.join(args.output, "presence_calibration.json"), indent=2)
    atomic_write(os.path.join(args.output, "presence.yaml"), config_fragment(report))
    print_report(report, bool(held))
    if report["unreached"]:
        print(report["unreached"])
    print(f"chosen: {report['chosen']}; config fragment: "
          f"{os.path.join(args.output, 'presence.yaml')}")
    print(config_fragment(report), end="")
    if args.write_weights:
        out = write_presence_calibration(cfg.MODEL.WEIGHTS, calibration_entry(report),
                                         args.write_weights)
        print(f"weights carrying the calibration: {out}")
    logging.getLogger("diffews").info("presence calibration written to %s", args.output)
    return 0


def cli(argv=None) -> int:
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
