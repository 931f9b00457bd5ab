# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start's scaffolding: a tiny random Stable Diffusion folder (``tiny_sd``), its VAE
warmed up as an autoencoder (``vae_warmup``), and the train-then-score run with two baselines
(``run``, called by ``tools/quickstart.py``)."""

from .run import evaluate_with_baselines, format_table, prepare_tiny_sd

__all__ = ["evaluate_with_baselines", "format_table", "prepare_tiny_sd"]
