#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Time DiffewS: seconds per training iteration and per inference episode, and peak memory.

  python tools/benchmark.py --config-file CFG [--shots 1,5] [--iters 10] [KEY VALUE ...]
  python tools/benchmark.py --tiny            # the tiny random model of the tests, on the CPU
  python tools/benchmark.py --compare --model tiny,mid,sd21 --size 256 --shots 1,5 --episodes 10
  [--profile 3]
  python tools/benchmark.py --suite gpu        # SD 2.1-shaped, 512 px, every speed mode, training
  python tools/benchmark.py --onnx-parts --model mid --size 256   # torch vs ORT / OpenVINO per part
  python tools/benchmark.py --sine --shots 1 --reps 3  # SINE-L-shaped random weights, 518/896
  python tools/benchmark.py --sine-train --batch 1 --reps 2  # SINE training iteration, 896 px

Training iterations run the real EpisodeTrainer step (accumulation, AMP, clipping) on random
episodes at INPUT.IMAGE_SIZE; inference episodes run the model in eval mode with the support cache
off (every episode encodes its supports).

``--compare`` times three inference paths side by side on random-weight models built in memory
(``diffews/benchmark/random_sd.py``: tiny, mid-size SD-shaped, SD 2.1-shaped), paired and
interleaved episode by episode (``diffews/benchmark/inference_paths.py``): (a) the original
implementation's per-episode work, (b) our default path, (c) one SupportSet reused for every query,
and with onnxruntime installed (d) (b) and (e) (c) on the ONNX Runtime backend
(MODEL.DIFFEWS.BACKEND onnxruntime; --onnx-optimization, --onnx-threads; --no-onnx leaves them out).
It reports episodes/s, p50/p90 latency, mask agreement with (a), FLOPs per episode (torch's FLOP
counter; a backend path is credited with its torch twin's FLOPs), achieved GFLOP/s against the
device's peak, and peak memory. ``--onnx-parts`` times each part (VAE encoder and decoder, support
and query pass) in torch, in ONNX Runtime under several session options and in OpenVINO (if
installed), on the same graphs (``diffews/benchmark/onnx_parts.py``).

``--suite gpu`` (``diffews/benchmark/suite.py``) runs, on a CUDA device in about 5 minutes,
SD 2.1-shaped random weights at 512 px: 1/5-shot x fp32/bf16 x compile off/on x batch 1/8
inference, and training steps with and without gradient checkpointing; it appends its rows,
with the device's name and the command, to tools/BENCHMARKS.md (``--no-record`` does not).
Recorded results: tools/BENCHMARKS.md. Lists are comma-separated (--shots 1,5, --model tiny,mid;
the older space-separated form still works, with a warning). Errors are one line (exit status 2:
command line or config, 1: files); --debug shows the traceback.
"""

import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.benchmark.run import (MODELS, accuracy, compare, onnx_parts, original, sine,
                                   sine_train, suite, timing)
from diffews.cli import add_list_argument, check_counts, entry_parser, parse_list, run_cli


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     config="optional", output=None, device=True)
    p.add_argument("--accuracy", action="store_true", help="speed modes' effect on the synthetic "
                   "benchmark, with the quick start's trained model")
    p.add_argument("--compare", action="store_true", help="time the three inference paths")
    p.add_argument("--original", default=None, metavar="CHECKOUT",
                   help="time our paths side by side with the original code in this checkout "
                   "of aim-uofa/DiffewS d12c396 (with --original-python)")
    p.add_argument("--original-python", default=None, metavar="PY",
                   help="--original: the interpreter of the original's environment")
    p.add_argument("--suite", choices=["gpu"], default=None, help="the GPU suite")
    p.add_argument("--no-record", action="store_true",
                   help="--suite: print only, do not append to tools/BENCHMARKS.md")
    add_list_argument(p, "--model", default=None, metavar="NAME,...",
                      help=f"from {list(MODELS)}; --compare: random-weight models to build "
                      "(default tiny); --suite: the model (default sd21)")
    p.add_argument("--reps", type=int, default=5,
                   help="--suite: timed calls per setting; --onnx-parts: interleaved rounds")
    p.add_argument("--size", type=int, default=64,
                   help="--compare, --original, --onnx-parts: working size (px)")
    p.add_argument("--episodes", type=int, default=10, help="--compare, --original: timed episodes")
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
    p.add_argument("--sine", action="store_true", help="SINE-L-shaped random weights at 518 px "
                   "padded to 896: seconds per FSS episode (--shots, --reps) and peak memory")
    p.add_argument("--sine-train", action="store_true", help="SINE training iterations at the "
                   "released recipe's shape (frozen DINOv2-L, 896 px): seconds (--batch, --reps, "
                   "--amp) and peak memory")
    p.add_argument("--batch", type=int, default=1, help="--sine-train: samples per iteration")
    p.add_argument("--amp", choices=("float16", "bfloat16"), default=None,
                   help="--sine-train: autocast precision (default float32)")
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
                           "onnx_threads": 0, "batch": 1})
    return args


def cli(argv=None) -> int:
    """The command line: parse, run the chosen benchmark; one ``error:`` line and exit 1/2."""
    args = parse_args(argv)
    run = compare if args.compare else suite if args.suite else accuracy if args.accuracy \
        else onnx_parts if args.onnx_parts else original if args.original \
        else sine if args.sine else sine_train if args.sine_train else timing
    return run_cli(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
