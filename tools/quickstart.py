#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Quick start: train a tiny DiffewS on the built-in synthetic benchmark on the CPU, then score it
against two trivial baselines on held-out classes and save a picture of predictions.

  python tools/quickstart.py [--output output/quickstart] [--fresh] [--device cpu] [KEY VALUE ...]

Config overrides (trailing KEY VALUE pairs or --opts) apply to
configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml, e.g. SOLVER.MAX_ITER 20 for a smoke run.
Errors are one line (exit status 2: command line or config, 1: files); --debug shows the
traceback.
"""

import logging
import os
import sys
import time

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews import DiffewSCheckpointer
from diffews.cli import config_overrides, entry_parser, load_entry_config, run_cli
from diffews.data.episode_dataset import build_fss_test_loader
from diffews.evaluation import FSSEvaluator
from diffews.quickstart import evaluate_with_baselines, format_table, prepare_tiny_sd
from diffews.utils.atomic import atomic_write_json
from diffews.utils.visualize import episode_grid

from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_net  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
DEFAULT_OUTPUT = "output/quickstart"


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], config="",
                     output="optional", device=True,
                     output_help=f"where everything is written (default {DEFAULT_OUTPUT})")
    p.add_argument("--fresh", action="store_true", help="retrain instead of resuming a finished run")
    return p


def run(args) -> int:
    setup_logger(name="diffews")
    log = logging.getLogger("diffews")
    start = time.perf_counter()
    output = args.output or DEFAULT_OUTPUT
    load_entry_config(args, config_file=CONFIG)  # a wrong override fails now, not after the VAE

    sd = prepare_tiny_sd(os.path.join(output, "tiny_sd"))
    train_argv = ["--config-file", CONFIG, *([] if args.fresh else ["--resume"]),
                  "--output", os.path.join(output, "train"),
                  *(["--device", args.device] if args.device else []),
                  "MODEL.DIFFEWS.PRETRAINED", sd]
    train_args = train_net.get_parser().parse_args(train_argv + config_overrides(args))
    for handler in list(log.handlers):  # train_net's setup adds its own (console + log file);
        log.removeHandler(handler)      # two console handlers would print every line twice
    train_net.check(train_args)
    train_net.main(train_args)
    train_time = time.perf_counter() - start

    cfg = load_entry_config(train_args, train_net.FLAGS)
    model = build_model(cfg).eval()
    DiffewSCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    dataset = cfg.DATASETS.TEST[0]
    results = evaluate_with_baselines(
        model, lambda: build_fss_test_loader(cfg, dataset),
        lambda: FSSEvaluator(dataset, distributed=False))
    table = format_table(results)

    episodes = [b[0] for _, b in zip(range(6), build_fss_test_loader(cfg, dataset))]
    picture = os.path.join(output, "predictions.png")
    Image.fromarray(episode_grid(episodes, model(episodes))).save(picture)
    atomic_write_json(results, os.path.join(output, "results.json"), indent=2)
    total = time.perf_counter() - start
    log.info("done in %.0f s (training included: %.0f s)", total, train_time)
    print(f"\nSynthetic benchmark, held-out classes, {cfg.TEST.FSS.SHOT}-shot, same episodes for all:\n")
    print(table)
    print(f"\nPredictions (query with ground truth | prediction | decoded | supports): {picture}")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, run; one ``error:`` line and exit status 1/2 on failure."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
