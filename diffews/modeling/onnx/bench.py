# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Per-part timings, torch vs ONNX Runtime under several session options, on a random model.

    python -m diffews.modeling.onnx.bench --model mid --size 256 --threads 2

Parts: VAE encoder and decoder (batch 1), support pass (1 support, stopped early) and query pass
(1 query, 1 shot), each the fastest of its repeats. Each ORT setting runs on the same inputs as torch, and its max abs difference
is printed beside its time, so a fast but wrong setting shows.
"""

import argparse
import tempfile
import time
from typing import Callable, Dict

import torch

from .export import export_model
from .runtime import OnnxRuntimeBackend


def _best_time(fn: Callable, repeats: int) -> float:
    """The fastest of ``repeats`` runs: on shared cores the minimum is the least disturbed by
    other processes (the median moved by 3x between runs on a loaded 2-core machine)."""
    fn()  # warm-up (first runs allocate and, in ORT, plan)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _build(name: str, seed: int = 0):
    try:
        from diffews.benchmark.random_sd import build_random_diffews
    except ImportError:  # the module's older place
        from diffews.utils.random_sd import build_random_diffews
    return build_random_diffews(name, seed)


@torch.no_grad()
def run(model_name: str, size: int, threads: int, repeats: int = 5) -> Dict:
    torch.set_num_threads(threads)
    model = _build(model_name)
    folder = tempfile.mkdtemp(prefix=f"onnx_{model_name}_{size}_")
    t = time.perf_counter()
    manifest = export_model(model, folder, size, check=True)
    print(f"export {time.perf_counter() - t:.1f} s; check max abs diffs: "
          + ", ".join(f"{k} {v:.1e}" for k, v in manifest["check"].items()))
    c, s = manifest["latent_channels"], manifest["latent_size"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(1, c, s, s, generator=g)
    z_support = torch.randn(1, 2 * c, s, s, generator=g)
    prompt = model.prompt_embeds_test
    support = model.support_pass(z_support, prompt, stop_early=True)[0]
    torch_parts = {
        "encode": lambda: model.encode(images, sample=False),
        "decode": lambda: model.vae.decode(z / model.latent_scale).sample,
        "support_pass": lambda: model.support_pass(z_support, prompt, stop_early=True)[0],
        "query_pass": lambda: model.query_pass(z, support, prompt),
    }
    refs = {k: f() for k, f in torch_parts.items()}
    rows = {"torch": {k: _best_time(f, repeats) for k, f in torch_parts.items()}}
    settings = ([(lvl, threads, None) for lvl in ("all", "extended", "basic")]
                + [("all", 1, None), ("all", threads, False)])
    for level, th, spin in settings:
        backend = OnnxRuntimeBackend(folder, threads=th, optimization=level, spinning=spin)
        parts = {
            "encode": lambda: backend.encode(images),
            "decode": lambda: backend.decode_float(z),
            "support_pass": lambda: backend.support_pass(z_support).keys[model.fused_layers[0]],
            "query_pass": lambda: backend.query_pass(z, support),
        }
        label = f"ort {level} t{th}" + ("" if spin is None else " nospin")
        rows[label] = {k: _best_time(f, repeats) for k, f in parts.items()}
        diff = max(float((parts[k]() - refs[k]).abs().max())
                   for k in ("encode", "decode", "query_pass"))
        rows[label]["max_diff"] = diff
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=["tiny", "mid", "sd21"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = run(args.model, args.size, args.threads, args.repeats)
    parts = ["encode", "decode", "support_pass", "query_pass"]
    print(f"{args.model} at {args.size} px, fastest of {args.repeats} (s):")
    print(f"{'path':24s}" + "".join(f"{p:>14s}" for p in parts) + f"{'max diff':>10s}")
    for label, r in rows.items():
        speed = "".join(f"{r[p]:>8.4f} {rows['torch'][p] / r[p]:4.2f}x" for p in parts)
        print(f"{label:24s}{speed}" + (f"{r['max_diff']:>10.1e}" if "max_diff" in r else ""))


if __name__ == "__main__":
    main()
