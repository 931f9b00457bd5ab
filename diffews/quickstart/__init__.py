# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start: a tiny random Stable Diffusion folder (``tiny_sd``), its VAE warmed up as an
autoencoder (``vae_warmup``), trivial baselines (``baselines``) and the train-then-score run
(``run.quickstart``, called by ``tools/quickstart.py``)."""

from .baselines import evaluate_with_baselines, format_table, prepare_tiny_sd
from .run import CONFIG, quickstart

__all__ = ["CONFIG", "evaluate_with_baselines", "format_table", "prepare_tiny_sd", "quickstart"]
