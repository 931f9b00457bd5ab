#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Quick start: train a tiny DiffewS on the built-in synthetic benchmark on the CPU, then score it
against two trivial baselines on held-out classes and save a picture of predictions.

  python tools/quickstart.py [--output output/quickstart] [--fresh]
"""

import argparse
import json
import logging
import os
import time

from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image

from diffews import DiffewSCheckpointer
from diffews.config import load_config
from diffews.data.episode_dataset import build_fss_test_loader
from diffews.evaluation import FSSEvaluator
from diffews.quickstart import evaluate_with_baselines, format_table, prepare_tiny_sd
from diffews.utils.visualize import episode_grid
from train_net import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/quickstart", help="where everything is written")
    p.add_argument("--fresh", action="store_true", help="retrain instead of resuming a finished run")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = p.parse_args()
    setup_logger(name="diffews")
    log = logging.getLogger("diffews")
    start = time.perf_counter()

    sd = prepare_tiny_sd(os.path.join(args.output, "tiny_sd"))
    opts = ["MODEL.DIFFEWS.PRETRAINED", sd, "OUTPUT_DIR", os.path.join(args.output, "train"), *args.opts]
    train_args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, *([] if args.fresh else ["--resume"]), *opts])
    for handler in list(log.handlers):  # train_net's setup adds its own (console + log file);
        log.removeHandler(handler)      # two console handlers would print every line twice
    train_main(train_args)
    train_time = time.perf_counter() - start

    cfg = load_config(CONFIG, opts)
    model = build_model(cfg).eval()
    DiffewSCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    dataset = cfg.DATASETS.TEST[0]
    results = evaluate_with_baselines(
        model, lambda: build_fss_test_loader(cfg, dataset),
        lambda: FSSEvaluator(dataset, distributed=False))
    table = format_table(results)

    episodes = [b[0] for _, b in zip(range(6), build_fss_test_loader(cfg, dataset))]
    picture = os.path.join(args.output, "predictions.png")
    Image.fromarray(episode_grid(episodes, model(episodes))).save(picture)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    total = time.perf_counter() - start
    log.info("done in %.0f s (training included: %.0f s)", total, train_time)
    print(f"\nSynthetic benchmark, held-out classes, {cfg.TEST.FSS.SHOT}-shot, same episodes for all:\n")
    print(table)
    print(f"\nPredictions (query with ground truth | prediction | decoded | supports): {picture}")


if __name__ == "__main__":
    main()
