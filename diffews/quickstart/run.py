# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start (``tools/quickstart.py``): train a tiny DiffewS on the built-in synthetic
benchmark through the same training code as real runs (``engine.train``, the config
``configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml``), then score it and two trivial
baselines on the same held-out episodes with the same evaluator, print the table and save a
picture of predictions. With ``model="sine"`` a tiny SINE is trained too (``sine.py``) and
scored beside them on the same episodes."""

import logging
import os
import time
from contextlib import nullcontext
from typing import Dict, Optional, Sequence

from detectron2.modeling import build_model
from PIL import Image

from .. import engine
from ..checkpoint import DiffewSCheckpointer
from ..cli import load_config_checked
from ..cli.preflight import check_datasets, preflight
from ..data.episodes import build_fss_test_loader
from ..evaluation import FSSEvaluator
from ..utils.atomic import atomic_write_json
from ..utils.visualize import episode_grid
from .baselines import evaluate_with_baselines, format_table, prepare_tiny_sd

logger = logging.getLogger(__name__)

__all__ = ["CONFIG", "quickstart"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def quickstart(output: str, fresh: bool = False, opts: Sequence[str] = (),
               device: Optional[str] = None, model: str = "diffews",
               sine_opts: Sequence[str] = ()) -> Dict[str, Dict]:
    """The whole quick start in ``output`` (``tiny_sd/``, ``train/``, ``results.json``,
    ``predictions.png``; with SINE also ``sine/``); a finished training is resumed unless
    ``fresh``.

    Args:
        opts: config overrides ``[KEY, VALUE, ...]`` of the quick start's config.
        device: ``MODEL.DEVICE`` (None: the config's).
        model: "diffews", or "sine": the tiny SINE too, scored beside DiffewS (``sine.py``).
        sine_opts: config overrides of the SINE quick start's config.
    Returns:
        {method: {"mIoU", "FB-IoU"}} of the model(s) and the two baselines.
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

    diffews = build_model(cfg).eval()
    DiffewSCheckpointer(diffews).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    models = {"DiffewS (tiny)": diffews}
    context = nullcontext()
    if model == "sine":
        from .sine import SINEAtEpisodeSize, one_thread, train_sine

        sine_start = time.perf_counter()
        _, sine = train_sine(output, fresh, sine_opts, device)
        logger.info("SINE trained in %.0f s", time.perf_counter() - sine_start)
        models["SINE (tiny)"] = SINEAtEpisodeSize(sine)
        context = one_thread()
    dataset = cfg.DATASETS.TEST[0]
    with context:
        results = evaluate_with_baselines(
            models, lambda: build_fss_test_loader(cfg, dataset),
            lambda: FSSEvaluator(dataset, distributed=False))
    episodes = [b[0] for _, b in zip(range(6), build_fss_test_loader(cfg, dataset))]
    picture = os.path.join(output, "predictions.png")
    Image.fromarray(episode_grid(episodes, diffews(episodes))).save(picture)
    atomic_write_json(results, os.path.join(output, "results.json"), indent=2)
    logger.info("done in %.0f s (training included: %.0f s)", time.perf_counter() - start,
                train_time)
    print(f"\nSynthetic benchmark, held-out classes, {cfg.TEST.FSS.SHOT}-shot, same episodes "
          f"for all:\n")
    print(format_table(results))
    print(f"\nPredictions (query with ground truth | prediction | decoded | supports): {picture}")
    return results
