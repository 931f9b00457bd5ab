#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Time DiffewS: seconds per training iteration and per inference episode, and peak memory.

  python tools/benchmark.py --config-file CFG [--shots 1 5] [--iters 10] [KEY VALUE ...]
  python tools/benchmark.py --tiny            # the tiny random model of the tests, on the CPU
  python tools/benchmark.py --compare --model tiny mid sd21 --size 256 --shots 1 5 --episodes 10 [--profile 3]
  python tools/benchmark.py --suite gpu        # SD 2.1-shaped, 512 px, every speed mode, training

Training iterations run the real EpisodeTrainer step (accumulation, AMP, clipping) on random
episodes at INPUT.IMAGE_SIZE; inference episodes run the model in eval mode with the support cache
off (every episode encodes its supports).

``--compare`` times three inference paths side by side on random-weight models built in memory
(``diffews/benchmark/random_sd.py``: tiny, mid-size SD-shaped, SD 2.1-shaped), paired and
interleaved episode by episode (``diffews/benchmark/paths.py``): (a) the original implementation's
per-episode work, (b) our default path, (c) one SupportSet reused for every query. It reports
episodes/s, p50/p90 latency, mask agreement with (a), FLOPs per episode (torch's FLOP counter),
achieved GFLOP/s against the device's peak, and peak memory.

``--suite gpu`` (``diffews/benchmark/suite.py``) runs, on a CUDA device in about 5 minutes,
SD 2.1-shaped random weights at 512 px: 1/5-shot x fp32/bf16 x compile off/on x batch 1/8
inference, and training steps with and without gradient checkpointing; it appends its rows,
with the device's name and the command, to tools/BENCHMARKS.md (``--no-record`` does not).
Recorded results: tools/BENCHMARKS.md.
"""

import argparse
import itertools
import os
import resource
import tempfile
import time

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from diffews.config import load_config
from diffews.engine.solver import build_optimizer
from diffews.engine.train_loop import EpisodeTrainer
from diffews.benchmark.episodes import random_episode


def peak_memory_gib(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} (process RSS)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(cfg, iters: int, warmup: int = 2) -> float:
    model = build_model(cfg).train()
    size, batch = cfg.INPUT.IMAGE_SIZE, cfg.SOLVER.IMS_PER_BATCH
    episodes = itertools.count()
    loader = ([random_episode(1 + (i % cfg.INPUT.FEW_SHOT.MAX_SHOT), size, i)
               for i in itertools.islice(episodes, batch)] for _ in itertools.count())
    clip = cfg.SOLVER.CLIP_GRADIENTS
    trainer = EpisodeTrainer(
        model, loader, build_optimizer(cfg, model), accumulation_steps=cfg.SOLVER.ACCUMULATION_STEPS,
        amp=cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else None,
        clip_norm=clip.CLIP_VALUE if clip.ENABLED else 0.0)
    device = model.device
    with EventStorage() as storage:
        trainer.storage = storage
        for i in range(warmup + iters):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            trainer.iter = i
            trainer.run_step()
        sync(device)
    return (time.perf_counter() - start) / iters


@torch.no_grad()
def bench_inference(cfg, shots: int, episodes: int, warmup: int = 2) -> float:
    cfg = cfg.clone()
    cfg.MODEL.DIFFEWS.SUPPORT_CACHE_SIZE = 0
    model = build_model(cfg).eval()
    device = model.device
    for i in range(warmup + episodes):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        model([random_episode(shots, cfg.INPUT.IMAGE_SIZE, 1000 + i)])
    sync(device)
    return (time.perf_counter() - start) / episodes


def compare(args):
    from diffews.benchmark.paths import PATHS, compare_paths, device_peak_gflops
    from diffews.benchmark.random_sd import build_random_diffews

    device = torch.device(args.device)
    peak = device_peak_gflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {name}; peak {peak:.0f} GFLOP/s (fp32); {args.episodes} episodes per setting, "
          "paths interleaved")
    for model_name in args.model or ["tiny"]:
        model = build_random_diffews(model_name).to(device)
        for shots in args.shots:
            episodes = [random_episode(shots, args.size, 1000 + i) for i in range(args.episodes)]
            for e in episodes[1:]:  # one support set for all (so that (c) applies)
                e["support_images"] = episodes[0]["support_images"]
                e["support_masks"] = episodes[0]["support_masks"]
            r = compare_paths(model, episodes, profile_reps=args.profile)
            rows = []
            for p in PATHS:
                lat = np.array(r["latency"][p])
                gflop = r["flops"][p] / 1e9
                rows.append([p, f"{1 / lat.mean():.3f}", f"{np.percentile(lat, 50):.3f}",
                             f"{np.percentile(lat, 90):.3f}", f"{100 * r['agreement'][p]:.3f}%",
                             f"{gflop:.1f}", f"{gflop / np.median(lat):.1f}",
                             f"{100 * gflop / np.median(lat) / peak:.1f}%",
                             f"{1024 * r['memory_gib'][p]:.0f}"])
            base = 1 / np.mean(r["latency"]["reference"])
            print(f"\n{model_name}, {args.size} px, {shots}-shot; SupportSet encoded once in "
                  f"{r['support_set_s']:.3f} s ({r['support_set_flops'] / 1e9:.1f} GFLOP); "
                  f"speed-up over (a): default "
                  f"{1 / np.mean(r['latency']['default']) / base:.2f}x, reuse "
                  f"{1 / np.mean(r['latency']['reuse']) / base:.2f}x; reuse over default "
                  f"{np.mean(r['latency']['default']) / np.mean(r['latency']['reuse']):.2f}x")
            print(tabulate(rows, headers=["path", "episodes/s", "p50 s", "p90 s", "mask agreement",
                                          "GFLOP/episode", "GFLOP/s", "of peak", "peak mem MiB"],
                           tablefmt="github"))
            if r["profile"]:
                print(format_profile(r["profile"]))
        del model


def format_profile(profile) -> str:
    """Seconds per episode by stage, one column per path, with each stage's share."""
    stages = ["vae encode", "unet support pass", "unet query pass", "vae decode", "other"]
    def cell(times, stage):
        t = times.get(stage, 0.0)
        return f"{t:.3f} ({100 * t / times['total']:.0f}%)"

    rows = [[stage] + [cell(profile[p], stage) for p in profile] for stage in stages]
    rows.append(["total"] + [f"{profile[p]['total']:.3f}" for p in profile])
    return "stage profile, s per episode (share):\n" + tabulate(
        rows, headers=["stage", *profile], tablefmt="github")


def suite(args) -> int:
    import sys

    from diffews.benchmark.suite import append_to_benchmarks, format_rows, run_suite

    device = torch.device(args.device)
    model = (args.model or ["sd21"])[0]
    if device.type != "cuda" and model != "tiny":
        print("error: --suite gpu needs a CUDA device; on a CPU only a dry run with --model tiny "
              "--device cpu is possible", file=sys.stderr)
        return 2
    size = 512 if model != "tiny" else args.size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {name}; model {model}; {size} px")
    rows = run_suite(device, model, size, reps=args.reps)
    print(format_rows(rows))
    if not args.no_record:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARKS.md")
        append_to_benchmarks(path, rows, name, "python tools/benchmark.py --suite gpu")
        print(f"rows appended to {path}")
    return 0


def accuracy(args) -> int:
    """Speed modes on the synthetic benchmark with the quick start's trained model."""
    from diffews.benchmark.modes import mode_accuracy

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    weights = os.path.join(root, "output", "quickstart", "train", "model_final.pth")
    if not os.path.isfile(weights):
        print(f"error: {weights} not found; run `python tools/quickstart.py` first")
        return 1
    cfg = load_config(os.path.join(root, "configs", "quick_schedules",
                                   "diffews_tiny_synthetic_cpu.yaml"),
                      ["MODEL.WEIGHTS", weights, "TEST.FSS.SHOT", args.shots[0], *args.opts])
    rows = mode_accuracy(cfg, "synthetic_fss_test", log=lambda *a: None)
    print(tabulate([[k, f"{100 * v['agreement']:.3f}%", f"{v['mIoU']:.2f}", f"{v['FB-IoU']:.2f}",
                     f"{v['s_per_episode']:.3f}", f"{v['first_batch_s']:.2f}"]
                    for k, v in rows.items()],
                   headers=["mode", "mask agreement", "mIoU", "FB-IoU", "s / episode",
                            "first batch s (compile)"], tablefmt="github"))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accuracy", action="store_true", help="speed modes' effect on the synthetic "
                   "benchmark, with the quick start's trained model")
    p.add_argument("--compare", action="store_true", help="time the three inference paths")
    p.add_argument("--suite", choices=["gpu"], default=None, help="the GPU suite")
    p.add_argument("--no-record", action="store_true",
                   help="--suite: print only, do not append to tools/BENCHMARKS.md")
    p.add_argument("--model", nargs="+", default=None, choices=["tiny", "mid", "sd21"],
                   help="--compare: random-weight models to build (default tiny); --suite: the "
                   "model (default sd21)")
    p.add_argument("--reps", type=int, default=5, help="--suite: timed calls per setting")
    p.add_argument("--size", type=int, default=64, help="--compare: working size (px)")
    p.add_argument("--episodes", type=int, default=10, help="--compare: timed episodes")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="--compare: also time each path's stages over N calls")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config-file", default=None)
    p.add_argument("--tiny", action="store_true", help="benchmark the tiny random test model")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.compare:
        return compare(args)
    if args.suite:
        return suite(args)
    if args.accuracy:
        return accuracy(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(args.config_file or os.path.join(
        root, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml"))
    if args.tiny:
        from diffews.quickstart.tiny_sd import build_tiny_sd

        cfg.MODEL.DIFFEWS.PRETRAINED = build_tiny_sd(tempfile.mkdtemp(prefix="tiny_sd_"))
    cfg.merge_from_list(args.opts)
    device = torch.device(cfg.MODEL.DEVICE)
    rows = [["train iteration", f"{bench_train(cfg, args.iters):.3f} s",
             f"batch {cfg.SOLVER.IMS_PER_BATCH} x accumulation {cfg.SOLVER.ACCUMULATION_STEPS}, "
             f"K in 1..{cfg.INPUT.FEW_SHOT.MAX_SHOT}, AMP {cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else 'off'}"]]
    for k in args.shots:
        rows.append([f"inference episode, {k}-shot", f"{bench_inference(cfg, k, args.iters):.3f} s", ""])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {name}; image size {cfg.INPUT.IMAGE_SIZE}; UNet from {cfg.MODEL.DIFFEWS.PRETRAINED}")
    print(tabulate(rows, headers=["what", "time", "setting"], tablefmt="github"))
    print(f"peak memory (GiB): {peak_memory_gib(device)}")


if __name__ == "__main__":
    main()
