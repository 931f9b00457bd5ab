# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Our inference paths side by side with the ORIGINAL DiffewS code (``tools/benchmark.py
--original CHECKOUT --original-python PY``).

The original (aim-uofa/DiffewS d12c396) runs in its own interpreter and packages, as a worker
process (``dev/original_worker.py``) that this process asks for one episode at a time. Both sides
load the same weights, written once: a diffusers folder (``write_shared_weights``: the random
``tiny`` / ``mid`` / ``sd21`` UNet with its support conv, VAE, a small text encoder and tokenizer
for the empty prompt). Per episode, in an order rotated every episode (so that the host's drift
hits all paths alike), each path runs the same episode while the others wait:

* ``original``: the original pipeline (``original_worker.py``; its seconds are measured there);
* ``default``: our ``DiffewS.forward`` as configured by default (``BACKEND auto``), support
  latent cache off, so every episode encodes its supports;
* ``torch``: the same model with every part in torch (``BACKEND torch``);
* ``reuse``: one SupportSet encoded once (its cost printed apart), then per query only the
  query's encode, query pass and decode (the predictor / video case).

Masks of every path are compared with the original's, episode by episode.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from ..utils.timing import load_average
from .episodes import random_episode
from .inference_paths import reuse_query, with_backend
from .measure import profile_path
from .random_sd import MODEL_CONFIGS

__all__ = ["ORIGINAL_PATHS", "write_shared_weights", "build_our_model", "OriginalWorker",
           "side_by_side"]

ORIGINAL_PATHS = ("original", "default", "torch", "reuse")
WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "dev", "original_worker.py")


def write_shared_weights(model_name: str, folder: str, seed: int = 0) -> str:
    """Write the random ``model_name`` model as a diffusers folder both sides load: ``unet/``
    (with ``conv_in_ref``, the released layout), ``vae/``, ``text_encoder/`` (a small CLIP text
    model whose width is the UNet's cross-attention width) and ``tokenizer/``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..modeling.unet import add_support_conv
    from ..quickstart.tiny_sd import TINY_TEXT, TINY_VOCAB

    config = MODEL_CONFIGS[model_name]
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"])
    add_support_conv(unet)
    unet.save_pretrained(os.path.join(folder, "unet"))
    torch.manual_seed(seed)
    AutoencoderKL(**config["vae"]).save_pretrained(os.path.join(folder, "vae"))
    torch.manual_seed(seed)
    width = config["unet"]["cross_attention_dim"]
    text = dict(TINY_TEXT, hidden_size=width, projection_dim=width)
    encoder_dir = os.path.join(folder, "text_encoder")
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(encoder_dir)
    _legacy_text_keys(os.path.join(encoder_dir, "model.safetensors"))
    tok = CLIPTokenizer(vocab=dict(TINY_VOCAB), merges=[], pad_token="!", model_max_length=77)
    tok.save_pretrained(os.path.join(folder, "tokenizer"))
    # the slow tokenizer's files too: the original's transformers 4.36 reads vocab.json and
    # merges.txt, which newer versions no longer write beside tokenizer.json
    with open(os.path.join(folder, "tokenizer", "vocab.json"), "w") as f:
        json.dump(dict(TINY_VOCAB), f)
    with open(os.path.join(folder, "tokenizer", "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return folder


def build_our_model(folder: str, size: int, shots: int, *opts):
    """Our model on the shared weights, through the real loading code (``build_model``,
    ``load_inference_weights``: MODEL.WEIGHTS is the released-layout ``unet/`` folder), with the
    default config plus ``opts`` (e.g. ``MODEL.DIFFEWS.BACKEND torch``)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..checkpoint import load_inference_weights
    from ..config import add_diffews_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_file(os.path.join(root, "configs", "Base-DiffewS.yaml"))
    cfg.merge_from_list(["MODEL.DIFFEWS.PRETRAINED", folder, "MODEL.WEIGHTS",
                         os.path.join(folder, "unet"), "INPUT.IMAGE_SIZE", size, "MODEL.DEVICE",
                         "cpu", "TEST.FSS.SHOT", shots, "MODEL.DIFFEWS.SUPPORT_CACHE_SIZE", 0,
                         *opts])
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    return model, cfg


def _legacy_text_keys(path: str) -> None:
    """Prefix the text encoder's keys with ``text_model.`` as Stable Diffusion's files (and
    transformers 4.36, which the original runs on) have them: newer transformers write them
    without it, and 4.36 would then initialise the encoder at random (found by comparing both
    sides' empty-prompt embeddings). Our loader reads either form."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v
               for k, v in state.items()}, path, metadata={"format": "pt"})


class OriginalWorker:
    """The original code in its own interpreter (``dev/original_worker.py``), one episode per
    request."""

    def __init__(self, python: str, checkout: str, weights: str, episodes_file: str,
                 threads: int):
        if not os.path.isfile(os.path.join(checkout, "diffews", "marigold_pipeline_rgb_latent_"
                                           "noise.py")):
            raise FileNotFoundError(f"--original {checkout}: not a checkout of the original "
                                    "DiffewS (no diffews/marigold_pipeline_rgb_latent_noise.py)")
        if not os.path.isfile(python):
            raise FileNotFoundError(f"--original-python {python}: no such interpreter")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["HF_HUB_OFFLINE"] = "1"
        self.log = os.path.join(os.path.dirname(episodes_file), "original_worker.log")
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [python, WORKER, "--checkout", checkout, "--weights", weights, "--episodes",
                 episodes_file, "--threads", str(threads)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.info = self._read()

    def _read(self) -> Dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the original's worker stopped (exit {self.proc.wait()}); its "
                               f"output: {self.log}")
        return json.loads(line)

    def run(self, i: int):
        """(seconds, (H, W) bool mask) of episode ``i``."""
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        r = self._read()
        bits = np.frombuffer(base64.b64decode(r["mask"]), dtype=np.uint8)
        n = int(np.prod(r["shape"]))
        mask = np.unpackbits(bits)[:n].reshape(r["shape"]).astype(bool)
        return r["seconds"], torch.from_numpy(mask)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _episodes(shots: int, size: int, n: int, folder: str) -> str:
    """``n`` random episodes sharing one support set, saved with their query PNGs (the original
    reads the query image's file for its CLIP preprocessing); returns the torch file."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    episodes = [random_episode(shots, size, 1000 + i) for i in range(n)]
    paths = []
    for i, e in enumerate(episodes):
        e["support_images"] = episodes[0]["support_images"]
        e["support_masks"] = episodes[0]["support_masks"]
        paths.append(os.path.join(folder, f"query_{i}.png"))
        Image.fromarray(e["image"].permute(1, 2, 0).numpy()).save(paths[-1])
    path = os.path.join(folder, "episodes.pt")
    torch.save({"episodes": episodes, "query_paths": paths}, path)
    return path


@torch.no_grad()
def side_by_side(model_name: str, size: int, shots: int, n: int, python: str, checkout: str,
                 log=print, workdir: Optional[str] = None) -> Dict:
    """Run ``ORIGINAL_PATHS`` on ``n`` episodes, interleaved (module docstring).

    Returns:
        {"paths", "latency": {path: [s, ...]}, "agreement": {path: [fraction per episode]},
         "profile": {our path: {stage: s}},
         "support_set_s", "auto_choice": {part: runtime} or None, "load": (start, end),
         "versions": the worker's torch / diffusers / transformers}.
    """
    work = workdir or tempfile.mkdtemp(prefix=f"original_{model_name}_{size}_")
    weights = os.path.join(work, "weights")
    if not os.path.isdir(weights):  # one folder per model and size: its exports and auto's
        write_shared_weights(model_name, weights)  # choice serve every shot count
    episodes_file = _episodes(shots, size, n, os.path.join(work, f"{shots}shot"))
    episodes = torch.load(episodes_file, weights_only=False)["episodes"]
    load_start = load_average()
    t = time.perf_counter()
    model, _ = build_our_model(weights, size, shots)
    log(f"our model loaded in {time.perf_counter() - t:.1f} s (BACKEND auto: export and "
        "measurement included on first use)")
    backend = model.inference_backend
    choice = backend.choices.get(size, {}).get("parts") if backend is not None else None
    worker = OriginalWorker(python, checkout, weights, episodes_file, torch.get_num_threads())
    try:
        t = time.perf_counter()
        support_set = model.encode_supports(episodes[0]["support_images"],
                                            episodes[0]["support_masks"])
        support_s = time.perf_counter() - t
        ours = {"default": lambda e: model([e])[0]["pred_mask"],
                "torch": lambda e: with_backend(model, None, lambda: model([e])[0]["pred_mask"]),
                "reuse": lambda e: reuse_query(model, support_set, e)}
        worker.run(0)  # warm-up of every path on the first episode
        for fn in ours.values():
            fn(episodes[0])
        latency = {p: [] for p in ORIGINAL_PATHS}
        agreement = {p: [] for p in ORIGINAL_PATHS}
        for i, e in enumerate(episodes):
            k = i % len(ORIGINAL_PATHS)
            masks = {}
            for p in ORIGINAL_PATHS[k:] + ORIGINAL_PATHS[:k]:
                if p == "original":
                    seconds, masks[p] = worker.run(i)
                else:
                    start = time.perf_counter()
                    masks[p] = ours[p](e).cpu()
                    seconds = time.perf_counter() - start
                latency[p].append(seconds)
            for p in ORIGINAL_PATHS:
                agreement[p].append((masks[p] == masks["original"]).float().mean().item())
            log(f"episode {i}: " + ", ".join(f"{p} {latency[p][-1]:.3f} s" for p in
                                             ORIGINAL_PATHS))
        # where each of our paths spends its time (the original's stages are not visible from
        # here): one call each on the first episode, after the timed runs
        ort = list(backend._by_size.values()) if backend is not None else []
        profile = {p: profile_path(model, lambda p=p: ours[p](episodes[0]), reps=1,
                                   backends=ort) for p in ours}
    finally:
        worker.close()
        model.use_backend(backend)
    return {"paths": list(ORIGINAL_PATHS), "latency": latency, "agreement": agreement,
            "profile": profile,
            "support_set_s": support_s, "auto_choice": choice,
            "load": (load_start, load_average()), "versions": worker.info}


def format_side_by_side(r: Dict, title: str) -> str:
    """A markdown table: per path episodes/s, p50/p90, speed-up over the original (ratio of
    medians, and the median of the per-episode ratios), mask agreement (mean, worst episode)."""
    from tabulate import tabulate

    base = np.array(r["latency"]["original"])
    rows: List[list] = []
    for p in r["paths"]:
        lat = np.array(r["latency"][p])
        agree = np.array(r["agreement"][p])
        rows.append([p, f"{1 / np.median(lat):.3f}", f"{np.median(lat):.3f}",
                     f"{np.percentile(lat, 90):.3f}", f"{np.median(base) / np.median(lat):.2f}x",
                     f"{np.median(base / lat):.2f}x", f"{100 * agree.mean():.3f}%",
                     f"{100 * agree.min():.3f}%"])
    head = (f"{title}; SupportSet encoded once in {r['support_set_s']:.3f} s; auto's choice: "
            f"{r['auto_choice'] or 'every part torch'}; 1-minute load average "
            f"{r['load'][0]:.2f} at the start, {r['load'][1]:.2f} at the end")
    return head + "\n" + tabulate(rows, headers=[
        "path", "episodes/s", "p50 s", "p90 s", "speed-up (medians)", "speed-up (paired)",
        "mask agreement", "worst episode"], tablefmt="github")


def python_is_ours(python: str) -> bool:
    """Whether ``python`` is this interpreter (the original needs its own environment; a venv's
    interpreter links to its base one, so the paths, not their targets, are compared)."""
    return os.path.abspath(python) == os.path.abspath(sys.executable)
