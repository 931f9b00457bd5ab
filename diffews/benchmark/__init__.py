# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Benchmark harness (``tools/benchmark.py``): the inference paths timed side by side
(``paths``), the GPU suite (``suite``), SD 2.1-shaped random models of any width
(``random_sd``) and seeded random episodes (``episodes``)."""
