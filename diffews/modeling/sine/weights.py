# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE weights in: the released ``pytorch_model.bin``, our checkpoints, DINOv2 checkpoints.

- ``MODEL.WEIGHTS`` (``load_sine_weights``): the released file is the training model's state dict
  (aim-uofa/SINE sine/model/model.py, DeepSpeed's zero_to_fp32 output): ``image_encoder.encoder.*``
  (DINOv2), ``image_encoder.neck.*``, ``transformer_decoder.*`` and ``criterion.empty_weight``,
  which is ignored. Our trainer's ``{"model": state}`` checkpoints load the same way. A file
  without the ``image_encoder.encoder.*`` keys (older DeepSpeed drops frozen parameters) is
  accepted when the encoder came from ``MODEL.SINE.ENCODER.WEIGHTS``.
- ``MODEL.SINE.ENCODER.WEIGHTS`` (``load_encoder_weights``): an official DINOv2 checkpoint (flat
  keys; under "teacher" in DINOv2 training checkpoints; prefixes ``module.`` / ``backbone.``
  stripped, as dinov2 44abdbe dinov2/utils/utils.py l.20-33 does), or a transformers
  ``Dinov2Model`` folder (e.g. ``hf://facebook/dinov2-large``), whose keys are converted to the
  official layout (``hf_to_official``).

Loading is strict where the original was lenient (``strict=False``): a missing key or a shape
mismatch stops with an error naming the file, the key and both shapes; keys that belong to no
part of the model stop too (a DiffewS checkpoint given to a SINE config, say).

Our training checkpoints leave the frozen encoder out (docs/SINE.md section 12) and carry an
**encoder record** instead, ``{"weights": where it comes from, "fingerprint": hash of its
tensors}`` under the checkpoint's ``"sine_encoder"`` key (``encoder_record``). Loading such a file
(``restore_encoder``) keeps the model's encoder when its fingerprint is the recorded one,
otherwise loads the recorded file (relative paths are tried beside the checkpoint first) and
checks the fingerprint again; a mismatch stops with both fingerprints named.
"""

import hashlib
import json
import logging
import os
import re
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import nn


logger = logging.getLogger(__name__)

__all__ = ["read_state_dict", "read_checkpoint", "hf_to_official", "official_to_timm",
           "read_encoder_state", "load_encoder_weights", "load_sine_weights", "IGNORED_PREFIXES",
           "ENCODER_PREFIX", "encoder_fingerprint", "encoder_record", "restore_encoder"]

# training-only buffers of the released file (the loss's class weights)
IGNORED_PREFIXES = ("criterion.",)
ENCODER_PREFIX = "image_encoder.encoder."
# heads of DINOv2 training checkpoints, next to the backbone under "teacher"
_DINO_HEADS = ("dino_head.", "ibot_head.")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _torch_load(path: str, what: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and EOF errors of a wrong, truncated or corrupt file
        text = " ".join(str(e).split())[:200]
        raise ValueError(f"{what}: {path} is not a readable weights file ({type(e).__name__}: "
                         f"{text})") from e


def _strip(state: Dict, prefixes: Iterable[str]) -> Dict:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str, what: str = "MODEL.WEIGHTS") -> Dict[str, torch.Tensor]:
    """A SINE state dict from a file: the released flat dict, or a checkpoint holding it under
    "model" (detectron2/our trainer) or "module"; a ``module.`` prefix on every key dropped."""
    return read_checkpoint(path, what)[0]


def read_checkpoint(path: str, what: str = "MODEL.WEIGHTS"
                    ) -> Tuple[Dict[str, torch.Tensor], Optional[Dict]]:
    """``read_state_dict``'s state and the checkpoint's encoder record (None if it has none)."""
    state = _torch_load(path, what)
    record = state.get("sine_encoder") if isinstance(state, dict) else None
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{what}: {path} holds no state dict of tensors")
    return _strip(state, ("module.",)), record


def hf_to_official(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers ``Dinov2Model`` state dict (saved or hub layout, optionally under
    ``dinov2.``) -> the official DINOv2 layout (q/k/v stacked into ``qkv``)."""
    state = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in state.items()}
    out = {"cls_token": state.pop("embeddings.cls_token"),
           "pos_embed": state.pop("embeddings.position_embeddings"),
           "patch_embed.proj.weight": state.pop("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": state.pop("embeddings.patch_embeddings.projection.bias"),
           "norm.weight": state.pop("layernorm.weight"), "norm.bias": state.pop("layernorm.bias")}
    if "embeddings.mask_token" in state:
        out["mask_token"] = state.pop("embeddings.mask_token")
    names = {  # transformers name (hub layout, then 5.x module names) -> official name
        "norm1": "norm1", "norm2": "norm2", "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3", "mlp.down_proj": "mlp.w3",
        "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    }
    qkv = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}
    parts: Dict[tuple, torch.Tensor] = {}
    pattern = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    for key, value in state.items():
        m = pattern.match(key)
        if not m:
            raise KeyError(f"unexpected key '{key}' in a transformers DINOv2 state dict")
        i, name, kind = m.groups()
        if kind == "lambda1":
            name, kind = name + ".lambda1", ""
        leaf = name.split(".")[-1]
        if leaf in qkv:  # attention.attention.query / attention.q_proj
            parts[(i, "qkv", kind, qkv[leaf])] = value
        elif name in ("mlp.gate_proj", "mlp.up_proj"):
            parts[(i, "w12", kind, 0 if name.endswith("gate_proj") else 1)] = value
        elif name in names:
            out[f"blocks.{i}.{names[name]}" + (f".{kind}" if kind else "")] = value
        else:
            raise KeyError(f"unexpected key '{key}' in a transformers DINOv2 state dict")
    for (i, group, kind, index) in sorted(parts):
        if index == 0:
            target = "attn.qkv" if group == "qkv" else "mlp.w12"
            count = 3 if group == "qkv" else 2
            out[f"blocks.{i}.{target}.{kind}"] = torch.cat(
                [parts[(i, group, kind, j)] for j in range(count)])
    return out


def official_to_timm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official DINOv2 names -> timm's: the SwiGLU FFN's ``w12`` / ``w3`` are timm's ``fc1`` /
    ``fc2`` (vit_giant2); every other key is the same."""
    return {re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v
            for k, v in state.items()}


def read_encoder_state(path: str, what: str = "MODEL.SINE.ENCODER.WEIGHTS"
                       ) -> Dict[str, torch.Tensor]:
    """The DINOv2 state dict in timm's layout from an official checkpoint file, a transformers
    folder (a hub id in a config is a local folder once ``build_config`` resolved it)."""
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in _HF_WEIGHTS
                 if os.path.isfile(os.path.join(path, n))]
        if not files:
            raise FileNotFoundError(f"{what}: {path} is a folder without {' or '.join(_HF_WEIGHTS)}"
                                    " (expected a transformers Dinov2Model folder)")
        if files[0].endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(files[0])
        else:
            state = _torch_load(files[0], what)
        config = os.path.join(path, "config.json")
        if os.path.isfile(config):
            with open(config) as f:
                model_type = json.load(f).get("model_type")
            if model_type not in (None, "dinov2"):
                raise ValueError(f"{what}: {path} holds a {model_type!r} model, not DINOv2")
        try:
            state = hf_to_official(state)
        except KeyError as e:
            raise ValueError(f"{what}: {files[0]}: {e.args[0]}") from e
    else:
        state = _torch_load(path, what)
        if isinstance(state, dict) and isinstance(state.get("teacher"), dict):
            state = state["teacher"]
        state = {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(_DINO_HEADS)}
    return official_to_timm(state)


def _check_keys(model: nn.Module, state: Dict, source: str, optional: Iterable[str] = ()) -> None:
    """Raise on a missing key (unless under an ``optional`` prefix), a shape mismatch or an
    unexpected key, naming the key and both shapes."""
    expected = model.state_dict()
    optional = tuple(optional)
    for key, value in expected.items():
        if key not in state:
            if optional and key.startswith(optional):
                continue
            raise KeyError(f"{source}: missing key '{key}' (the model has shape "
                           f"{tuple(value.shape)})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{source}: shape mismatch for '{key}': the model has "
                             f"{tuple(value.shape)}, the file has {tuple(state[key].shape)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise KeyError(f"{source}: {len(unexpected)} unexpected key(s), e.g. '{unexpected[0]}' "
                       f"(shape {tuple(state[unexpected[0]].shape)}): not weights of this model")


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Load a DINOv2 checkpoint (``read_encoder_state``) into the timm ViT ``encoder``,
    strictly."""
    state = read_encoder_state(path)
    source = f"MODEL.SINE.ENCODER.WEIGHTS {path}"
    _check_keys(encoder, state, source)
    encoder.load_state_dict(state)
    logger.info("DINOv2 weights loaded from %s (%d tensors)", path, len(state))


def load_sine_weights(model: nn.Module, path: str, encoder_loaded: bool = False) -> None:
    """Load ``MODEL.WEIGHTS`` into a SINE model, strictly, ``criterion.*`` ignored.

    Args:
        model: a ``SINE`` (``image_encoder.encoder``, ``image_encoder.neck``,
            ``transformer_decoder``).
        path: the released ``pytorch_model.bin`` or our checkpoint (a local file).
        encoder_loaded: the DINOv2 weights came from ``MODEL.SINE.ENCODER.WEIGHTS``, so a file
            without ``image_encoder.encoder.*`` keys is complete; with encoder keys, the file's
            encoder replaces it (as the original's whole-model load does). A file with an
            encoder record (our training checkpoints) is checked against it
            (``restore_encoder``) instead.
    """
    state, record = read_checkpoint(path)
    ignored = [k for k in state if k.startswith(IGNORED_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    has_encoder = any(k.startswith(ENCODER_PREFIX) for k in state)
    if not has_encoder and record is not None:
        restore_encoder(model, record, f"MODEL.WEIGHTS {path}", os.path.dirname(path))
    elif not has_encoder and not encoder_loaded:
        raise KeyError(f"MODEL.WEIGHTS {path}: no '{ENCODER_PREFIX}*' keys (the DINOv2 encoder "
                       "is not in the file): set MODEL.SINE.ENCODER.WEIGHTS to a DINOv2 "
                       "checkpoint, e.g. models/dinov2_vitl14_pretrain.pth or "
                       "hf://facebook/dinov2-large")
    _check_keys(model, state, f"MODEL.WEIGHTS {path}",
                optional=IGNORED_PREFIXES + (() if has_encoder else (ENCODER_PREFIX,)))
    if has_encoder and getattr(model, "encoder_weights", ""):
        current = model.image_encoder.encoder.state_dict()
        if any(not torch.equal(current[k[len(ENCODER_PREFIX):]].cpu(), v)
               for k, v in state.items() if k.startswith(ENCODER_PREFIX)):
            model.encoder_weights = ""  # the file's encoder, not MODEL.SINE.ENCODER.WEIGHTS'
    model.load_state_dict(state, strict=False)
    logger.info("SINE weights loaded from %s (%d tensors%s%s)", path, len(state),
                "" if has_encoder else ", encoder from MODEL.SINE.ENCODER.WEIGHTS",
                f", ignored {len(ignored)} training-only" if ignored else "")


@torch.no_grad()
def encoder_fingerprint(encoder: nn.Module) -> str:
    """A 16-hex-digit SHA-1 of every tensor of ``encoder``'s state dict (names, shapes, bytes)."""
    h = hashlib.sha1()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def encoder_record(model: nn.Module, weights: str) -> Dict:
    """The encoder record a checkpoint carries: where the frozen encoder comes from and the
    fingerprint of ``model``'s encoder."""
    return {"weights": weights, "fingerprint": encoder_fingerprint(model.image_encoder.encoder)}


def _record_path(weights: str, folder: str) -> str:
    """The recorded weights: beside the checkpoint (``folder``) if there, else as written."""
    if weights and not os.path.isabs(weights) and folder:
        beside = os.path.join(folder, weights)
        if os.path.exists(beside):
            return beside
    return weights


def restore_encoder(model: nn.Module, record: Dict, source: str, folder: str = "") -> None:
    """Make ``model``'s frozen encoder the one ``record`` names (see the module docstring).

    Args:
        model: a ``SINE``.
        record: ``{"weights", "fingerprint"}`` from a checkpoint.
        source: the checkpoint, for messages.
        folder: the checkpoint's folder (relative recorded weights are tried there first).
    Raises:
        ValueError naming both fingerprints when neither the model's encoder nor the recorded
        file is the recorded encoder.
    """
    vit = model.image_encoder.encoder
    have = encoder_fingerprint(vit)
    if have == record["fingerprint"]:
        return
    path = _record_path(record["weights"], folder)
    if not path or not os.path.exists(path):  # hub ids were made local paths by build_config
        raise ValueError(
            f"{source}: trained with the frozen encoder {record['weights'] or '(random)'} "
            f"(fingerprint {record['fingerprint']}), which is not found; the model's encoder "
            f"(MODEL.SINE.ENCODER.WEIGHTS {getattr(model, 'encoder_weights', '') or 'empty'}) "
            f"has fingerprint {have}: set MODEL.SINE.ENCODER.WEIGHTS to the file it was "
            "trained with")
    load_encoder_weights(vit, path)
    have = encoder_fingerprint(vit)
    if have != record["fingerprint"]:
        raise ValueError(f"{source}: trained with the frozen encoder {record['weights']} "
                         f"(fingerprint {record['fingerprint']}), but {path} now has "
                         f"fingerprint {have}")
    model.encoder_weights = path
    logger.info("%s: frozen encoder restored from %s", source, path)
