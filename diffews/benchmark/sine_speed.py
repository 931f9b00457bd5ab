# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE speed: seconds per 1-shot FSS episode and peak memory, random weights of the released
shape (DINOv2-L, decoder 256 wide, 6 layers, 200 queries) at 518 px padded to 896.

    python -m diffews.benchmark.sine_speed [--repeats 3] [--shots 1] [--device cpu]

Each episode is ``SINE.forward`` on random pixels (query and supports at the working size):
DINOv2 over 1 + K padded images, pooling, the decoder and the readout. The first episode is a
warm-up; the median of the next ``repeats`` is reported, with the process's peak resident set
(or CUDA's allocator peak) and the peak above the loaded model during one episode.
"""

import argparse
import json
import logging
import statistics
import time
from typing import Dict, List, Sequence

import torch

from .episodes import random_episode
from ..utils.timing import peak_gib, peak_memory_of, sync

logger = logging.getLogger(__name__)

__all__ = ["build_random_sine", "time_fss_episodes", "measure"]


def build_random_sine(image_size: int = 518, pad_size: int = 896, device: str = "cpu",
                      opts: Sequence = (), seed: int = 0):
    """A SINE of configs/sine/Base-SINE.yaml's shape with random weights (no file read)."""
    import os

    from detectron2.modeling import build_model

    from ..config import build_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = build_config(os.path.join(root, "configs", "sine", "Base-SINE.yaml"), [
        "MODEL.DEVICE", device, "MODEL.SINE.IMAGE_SIZE", image_size, "MODEL.SINE.PAD_SIZE",
        pad_size, "INPUT.IMAGE_SIZE", image_size, *opts])
    torch.manual_seed(seed)
    return build_model(cfg).eval()


@torch.no_grad()
def time_fss_episodes(model, shots: int = 1, repeats: int = 3, warmup: int = 1,
                      seed: int = 0) -> List[float]:
    """Wall seconds of ``repeats`` FSS episodes after ``warmup`` untimed ones."""
    size = model.image_size
    episodes = [random_episode(shots, size, seed + i) for i in range(warmup + repeats)]
    times = []
    for i, episode in enumerate(episodes):
        sync(model.device)
        start = time.perf_counter()
        model([episode])
        sync(model.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def measure(image_size: int = 518, pad_size: int = 896, shots: int = 1, repeats: int = 3,
            warmup: int = 1, device: str = "cpu", opts: Sequence = ()) -> Dict:
    """Build a random SINE and time its FSS episodes.

    Returns:
        dict with "seconds_per_episode" (median), "seconds" (each timed episode),
        "build_seconds", "parameters" (millions), "peak_gib" (process peak resident set on the
        CPU, CUDA allocator peak on a GPU), "episode_peak_gib" (above the loaded model, one
        episode), "threads", "device", "image_size", "pad_size", "shots".
    """
    start = time.perf_counter()
    model = build_random_sine(image_size, pad_size, device, opts)
    build = time.perf_counter() - start
    times = time_fss_episodes(model, shots, repeats, warmup)
    dev = torch.device(device)
    episode_peak = peak_memory_of(lambda: time_fss_episodes(model, shots, 1, 0, seed=99), dev)
    peak = peak_gib(dev)
    return {"seconds_per_episode": statistics.median(times), "seconds": times,
            "build_seconds": build,
            "parameters": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_gib": peak, "episode_peak_gib": episode_peak,
            "threads": torch.get_num_threads(), "device": str(dev),
            "image_size": image_size, "pad_size": pad_size, "shots": shots}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--pad-size", type=int, default=896)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.image_size, args.pad_size, args.shots, args.repeats,
                     device=args.device)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
