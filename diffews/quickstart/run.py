# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start (``tools/quickstart.py``): train a tiny DiffewS on the built-in synthetic
benchmark through the same training code as real runs (``engine.train``, the config
``configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml``), then score it and two trivial
baselines on the same held-out episodes with the same evaluator, print the table and save a
picture of predictions. With the presence overrides of that config's comment (absent-target
episodes and a presence head, opt-in) it also calibrates the presence decision on the *training*
classes into ``train/model_final.pth`` (``presence.py``) and scores the model on as many
absent-target episodes too (its presence AUROC and what its calibrated threshold empties). With
``model="sine"`` a tiny SINE is trained too (``sine.py``) and scored beside them on the same
held-out episodes."""

import logging
import os
import time
from typing import Dict, Optional, Sequence

from detectron2.modeling import build_model
from PIL import Image

from .. import engine
from ..checkpoint import DiffewSCheckpointer
from ..cli import load_config_checked
from ..cli.preflight import check_datasets, preflight
from ..data.episodes import build_fss_test_loader
from ..evaluation import FSSEvaluator
from ..evaluation.fss_loop import evaluate_episodes
from ..utils.atomic import atomic_write_json
from ..utils.visualize import episode_grid
from .baselines import evaluate_with_baselines, format_table, prepare_tiny_sd
from .presence import PRESENCE_EPISODES, calibrate_weights, presence_loader

logger = logging.getLogger(__name__)

__all__ = ["CONFIG", "quickstart"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def quickstart(output: str, fresh: bool = False, opts: Sequence[str] = (),
               device: Optional[str] = None, model: str = "diffews",
               sine_opts: Sequence[str] = (),
               presence_episodes: int = PRESENCE_EPISODES) -> Dict[str, Dict]:
    """The whole quick start in ``output`` (``tiny_sd/``, ``train/``, ``results.json``,
    ``predictions.png``; with SINE also ``sine/``); a finished training is resumed unless
    ``fresh``.

    Args:
        opts: config overrides ``[KEY, VALUE, ...]`` of the quick start's config.
        device: ``MODEL.DEVICE`` (None: the config's).
        model: "diffews", or "sine": the tiny SINE too, scored beside DiffewS (``sine.py``).
        sine_opts: config overrides of the SINE quick start's config.
        presence_episodes: training-class episodes of the presence calibration.
    Returns:
        {method: {"mIoU", "FB-IoU"}} of the model(s) and the two baselines; a model that learned
        presence also has "presence-AUROC", "absent-empty-at-threshold",
        "present-empty-at-threshold" (% of the absent / present queries its calibrated
        threshold empties) and "presence-threshold".
    """
    if model not in ("diffews", "sine"):
        raise ValueError(f"quick start model must be 'diffews' or 'sine', got {model!r}")
    start = time.perf_counter()
    flags = ["OUTPUT_DIR", os.path.join(output, "train")] + (
        ["MODEL.DEVICE", device] if device else [])
    load_config_checked(CONFIG, list(opts) + flags)  # a wrong override fails now, not after the VAE
    sd = prepare_tiny_sd(os.path.join(output, "tiny_sd"))
    cfg = load_config_checked(CONFIG, list(opts) + flags + ["MODEL.DIFFEWS.PRETRAINED", sd])
    cfg.freeze()
    preflight(cfg, output_dir=cfg.OUTPUT_DIR, output_key="OUTPUT_DIR")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN", required=True)
    for handler in list(logging.getLogger("diffews").handlers):  # engine.setup adds its own
        logging.getLogger("diffews").removeHandler(handler)     # (two would print lines twice)
    engine.setup(cfg)
    engine.train(cfg, resume=not fresh)
    train_time = time.perf_counter() - start

    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    diffews = build_model(cfg).eval()
    DiffewSCheckpointer(diffews).load(weights)
    if diffews.presence_head is not None or cfg.INPUT.FEW_SHOT.NEGATIVE_RATIO > 0:
        calibrate_weights(diffews, cfg, weights, presence_episodes)
    dataset = cfg.DATASETS.TEST[0]
    results = evaluate_with_baselines(
        {"DiffewS (tiny)": diffews}, lambda: build_fss_test_loader(cfg, dataset),
        lambda: FSSEvaluator(dataset, distributed=False),
        presence=presence_loader(cfg, dataset, diffews))
    if model == "sine":  # the same present-target episodes as the baselines' (no presence)
        from .sine import SINEAtEpisodeSize, one_thread, train_sine

        sine_start = time.perf_counter()
        _, sine = train_sine(output, fresh, sine_opts, device)
        logger.info("SINE trained in %.0f s", time.perf_counter() - sine_start)
        with one_thread():
            res = evaluate_episodes(SINEAtEpisodeSize(sine), build_fss_test_loader(cfg, dataset),
                                    FSSEvaluator(dataset, distributed=False),
                                    desc="SINE (tiny)")["fss"]
        order = list(results)
        results["SINE (tiny)"] = {k: res[k] for k in ("mIoU", "FB-IoU")}
        results = {k: results[k] for k in order[:1] + ["SINE (tiny)"] + order[1:]}
    episodes = [b[0] for _, b in zip(range(6), build_fss_test_loader(cfg, dataset))]
    picture = os.path.join(output, "predictions.png")
    Image.fromarray(episode_grid(episodes, diffews(episodes))).save(picture)
    atomic_write_json(results, os.path.join(output, "results.json"), indent=2)
    logger.info("done in %.0f s (training included: %.0f s)", time.perf_counter() - start,
                train_time)
    print(f"\nSynthetic benchmark, held-out classes, {cfg.TEST.FSS.SHOT}-shot, same episodes "
          f"for all:\n")
    print(format_table(results))
    mine = results["DiffewS (tiny)"]
    if "presence-AUROC" in mine:
        print(f"\nPresence, on the same episodes plus as many absent-target ones (a query without "
              f"the supports' class): AUROC x100 of the signal "
              f"'{diffews.presence_signal}'; the share of absent / present queries given an empty "
              f"mask at its threshold {mine['presence-threshold']:.4g} (calibrated on the "
              f"training classes, carried by {weights}, applied by DiffewSPredictor; mIoU and "
              f"FB-IoU are without it, as the benchmark protocol).")
    print(f"\nPredictions (query with ground truth | prediction | decoded | supports): {picture}")
    return results
