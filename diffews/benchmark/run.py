# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What ``tools/benchmark.py`` runs (its docstring says what each mode measures): ``timing`` (a
config's training iteration and inference episode), ``compare`` (inference paths side by side),
``suite`` (the GPU suite), ``accuracy`` (the speed modes' masks) and ``onnx_parts`` (each part in
torch and ONNX Runtime). Each takes the parsed command line and prints its tables."""

import itertools
import os
import tempfile
import time

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from ..cli import UsageError, load_entry_config, preflight
from ..engine.solver import build_optimizer
from ..engine.train_loop import EpisodeTrainer
from ..utils.timing import describe_peak, sync
from .episodes import random_episode

__all__ = ["MODELS", "QUICK_CONFIG", "timing", "compare", "suite", "accuracy", "onnx_parts",
           "sine", "sine_train", "original"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
MODELS = ("tiny", "mid", "sd21")


def bench_train(cfg, iters: int, warmup: int = 2) -> float:
    model = build_model(cfg).train()
    size, batch = cfg.INPUT.IMAGE_SIZE, cfg.SOLVER.IMS_PER_BATCH
    episodes = itertools.count()
    loader = ([random_episode(1 + (i % cfg.INPUT.FEW_SHOT.MAX_SHOT), size, i)
               for i in itertools.islice(episodes, batch)] for _ in itertools.count())
    clip = cfg.SOLVER.CLIP_GRADIENTS
    trainer = EpisodeTrainer(
        model,
        loader,
        build_optimizer(cfg, model),
        accumulation_steps=cfg.SOLVER.ACCUMULATION_STEPS,
        amp=cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else None,
        clip_norm=clip.CLIP_VALUE if clip.ENABLED else 0.0,
    )
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
    from ..modeling.onnx.attach import OnnxBackends, default_providers
    from ..modeling.onnx.export import require

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
    from .inference_paths import compare_paths
    from .measure import device_peak_gflops
    from .random_sd import build_random_diffews

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
            base = np.mean(r["latency"]["plain"])
            sets = ", ".join(f"{p} {s:.3f} s" for p, s in r["support_set_s"].items())
            speed = ", ".join(f"{p} {base / np.mean(r['latency'][p]):.2f}x"
                              for p in r["paths"][1:])
            print(f"\n{model_name}, {args.size} px, {shots}-shot; SupportSet encoded once: "
                  f"{sets} ({r['support_set_flops'] / 1e9:.1f} GFLOP); speed-up over "
                  f"plain: {speed}; 1-minute load average {os.getloadavg()[0]:.2f}")
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
    from .suite import append_to_benchmarks, format_rows, run_suite

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
        path = os.path.join(ROOT, "tools", "BENCHMARKS.md")
        append_to_benchmarks(path, rows, name, "python tools/benchmark.py --suite gpu")
        print(f"rows appended to {path}")
    return 0


def accuracy(args) -> int:
    """Speed modes on the synthetic benchmark with the quick start's trained model."""
    from .modes import MODES, mode_accuracy, unavailable_modes

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
    """Per-part timings, interleaved: torch fp32 / bf16 vs ONNX Runtime session options vs
    OpenVINO; and the graphs' node counts before and after ORT's optimisation."""
    from ..utils.timing import load_average
    from .onnx_parts import format_nodes, format_parts, node_counts, part_timings

    threads = args.onnx_threads or torch.get_num_threads()
    for model_name in args.models or ["tiny"]:
        start = load_average()
        rows = part_timings(model_name, args.size, threads, args.reps)
        folder = rows.pop("export")
        print(format_parts(rows, f"\n{model_name} at {args.size} px, batch 1, medians of "
                           f"{args.reps} interleaved rounds (1-minute load average {start:.2f} "
                           f"at the start, {load_average():.2f} at the end):"))
        print(f"\nnodes per graph (ONNX Runtime level all; static: batch 1, 1 shot):\n"
              f"{format_nodes(node_counts(folder, threads))}")
    return 0


def sine(args) -> int:
    """Seconds per FSS episode and peak memory of SINE-L-shaped random weights at 518 px
    padded to 896 (``sine_speed.py``), --shots each, median of --reps after a warm-up."""
    import json

    from .sine_speed import measure

    for shots in args.shots:
        result = measure(518, 896, shots, args.reps, device=_device(args))
        result["load_average"] = list(os.getloadavg())
        print(json.dumps(result, indent=1))
    return 0


def sine_train(args) -> int:
    """Seconds per SINE training iteration and peak memory at the released recipe's shape
    (``sine_train_speed.py``: frozen DINOv2-L, 896 px, --batch samples), median of --reps after
    a warm-up."""
    import json

    from .sine_train_speed import measure

    result = measure(args.batch, args.reps, device=_device(args), amp=args.amp)
    result["load_average"] = list(os.getloadavg())
    print(json.dumps(result, indent=1))
    return 0


def _device(args) -> str:
    """--compare and --suite: --device, else CUDA when there is one."""
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def timing(args) -> int:
    """Seconds per training iteration and per inference episode of a config."""
    if args.tiny:
        from ..quickstart.tiny_sd import build_tiny_sd

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
    print(f"peak memory (GiB): {describe_peak(device)}")
    return 0


def original(args) -> int:
    """Our paths side by side with the original code (``original_side.py``)."""
    from .original_side import format_side_by_side, python_is_ours, side_by_side

    if not args.original_python:
        raise UsageError("--original needs --original-python: the interpreter of the original's "
                         "own environment (diffusers 0.25.0, transformers 4.36.2; "
                         "tools/README.md says how to make it)")
    if python_is_ours(args.original_python):
        raise UsageError("--original-python is this interpreter; the original needs its own "
                         "environment (diffusers 0.25.0, transformers 4.36.2)")
    print(f"CPU x {torch.get_num_threads()} threads; {args.episodes} episodes per setting, "
          "paths interleaved and paired per episode")
    for model_name in args.models or ["tiny"]:
        work = tempfile.mkdtemp(prefix=f"original_{model_name}_{args.size}_")
        for shots in args.shots:
            r = side_by_side(model_name, args.size, shots, args.episodes, args.original_python,
                             args.original, log=print, workdir=work)
            title = (f"\n{model_name}, {args.size} px, {shots}-shot, original code in torch "
                     f"{r['versions']['torch']}, diffusers {r['versions']['diffusers']}, "
                     f"transformers {r['versions']['transformers']}")
            print(format_side_by_side(r, title))
            print(format_profile(r["profile"]))
    return 0
