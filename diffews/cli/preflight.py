# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Checks that entry points run BEFORE building the model, so that a wrong path or value stops in
seconds with one line naming it, not after minutes of loading Stable Diffusion.

Each check raises ``UsageError`` (exit status 2: the config is wrong) or ``FileNotFoundError`` /
``ValueError`` / ``OSError`` (exit status 1: something on disk is missing or broken), with a
message that names the key or file and says what to do (``diffews.cli.run_cli``).
"""

import json
import os
import tempfile
import zipfile
from typing import Dict, Iterable, List, Optional

from ..utils.errors import UsageError

__all__ = ["check_output_dir", "check_pretrained", "check_image_size", "check_weights",
           "check_datasets", "check_config_values", "check_backend", "check_sine", "preflight"]

# what each Stable Diffusion component folder must hold: config, then one of the weight files
_TEXT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.bin.index.json")
_PRETRAINED_HELP = ("MODEL.DIFFEWS.PRETRAINED must be a complete Stable Diffusion folder in "
                    "diffusers layout (unet/ vae/ text_encoder/ tokenizer/, each with its config "
                    "and weights); re-download it (TRAINING.md, section 1)")


def check_output_dir(path: str, what: str = "--output") -> str:
    """Create ``path`` if needed and check that a file can be written in it."""
    if not path:
        raise UsageError(f"{what} is empty: name an output folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OSError(f"{path}: cannot create the output folder ({e.strerror or e}); choose "
                      f"another {what}") from e
    if not os.path.isdir(path):
        raise OSError(f"{path}: exists and is not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OSError(f"{path}: the output folder is not writable ({e.strerror or e}); choose "
                      f"another {what}") from e
    return path


def _read_config(path: str) -> Dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({' '.join(str(e).split())}); "
                         f"{_PRETRAINED_HELP}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object; {_PRETRAINED_HELP}")
    return config


def _need(folder: str, names: Iterable[str], what: str) -> str:
    names = tuple(names)
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: no {what} (expected {' or '.join(names)}): the folder "
                            f"is half-written; {_PRETRAINED_HELP}")


def check_pretrained(pretrained: str) -> int:
    """Check ``MODEL.DIFFEWS.PRETRAINED`` without loading any weights; return the model's stride
    (input sizes must be multiples of it), computed from ``vae/`` and ``unet/config.json`` the way
    ``DiffewS`` computes ``size_divisibility``: 2^(VAE blocks - 1) * 2^(UNet blocks - 1)."""
    from ..modeling.unet import find_unet_weights

    if not pretrained:
        raise UsageError("MODEL.DIFFEWS.PRETRAINED is empty: set it to a local Stable Diffusion "
                         "folder in diffusers layout (TRAINING.md, section 1)")
    if not os.path.isdir(pretrained):
        raise FileNotFoundError(f"{pretrained}: MODEL.DIFFEWS.PRETRAINED folder not found; "
                                f"{_PRETRAINED_HELP}")
    configs = {}
    for sub in ("unet", "vae", "text_encoder"):
        folder = os.path.join(pretrained, sub)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: missing; {_PRETRAINED_HELP}")
        configs[sub] = _read_config(_need(folder, ["config.json"], "config.json"))
    find_unet_weights(os.path.join(pretrained, "unet"))
    _need(os.path.join(pretrained, "vae"), _VAE_WEIGHTS, "VAE weights")
    _need(os.path.join(pretrained, "text_encoder"), _TEXT_WEIGHTS, "text encoder weights")
    tokenizer = os.path.join(pretrained, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        _need(tokenizer, ["vocab.json"], "tokenizer files (tokenizer.json, or vocab.json and "
              "merges.txt)")
        _need(tokenizer, ["merges.txt"], "merges.txt")
    strides = []
    for sub in ("vae", "unet"):
        blocks = configs[sub].get("block_out_channels")
        if not isinstance(blocks, list) or not blocks:
            raise ValueError(f"{os.path.join(pretrained, sub, 'config.json')}: no "
                             f"'block_out_channels' list; {_PRETRAINED_HELP}")
        strides.append(2 ** (len(blocks) - 1))
    return strides[0] * strides[1]


def check_image_size(size: int, stride: int, pretrained: str = "") -> None:
    """``INPUT.IMAGE_SIZE`` must be a positive multiple of the model's stride."""
    if size <= 0 or size % stride:
        lower = max(stride, size // stride * stride)
        source = f" (from the VAE and UNet configs in {pretrained})" if pretrained else ""
        raise UsageError(f"INPUT.IMAGE_SIZE {size} is not a multiple of the model's stride "
                         f"{stride}{source}; use e.g. {lower} or {lower + stride}")


def check_weights(weights: str, allow_untrained: bool, key: str = "MODEL.WEIGHTS") -> None:
    """``MODEL.WEIGHTS`` (or ``key``) for inference: set (or ``MODEL.DIFFEWS.ALLOW_UNTRAINED``),
    existing; a ``.pth`` not empty and, if a zip archive, complete; a released UNet folder complete
    with readable safetensors headers. Other corrupt contents are found when the weights load."""
    from ..checkpoint import UNTRAINED_MESSAGE, UntrainedModelError
    from ..modeling.unet import find_unet_weights, index_shards, read_state_dict, \
        resolve_release_folder
    if not weights:
        if allow_untrained:
            return
        raise UntrainedModelError(UNTRAINED_MESSAGE)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{key}: {weights} does not exist (expected a trainer "
                                "checkpoint .pth or a released DiffewS UNet folder)")
    if os.path.isfile(weights) and weights.endswith(".pth"):
        # torch.save writes a zip archive whose directory is at the end: a truncated file has
        # the zip signature but no directory (legacy pickled checkpoints do not start with "PK")
        with open(weights, "rb") as f:
            head = f.read(2)
        if not head or (head == b"PK" and not zipfile.is_zipfile(weights)):
            what = "an empty file" if not head else "a zip archive without its directory"
            raise ValueError(f"{weights}: not a readable checkpoint ({what}); the file is "
                             "truncated or corrupt (a run killed while saving, a partial copy?): "
                             "use another checkpoint")
    if os.path.isdir(weights):
        path = find_unet_weights(resolve_release_folder(weights))
        files = list(index_shards(path)) if path.endswith(".json") else [path]
        for f in files:  # safetensors headers only: a truncated or corrupt file fails here
            if f.endswith(".safetensors"):
                read_state_dict(f, keys=())


def check_datasets(names: Iterable[str], key: str, required: bool = False) -> None:
    """Every name is a registered dataset (else the closest registered one is named) whose records
    load (a missing dataset tree raises ``MissingDataError`` naming the path)."""
    import difflib

    from detectron2.data import DatasetCatalog

    names = list(names)
    if required and not names:
        raise UsageError(f"{key} is empty: name at least one registered dataset")
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"{key}: dataset {name!r} is not registered{hint}")
    for name in names:
        DatasetCatalog.get(name)


def check_config_values(cfg) -> None:
    """Values that no later step should discover after the model is built."""
    if cfg.TEST.FSS.SHOT < 1:
        raise UsageError(f"TEST.FSS.SHOT must be >= 1, got {cfg.TEST.FSS.SHOT}")
    if cfg.INPUT.FEW_SHOT.MAX_SHOT < 1:
        raise UsageError(f"INPUT.FEW_SHOT.MAX_SHOT must be >= 1, got {cfg.INPUT.FEW_SHOT.MAX_SHOT}")
    if not 0.0 <= cfg.DATALOADER.MAX_BAD_FRACTION <= 1.0:
        raise UsageError("DATALOADER.MAX_BAD_FRACTION must be in [0, 1], got "
                         f"{cfg.DATALOADER.MAX_BAD_FRACTION}")


def check_backend(cfg) -> None:
    """``MODEL.DIFFEWS.BACKEND``: a known value ("auto" needs nothing: it runs torch where it
    cannot measure); for "onnxruntime", onnx and onnxruntime
    installed (a one-line ImportError naming the install command, exit status 1), a float32
    eager model and providers that this onnxruntime has."""
    d = cfg.MODEL.DIFFEWS
    if d.BACKEND not in ("auto", "torch", "onnxruntime"):
        raise UsageError(f"MODEL.DIFFEWS.BACKEND must be 'auto', 'torch' or 'onnxruntime', got "
                         f"{d.BACKEND!r}")
    if d.AUTO_MIN_PART_GFLOP < 0:
        raise UsageError("MODEL.DIFFEWS.AUTO_MIN_PART_GFLOP must be >= 0, got "
                         f"{d.AUTO_MIN_PART_GFLOP}")
    if d.BACKEND in ("torch", "auto"):  # auto runs torch where onnxruntime is missing
        return
    from ..modeling.onnx.export import require

    require("onnx")
    ort = require("onnxruntime")
    if d.INFERENCE_DTYPE != "float32" or d.COMPILE:
        raise UsageError("MODEL.DIFFEWS.BACKEND onnxruntime runs float32 graphs of the eager "
                         "model: set MODEL.DIFFEWS.INFERENCE_DTYPE float32 and COMPILE False")
    missing = [p for p in d.ONNX_PROVIDERS if p and p not in ort.get_available_providers()]
    if missing:
        raise UsageError(f"MODEL.DIFFEWS.ONNX_PROVIDERS: {missing} not available in this "
                         f"onnxruntime (it has {ort.get_available_providers()})")


def check_sine(cfg, weights: List[str]) -> None:
    """A SINE config's files and sizes: ``MODEL.SINE.PAD_SIZE`` a multiple of the patch size 14
    and at least ``IMAGE_SIZE``; ``MODEL.SINE.ENCODER.WEIGHTS`` (when set) and each weights file
    existing; an empty ``MODEL.WEIGHTS`` only with ``MODEL.SINE.ALLOW_UNTRAINED``."""
    from ..checkpoint import SINE_UNTRAINED_MESSAGE, UntrainedModelError

    s = cfg.MODEL.SINE
    if s.PAD_SIZE % 14 or s.PAD_SIZE < s.IMAGE_SIZE:
        raise UsageError(f"MODEL.SINE.PAD_SIZE {s.PAD_SIZE} must be a multiple of DINOv2's patch "
                         f"size 14 and at least MODEL.SINE.IMAGE_SIZE {s.IMAGE_SIZE}")
    if s.ENCODER.WEIGHTS and not os.path.exists(s.ENCODER.WEIGHTS):
        raise FileNotFoundError(f"MODEL.SINE.ENCODER.WEIGHTS: {s.ENCODER.WEIGHTS} does not "
                                "exist (an official DINOv2 checkpoint such as "
                                "dinov2_vitl14_pretrain.pth, or a transformers DINOv2 folder)")
    for w in weights:
        if not w:
            if not s.ALLOW_UNTRAINED:
                raise UntrainedModelError(SINE_UNTRAINED_MESSAGE)
        elif not os.path.exists(w):
            raise FileNotFoundError(f"MODEL.WEIGHTS: {w} does not exist (expected the released "
                                    "pytorch_model.bin or a trainer checkpoint .pth)")


def preflight(cfg, *, output_dir: Optional[str] = None, weights: Optional[List[str]] = None,
              output_key: str = "--output") -> None:
    """The checks every entry point runs before building the model: the config's values, the
    model's own files (DiffewS: the PRETRAINED folder, the image size against its stride, the
    inference backend; SINE: ``check_sine``), the output folder and (for inference) each weights
    path."""
    from ..predictor import predictor_class

    check_config_values(cfg)
    predictor_class(cfg).check_config(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "SINE":
        check_sine(cfg, list(weights or []))
    else:
        check_backend(cfg)
        stride = check_pretrained(cfg.MODEL.DIFFEWS.PRETRAINED)
        check_image_size(cfg.INPUT.IMAGE_SIZE, stride, cfg.MODEL.DIFFEWS.PRETRAINED)
        for w in weights or []:
            check_weights(w, cfg.MODEL.DIFFEWS.ALLOW_UNTRAINED)
    if output_dir is not None:
        check_output_dir(output_dir, output_key)
