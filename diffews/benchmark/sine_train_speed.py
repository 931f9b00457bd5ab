# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE training speed: seconds per training iteration and peak memory, random weights of the
released shape (DINOv2-L frozen, neck and decoder 256 wide, 6 layers, 200 queries, the recipe's
loss with 12544 points and deep supervision) on in-context samples at 896 px.

    python tools/benchmark.py --sine-train [--batch 1] [--reps 2] [--device cpu]

One iteration is one ``EpisodeTrainer`` update (the trainer ``tools/train_net.py`` uses, one
accumulation step): the training forward (DINOv2 on the reference and target images under
``no_grad``, neck, pooling, decoder, matching, losses), backward, gradient clipping and the AdamW
step over the original's parameter groups. The first iteration is a warm-up; the median of the
next ``repeats`` is reported, with the process's peak resident set (CUDA: the allocator's peak)
and the peak above the built model during one iteration. The samples are random (normalised
noise images, 3 reference and 2 target ellipse instances of 2 classes, a crop pair).
"""

import itertools
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.structures import Instances

from ..utils.timing import peak_gib, peak_memory_of, sync

__all__ = ["random_sample", "build_sine_for_training", "time_training_steps", "measure"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_CONFIG = os.path.join(ROOT, "configs", "sine", "Base-SINE-Train.yaml")


def _ellipses(rng: np.random.RandomState, n: int, size: int) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.08, 0.3, 2) * size
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
    return torch.from_numpy(np.stack(masks))


def random_sample(size: int = 896, seed: int = 0) -> Dict:
    """One in-context sample (``data/incontext`` schema) of random data at ``size``: reference
    instances of classes [3, 3, 8], the target a crop pair keeping instances 1 and 2."""
    rng = np.random.RandomState(seed)

    def side(classes, ids):
        inst = Instances((size, size))
        inst.gt_classes = torch.tensor(classes)
        inst.ins_ids = torch.tensor(ids)
        inst.gt_masks = _ellipses(rng, len(classes), size)
        image = torch.from_numpy(rng.standard_normal((3, size, size)).astype(np.float32))
        return {"image": image, "instances": inst}

    return {"ref_dict": side([3, 3, 8], [1, 2, 3]), "tar_dict": side([3, 8], [2, 3])}


def build_sine_for_training(device: str = "cpu", opts: Sequence = (), seed: int = 0):
    """A SINE of ``configs/sine/Base-SINE-Train.yaml``'s shape (random weights, no file read)
    in training mode, and its config."""
    from detectron2.modeling import build_model

    from ..config import build_config

    cfg = build_config(TRAIN_CONFIG, ["MODEL.DEVICE", device, *opts])
    torch.manual_seed(seed)
    return build_model(cfg).train(), cfg


def time_training_steps(model, cfg, batch: int = 1, repeats: int = 2, warmup: int = 1,
                        size: Optional[int] = None, amp: Optional[str] = None) -> List[float]:
    """Wall seconds of ``repeats`` ``EpisodeTrainer`` updates after ``warmup`` untimed ones."""
    from detectron2.utils.events import EventStorage

    from ..engine.solver import build_optimizer
    from ..engine.train_loop import EpisodeTrainer

    size = size or cfg.INPUT.SINE_TRAIN.IMAGE_SIZE
    samples = [[random_sample(size, 10 * i + j) for j in range(batch)]
               for i in range(warmup + repeats)]
    loader = itertools.cycle(samples)
    trainer = EpisodeTrainer(model, loader, build_optimizer(cfg, model), accumulation_steps=1,
                             amp=amp, clip_norm=cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
    device = next(model.parameters()).device
    times = []
    with EventStorage() as storage:
        trainer.storage = storage
        for i in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            trainer.iter = i
            trainer.run_step()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def measure(batch: int = 1, repeats: int = 2, warmup: int = 1, device: str = "cpu",
            opts: Sequence = (), amp: Optional[str] = None) -> Dict:
    """Build the random SINE and time its training iterations.

    Returns:
        dict with "seconds_per_iteration" (median), "seconds" (each timed one),
        "build_seconds", "trainable_parameters" / "parameters" (millions), "peak_gib" (process
        peak resident set on the CPU, CUDA allocator peak on a GPU), "iteration_peak_gib" (above
        the built model, one iteration), "threads", "device", "image_size", "batch", "amp".
    """
    start = time.perf_counter()
    model, cfg = build_sine_for_training(device, opts)
    build = time.perf_counter() - start
    times = time_training_steps(model, cfg, batch, repeats, warmup, amp=amp)
    dev = torch.device(device)
    step_peak = peak_memory_of(lambda: time_training_steps(model, cfg, batch, 1, 0, amp=amp),
                               dev)
    return {"seconds_per_iteration": statistics.median(times), "seconds": times,
            "build_seconds": build,
            "trainable_parameters": sum(p.numel() for p in model.parameters()
                                        if p.requires_grad) / 1e6,
            "parameters": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_gib": peak_gib(dev), "iteration_peak_gib": step_peak,
            "threads": torch.get_num_threads(), "device": str(dev),
            "image_size": cfg.INPUT.SINE_TRAIN.IMAGE_SIZE, "batch": batch, "amp": amp or "off"}
