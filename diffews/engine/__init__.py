# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from .run import evaluate, setup, train
from .trainer import DiffewSTrainer, create_ddp_model

__all__ = ["DiffewSTrainer", "create_ddp_model", "evaluate", "setup", "train"]
