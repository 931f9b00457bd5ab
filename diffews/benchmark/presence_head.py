# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What training the presence head alone on frozen weights costs (issue 28, the released-weights
path: ``configs/fss/coco20i/diffews_sd21_coco20i_fold0_presence_head.yaml``), at a model's real
shape with random weights (``random_sd.py``; no download).

Per iteration of one episode (K supports, ``random_episode``): the head-only training step (VAE
posterior samples, support pass, probed query pass, the head's loss, backward through the head
only, an AdamW step on its parameters) against the inference of the same episode (posterior
means, support pass, query pass, decode, readout: what every benchmark episode costs). Seconds
are this process's CPU time (``time.process_time``) with one torch thread, so that a shared
machine's neighbours do not count; the wall clock is reported beside them. Run::

    python -m diffews.benchmark.presence_head --model sd21 --size 512 --reps 2
"""

import argparse
import json
import resource
import time
from typing import Dict

import torch

__all__ = ["head_training_cost"]


def _timed(fn, reps: int) -> Dict[str, float]:
    fn()  # warm-up, not timed
    cpu, wall = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": min(cpu), "wall_s": min(wall)}


def head_training_cost(model_name: str = "sd21", size: int = 512, shots: int = 1,
                       reps: int = 2, hidden: int = 64) -> Dict:
    """Seconds per head-only training iteration and per inference episode, the head's size and
    the process's peak resident memory (``module docstring``)."""
    from .episodes import random_episode
    from .random_sd import build_random_diffews

    model = build_random_diffews(model_name, presence_hidden=hidden, train_head_only=True)
    head = model.presence_head
    episode = random_episode(shots, size, seed=0)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sum(model([episode]).values()).backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model([episode])

    trained = {k: v.clone() for k, v in model.unet.state_dict().items()}
    out = {"model": model_name, "size": size, "shots": shots, "threads":
           torch.get_num_threads(),
           "head_parameters": sum(p.numel() for p in head.parameters()),
           "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
           "head_only_train_step": _timed(train_step, reps),
           "inference_episode": _timed(inference, reps)}
    out["unet_unchanged"] = all(torch.equal(trained[k], v)
                                for k, v in model.unet.state_dict().items())
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd21", help="random_sd.MODEL_CONFIGS name")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(head_training_cost(args.model, args.size, args.shots, args.reps), indent=1))


if __name__ == "__main__":
    main()
