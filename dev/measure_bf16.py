#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""bf16 as a CPU speed mode: whole episodes of a random model (``diffews/benchmark/random_sd.py``)
in INFERENCE_DTYPE float32, bfloat16 and bfloat16_vae, interleaved per episode (rotating order),
BACKEND torch, support cache off; seconds per episode (medians) and each episode's mask agreement
with float32 (mean, worst).

  python dev/measure_bf16.py --model mid --size 256 --shots 1 --episodes 6
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from diffews.benchmark.episodes import random_episode  # noqa: E402
from diffews.benchmark.random_sd import build_random_diffews  # noqa: E402
from diffews.utils.timing import load_average  # noqa: E402

DTYPES = ("float32", "bfloat16", "bfloat16_vae")


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mid")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--episodes", type=int, default=6)
    args = p.parse_args()
    models = {d: build_random_diffews(args.model, 0, inference_dtype=d, support_cache_size=0)
              for d in DTYPES}
    episodes = [random_episode(args.shots, args.size, 2000 + i) for i in range(args.episodes)]
    start_load = load_average()
    for m in models.values():  # warm-up
        m([episodes[0]])
    secs = {d: [] for d in DTYPES}
    agree = {d: [] for d in DTYPES}
    for i, e in enumerate(episodes):
        order = DTYPES[i % 3:] + DTYPES[:i % 3]
        masks = {}
        for d in order:
            t = time.perf_counter()
            masks[d] = models[d]([e])[0]["pred_mask"]
            secs[d].append(time.perf_counter() - t)
        for d in DTYPES:
            agree[d].append((masks[d] == masks["float32"]).float().mean().item())
    base = statistics.median(secs["float32"])
    print(f"{args.model}, {args.size} px, {args.shots}-shot, {args.episodes} episodes, "
          f"{torch.get_num_threads()} threads; 1-minute load average {start_load:.2f} at the "
          f"start, {load_average():.2f} at the end")
    print("| INFERENCE_DTYPE | s / episode (median) | speed-up | mask agreement (mean) | worst |")
    print("|---|---|---|---|---|")
    for d in DTYPES:
        med = statistics.median(secs[d])
        print(f"| {d} | {med:.3f} | {base / med:.2f}x | {100 * statistics.mean(agree[d]):.3f}% "
              f"| {100 * min(agree[d]):.3f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
