#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Time DiffewS: seconds per training iteration and per inference episode, and peak memory.

  python tools/benchmark.py --config-file CFG [--shots 1,5] [--iters 10] [KEY VALUE ...]
  python tools/benchmark.py --tiny            # the tiny random model of the tests, on the CPU
  python tools/benchmark.py --compare --model tiny,mid,sd21 --size 256 --shots 1,5 --episodes 10 [--profile 3]
  python tools/benchmark.py --suite gpu        # SD 2.1-shaped, 512 px, every speed mode, training
  python tools/benchmark.py --onnx-parts --model mid --size 256   # torch vs ORT / OpenVINO per part

Training iterations run the real EpisodeTrainer step (accumulation, AMP, clipping) on random
episodes at INPUT.IMAGE_SIZE; inference episodes run the model in eval mode with the support cache
off (every episode encodes its supports).

``--compare`` times three inference paths side by side on random-weight models built in memory
(``diffews/benchmark/random_sd.py``: tiny, mid-size SD-shaped, SD 2.1-shaped), paired and
interleaved episode by episode (``diffews/benchmark/paths.py``): (a) the original implementation's
per-episode work, (b) our default path, (c) one SupportSet reused for every query, and with
onnxruntime installed (d) (b) and (e) (c) on the ONNX Runtime backend (MODEL.DIFFEWS.BACKEND
onnxruntime; --onnx-optimization, --onnx-threads; --no-onnx leaves them out). It reports
episodes/s, p50/p90 latency, mask agreement with (a), FLOPs per episode (torch's FLOP counter;
a backend path is credited with its torch twin's FLOPs), achieved GFLOP/s against the device's
peak, and peak memory. ``--onnx-parts`` times each part (VAE encoder and decoder, support and
query pass) in torch, in ONNX Runtime under several session options and in OpenVINO (if
installed), on the same graphs (``diffews/benchmark/onnx_parts.py``).

``--suite gpu`` (``diffews/benchmark/suite.py``) runs, on a CUDA device in about 5 minutes,
SD 2.1-shaped random weights at 512 px: 1/5-shot x fp32/bf16 x compile off/on x batch 1/8
inference, and training steps with and without gradient checkpointing; it appends its rows,
with the device's name and the command, to tools/BENCHMARKS.md (``--no-record`` does not).
Recorded results: tools/BENCHMARKS.md. Lists are comma-separated (--shots 1,5, --model tiny,mid;
the older space-separated form still works, with a warning). Errors are one line (exit status 2:
command line or config, 1: files); --debug shows the traceback.
"""

import itertools
import os
import resource
import sys
import tempfile
import time

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.benchmark.episodes import random_episode
from diffews.cli import UsageError, add_list_argument, check_counts, entry_parser, \
    load_entry_config, parse_list, preflight, run_cli
from diffews.engine.solver import build_optimizer
from diffews.engine.train_loop import EpisodeTrainer

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
MODELS = ("tiny", "mid", "sd21")


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


def _backend(args, model, device):
    """The ONNX Runtime backend of --compare (None with --no-onnx or without onnxruntime),
    exported to a temporary folder now, so that the export is not timed."""
    if args.no_onnx:
        return None
    from diffews.modeling.onnx.attach import OnnxBackends, default_providers
    from diffews.modeling.onnx.export import require

    try:
        require("onnx")
        require("onnxruntime")
    except ImportError as e:
        print(f"ONNX Runtime paths not run: {e}")
        return None
    backends = OnnxBackends(tempfile.mkdtemp(prefix="compare_onnx_"), default_providers(device),
                            threads=args.onnx_threads or None,
                            optimization=args.onnx_optimization)
    start = time.perf_counter()
    backends.get(model, args.size)
    print(f"ONNX export at {args.size} px (checked against torch): "
          f"{time.perf_counter() - start:.1f} s; {backends.get(model, args.size)}, "
          f"optimisation {args.onnx_optimization}, threads {args.onnx_threads or 'torch'}")
    return backends


def compare(args):
    from diffews.benchmark.paths import compare_paths, device_peak_gflops
    from diffews.benchmark.random_sd import build_random_diffews

    device = torch.device(_device(args))
    peak = device_peak_gflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {name}; peak {peak:.0f} GFLOP/s (fp32); {args.episodes} episodes per setting, "
          "paths interleaved")
    for model_name in args.models or ["tiny"]:
        model = build_random_diffews(model_name).to(device)
        backend = _backend(args, model, device)
        for shots in args.shots:
            episodes = [random_episode(shots, args.size, 1000 + i) for i in range(args.episodes)]
            for e in episodes[1:]:  # one support set for all (so that (c) applies)
                e["support_images"] = episodes[0]["support_images"]
                e["support_masks"] = episodes[0]["support_masks"]
            r = compare_paths(model, episodes, profile_reps=args.profile, backend=backend)
            rows = []
            for p in r["paths"]:
                lat = np.array(r["latency"][p])
                gflop = r["flops"][p] / 1e9
                rows.append([p, f"{1 / lat.mean():.3f}", f"{np.percentile(lat, 50):.3f}",
                             f"{np.percentile(lat, 90):.3f}", f"{100 * r['agreement'][p]:.3f}%",
                             f"{gflop:.1f}", f"{gflop / np.median(lat):.1f}",
                             f"{100 * gflop / np.median(lat) / peak:.1f}%",
                             f"{1024 * r['memory_gib'][p]:.0f}"])
            base = np.mean(r["latency"]["reference"])
            sets = ", ".join(f"{p} {s:.3f} s" for p, s in r["support_set_s"].items())
            speed = ", ".join(f"{p} {base / np.mean(r['latency'][p]):.2f}x"
                              for p in r["paths"][1:])
            print(f"\n{model_name}, {args.size} px, {shots}-shot; SupportSet encoded once: "
                  f"{sets} ({r['support_set_flops'] / 1e9:.1f} GFLOP); speed-up over "
                  f"reference: {speed}; 1-minute load average {os.getloadavg()[0]:.2f}")
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
    from diffews.benchmark.suite import append_to_benchmarks, format_rows, run_suite

    device = torch.device(_device(args))
    model = (args.models or ["sd21"])[0]
    if device.type != "cuda" and model != "tiny":
        raise UsageError("--suite gpu needs a CUDA device; on a CPU only a dry run with --model "
                         "tiny --device cpu is possible")
    size = 512 if model != "tiny" else args.size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {name}; model {model}; {size} px")
    # a CPU dry run also runs the ONNX Runtime rows' code with the CPU execution provider
    runtimes = ("cuda", "tensorrt") if device.type == "cuda" else ("cpu", "cuda", "tensorrt")
    rows = run_suite(device, model, size, reps=args.reps, onnx_runtimes=runtimes)
    print(format_rows(rows))
    if not args.no_record:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARKS.md")
        append_to_benchmarks(path, rows, name, "python tools/benchmark.py --suite gpu")
        print(f"rows appended to {path}")
    return 0


def accuracy(args) -> int:
    """Speed modes on the synthetic benchmark with the quick start's trained model."""
    from diffews.benchmark.modes import MODES, mode_accuracy, unavailable_modes

    args.weights = os.path.join(ROOT, "output", "quickstart", "train", "model_final.pth")
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"{args.weights} not found; run `python tools/quickstart.py` first")
    args.shot = args.shots[0]
    cfg = load_entry_config(args, {"weights": "MODEL.WEIGHTS", "shot": "TEST.FSS.SHOT"},
                            config_file=args.config_file or QUICK_CONFIG)
    preflight(cfg, weights=[cfg.MODEL.WEIGHTS])
    missing = unavailable_modes()
    for name, why in missing.items():
        print(f"{name}: not run ({why})")
    rows = mode_accuracy(cfg, "synthetic_fss_test", [m for m in MODES if m not in missing],
                         log=lambda *a: None)
    print(tabulate([[k, f"{100 * v['agreement']:.3f}%", f"{v['mIoU']:.2f}", f"{v['FB-IoU']:.2f}",
                     f"{v['s_per_episode']:.3f}", f"{v['first_batch_s']:.2f}"]
                    for k, v in rows.items()],
                   headers=["mode", "mask agreement", "mIoU", "FB-IoU", "s / episode",
                            "first batch s (compile)"], tablefmt="github"))
    return 0


def onnx_parts(args) -> int:
    """Per-part timings: torch vs ONNX Runtime session options vs OpenVINO."""
    from diffews.benchmark.onnx_parts import format_parts, part_timings

    threads = args.onnx_threads or torch.get_num_threads()
    for model_name in args.models or ["tiny"]:
        rows = part_timings(model_name, args.size, threads, args.reps)
        print(format_parts(rows, f"\n{model_name} at {args.size} px, batch 1, fastest of "
                           f"{args.reps} (1-minute load average {os.getloadavg()[0]:.2f}):"))
    return 0


def _device(args) -> str:
    """--compare and --suite: --device, else CUDA when there is one."""
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     config="optional", output=None, device=True)
    p.add_argument("--accuracy", action="store_true", help="speed modes' effect on the synthetic "
                   "benchmark, with the quick start's trained model")
    p.add_argument("--compare", action="store_true", help="time the three inference paths")
    p.add_argument("--suite", choices=["gpu"], default=None, help="the GPU suite")
    p.add_argument("--no-record", action="store_true",
                   help="--suite: print only, do not append to tools/BENCHMARKS.md")
    add_list_argument(p, "--model", default=None, metavar="NAME,...",
                      help=f"from {list(MODELS)}; --compare: random-weight models to build "
                      "(default tiny); --suite: the model (default sd21)")
    p.add_argument("--reps", type=int, default=5, help="--suite: timed calls per setting")
    p.add_argument("--size", type=int, default=64, help="--compare: working size (px)")
    p.add_argument("--episodes", type=int, default=10, help="--compare: timed episodes")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="--compare: also time each path's stages over N calls")
    p.add_argument("--no-onnx", action="store_true",
                   help="--compare: leave out the ONNX Runtime backend's paths")
    p.add_argument("--onnx-optimization", default="all",
                   choices=["all", "extended", "basic", "disable"],
                   help="--compare: ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--onnx-threads", type=int, default=0, metavar="N",
                   help="--compare, --onnx-parts: ONNX Runtime intra-op threads (0: torch's)")
    p.add_argument("--onnx-parts", action="store_true", help="time each part in torch, ONNX "
                   "Runtime (several session options) and OpenVINO on the same graphs")
    p.add_argument("--tiny", action="store_true", help="benchmark the tiny random test model")
    add_list_argument(p, "--shots", default="1,5", metavar="K,...",
                      help="supports per episode (default 1,5)")
    p.add_argument("--iters", type=int, default=10)
    return p


def parse_args(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    try:
        args.shots = parse_list(args.shots, int, "--shots")
        args.models = parse_list(args.model, str, "--model")
    except ValueError as e:
        p.error(str(e))
    bad = [m for m in args.models or [] if m not in MODELS]
    if bad:
        p.error(f"--model: {bad} not in {list(MODELS)}")
    if not args.shots or min(args.shots) < 1:
        p.error("--shots: at least one shot, each >= 1")
    check_counts(p, args, {"reps": 1, "size": 8, "episodes": 1, "profile": 0, "iters": 1,
                           "onnx_threads": 0})
    return args


def timing(args) -> int:
    """Seconds per training iteration and per inference episode of a config."""
    if args.tiny:
        from diffews.quickstart.tiny_sd import build_tiny_sd

        args.pretrained = build_tiny_sd(tempfile.mkdtemp(prefix="tiny_sd_"))
    cfg = load_entry_config(args, {"pretrained": "MODEL.DIFFEWS.PRETRAINED"},
                            config_file=args.config_file or QUICK_CONFIG)
    preflight(cfg)
    device = torch.device(cfg.MODEL.DEVICE)
    rows = [["train iteration", f"{bench_train(cfg, args.iters):.3f} s",
             f"batch {cfg.SOLVER.IMS_PER_BATCH} x accumulation {cfg.SOLVER.ACCUMULATION_STEPS}, "
             f"K in 1..{cfg.INPUT.FEW_SHOT.MAX_SHOT}, AMP "
             f"{cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else 'off'}"]]
    for k in args.shots:
        rows.append([f"inference episode, {k}-shot", f"{bench_inference(cfg, k, args.iters):.3f} s",
                     ""])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {name}; image size {cfg.INPUT.IMAGE_SIZE}; UNet from "
          f"{cfg.MODEL.DIFFEWS.PRETRAINED}")
    print(tabulate(rows, headers=["what", "time", "setting"], tablefmt="github"))
    print(f"peak memory (GiB): {peak_memory_gib(device)}")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, run the chosen benchmark; one ``error:`` line and exit 1/2."""
    args = parse_args(argv)
    run = compare if args.compare else suite if args.suite else accuracy if args.accuracy \
        else onnx_parts if args.onnx_parts else timing
    return run_cli(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
