# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DiffewS UNet: diffusers' ``UNet2DConditionModel`` plus a support input conv.

diffusers' UNet is used as it is. Two things are added (docs/METHOD.md section 1.2):

- ``unet.conv_in_ref``: the support input conv, ``2 * in_channels`` (image latent, then mask
  latent) -> ``block_out_channels[0]``. It is registered on the UNet itself, so
  ``unet.state_dict()`` and ``unet.save_pretrained()`` hold exactly the released DiffewS keys (SD
  keys + ``conv_in_ref.*``).
- ``unet.conv_in`` becomes a ``DualConvIn``: the same conv with the same parameters, which sends a
  support input (``2 * in_channels`` channels) through ``conv_in_ref`` instead. The number of input
  channels selects the branch, so the UNet's own forward is untouched.
"""

import json
import logging
import os
from typing import Dict, Optional

import torch
from diffusers import UNet2DConditionModel
from torch import nn

logger = logging.getLogger(__name__)

# UNet weight files diffusers writes, in the order they are looked for: full precision, then the
# fp16 variant; single files, then sharded ones (an index json naming the shard of every key)
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "diffusion_pytorch_model.fp16.bin",
    "diffusion_pytorch_model.bin.index.fp16.json",
)
SUPPORT_CONV_KEYS = ("conv_in_ref.weight", "conv_in_ref.bias")
# config.json keys that change the computation without changing any weight shape
ARCH_KEYS = (
    "attention_head_dim", "num_attention_heads", "block_out_channels", "down_block_types",
    "up_block_types", "layers_per_block", "cross_attention_dim", "use_linear_projection",
    "upcast_attention", "in_channels", "out_channels",
)


class DualConvIn(nn.Conv2d):
    """``unet.conv_in`` for DiffewS: query latents use this conv, support latents ``conv_in_ref``.

    The support conv is owned (registered) by the UNet as ``conv_in_ref``; this module only keeps
    a plain reference to it so that its parameters appear once, under the released key names.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.__dict__["support_conv"]
        if x.shape[1] == self.in_channels:
            return super().forward(x)
        if x.shape[1] == ref.in_channels:
            return ref(x)
        raise ValueError(
            f"UNet input has {x.shape[1]} channels; expected {self.in_channels} (query latent) or "
            f"{ref.in_channels} (support image + mask latents)"
        )


def init_support_conv(conv_in: nn.Conv2d) -> nn.Conv2d:
    """Build the support conv from the query conv as the reference does (docs/METHOD.md section
    1.2).

    ``W_ref = repeat(W, (1, 2, 1, 1)) / 2`` (each half of the 8 input channels gets half of the
    pretrained kernel) and ``b_ref = b``.
    """
    ref = nn.Conv2d(
        2 * conv_in.in_channels, conv_in.out_channels, conv_in.kernel_size,
        stride=conv_in.stride, padding=conv_in.padding,
    ).to(conv_in.weight.device, conv_in.weight.dtype)
    with torch.no_grad():
        ref.weight.copy_(conv_in.weight.repeat(1, 2, 1, 1) / 2)
        ref.bias.copy_(conv_in.bias)
    return ref


def add_support_conv(unet: UNet2DConditionModel, support_state: Optional[Dict] = None) -> None:
    """Attach ``conv_in_ref`` to a UNet (in place) and make ``conv_in`` dispatch on channels.

    Args:
        unet: a diffusers UNet without a support conv.
        support_state: ``{"conv_in_ref.weight": ..., "conv_in_ref.bias": ...}`` to load, or None
            to initialise from ``conv_in`` (docs/METHOD.md section 1.2).
    """
    if isinstance(unet.conv_in, DualConvIn):
        raise ValueError("this UNet already has a support input conv")
    conv = unet.conv_in
    ref = init_support_conv(conv)
    if support_state is not None:
        for key in SUPPORT_CONV_KEYS:
            param = getattr(ref, key.split(".")[1])
            check_shape(key, param.shape, support_state[key].shape, "the UNet weights")
            with torch.no_grad():
                param.copy_(support_state[key])
    dual = DualConvIn(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding,
    )
    dual.weight, dual.bias = conv.weight, conv.bias
    dual.__dict__["support_conv"] = ref
    unet.conv_in = dual
    unet.conv_in_ref = ref
    unet.register_to_config(in_channels_ref=ref.in_channels)


def check_shape(key: str, expected, found, source: str) -> None:
    if tuple(expected) != tuple(found):
        raise ValueError(
            f"{source}: shape mismatch for '{key}': the model has {tuple(expected)}, the "
            f"checkpoint has {tuple(found)}"
        )


def find_unet_weights(folder: str) -> str:
    """The UNet weights of a diffusers folder: a single file or a sharded index json
    (``WEIGHT_NAMES``, full precision first, then the fp16 variant)."""
    for name in WEIGHT_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{folder}: no UNet weights (expected diffusion_pytorch_model.safetensors or .bin, their "
        "fp16 variant diffusion_pytorch_model.fp16.*, or a sharded index "
        "diffusion_pytorch_model.safetensors.index.json)"
    )


def weights_variant(path: str) -> Optional[str]:
    """"fp16" for diffusers' fp16 variant files (``*.fp16.*``, ``*.index.fp16.json``), else None."""
    return "fp16" if ".fp16." in os.path.basename(path) else None


def index_shards(index_path: str, keys=None) -> Dict[str, list]:
    """Shard file -> the keys it holds (all keys, or only ``keys``), from a sharded index json."""
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("'weight_map' is not a dict")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a readable sharded-weights index ({e}); re-download "
                         "or re-export the UNet") from e
    folder = os.path.dirname(index_path)
    out: Dict[str, list] = {}
    for key, shard in weight_map.items():
        if keys is None or key in keys:
            out.setdefault(os.path.join(folder, shard), []).append(key)
    for shard in out:
        if not os.path.isfile(shard):
            raise FileNotFoundError(f"{shard}: shard named in {index_path} is missing (a partial "
                                    "download?); re-download or re-export the UNet")
    return out


def _read_file(path: str, keys=None) -> Dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                present = set(f.keys())
                names = present if keys is None else [k for k in keys if k in present]
                return {k: f.get_tensor(k) for k in names}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip errors have many types
        kind = "safetensors" if path.endswith(".safetensors") else "PyTorch"
        raise ValueError(f"{path}: not a readable {kind} weights file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); it is truncated or corrupt: "
                         "re-download or re-export it") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state if keys is None else {k: state[k] for k in keys if k in state}


def read_state_dict(path: str, keys=None) -> Dict[str, torch.Tensor]:
    """Read a safetensors or pickled ``.bin`` state dict, or a sharded one through its index json
    (only ``keys`` if given). A corrupt or truncated file raises ValueError naming it."""
    if path.endswith(".json"):
        state: Dict[str, torch.Tensor] = {}
        for shard, shard_keys in index_shards(path, keys).items():
            state.update(_read_file(shard, shard_keys))
        return state
    return _read_file(path, keys)


def describe_dtypes(state: Dict[str, torch.Tensor]) -> str:
    """"float16", or e.g. "float16, float32" when a state dict mixes dtypes."""
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    return ", ".join(dtypes) or "empty"


def load_pretrained_unet(pretrained: str) -> UNet2DConditionModel:
    """Load the UNet of a Stable Diffusion folder and give it the support input conv.

    The weights may be a single file, sharded (index json) or only the fp16 variant; the model is
    float32 in every case (diffusers upcasts), and the log says the stored dtype. If
    ``<pretrained>/unet`` already holds ``conv_in_ref`` (e.g. the released
    ``stable-diffusion-2-1-ref8inchannels-tag4inchannels``) it is loaded; otherwise it is built
    from ``conv_in`` (docs/METHOD.md section 1.2).
    """
    folder = os.path.join(pretrained, "unet")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(
            f"{folder}/config.json not found: MODEL.DIFFEWS.PRETRAINED must be a Stable Diffusion "
            "folder in diffusers layout (unet/ vae/ text_encoder/ tokenizer/)"
        )
    weights = find_unet_weights(folder)
    # one read: the support conv if the folder has it, and conv_in.weight for the stored dtype
    support_state = read_state_dict(weights, SUPPORT_CONV_KEYS + ("conv_in.weight",))
    stored = describe_dtypes({"conv_in.weight": support_state.pop("conv_in.weight")}) \
        if "conv_in.weight" in support_state else "unknown dtype"
    variant = weights_variant(weights)
    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{folder}: the UNet does not load ({' '.join(str(e).split())[:300]}); "
                         "re-download MODEL.DIFFEWS.PRETRAINED") from e
    logger.info("Loaded the UNet of %s from %s (stored as %s%s; the model runs in %s)", pretrained,
                os.path.basename(weights), stored,
                ", fp16 variant" if variant else "", str(unet.dtype).replace("torch.", ""))
    if len(support_state) == len(SUPPORT_CONV_KEYS):
        logger.info(f"Loaded the support input conv (conv_in_ref) from {folder}")
        add_support_conv(unet, support_state)
    else:
        logger.info(
            "No conv_in_ref in %s: initialising it from conv_in (docs/METHOD.md section 1.2)",
            folder,
        )
        add_support_conv(unet)
    return unet


def resolve_release_folder(path: str) -> str:
    """Find the diffusers UNet folder of a DiffewS release: ``<name>/``, ``<name>/unet/`` or
    ``<name>/unet/unet/``, the first one that has a ``config.json``."""
    for folder in (path, os.path.join(path, "unet"), os.path.join(path, "unet", "unet")):
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    raise FileNotFoundError(
        f"{path}: no config.json in it, in {path}/unet or in {path}/unet/unet; MODEL.WEIGHTS must "
        "be a trainer checkpoint (.pth) or a released DiffewS UNet folder in diffusers layout"
    )


def load_release_state_dict(
    path: str, unet_config: Optional[dict] = None
) -> Dict[str, torch.Tensor]:
    """Read a released DiffewS UNet (diffusers layout, docs/METHOD.md section 8) as a UNet state
    dict.

    ``config.json`` may name ``UNet2DConditionModel`` or ``MyUNet2DConditionModel`` and may or may
    not hold ``in_channels_ref``; the weights must hold ``conv_in_ref``.

    Args:
        path: the release folder, its ``unet/`` or ``unet/unet/``.
        unet_config: the model's UNet config; if given, the architecture keys that leave weight
            shapes unchanged (heads, block types, ...) must match the release's.
    """
    folder = resolve_release_folder(path)
    config_path = os.path.join(folder, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not a readable JSON config ({e})") from e
    cls = config.get("_class_name")
    if cls not in (None, "UNet2DConditionModel", "MyUNet2DConditionModel"):
        raise ValueError(f"{config_path}: _class_name {cls!r} is not a DiffewS UNet")
    if unet_config is not None:
        for key in ARCH_KEYS:
            if (
                key in config
                and key in unet_config
                and _norm(config[key]) != _norm(unet_config[key])
            ):
                raise ValueError(
                    f"{config_path}: '{key}' is {config[key]!r} but the UNet of "
                    f"MODEL.DIFFEWS.PRETRAINED has {unet_config[key]!r}"
                )
    weights = find_unet_weights(folder)
    state = read_state_dict(weights)
    for key in SUPPORT_CONV_KEYS:
        if key not in state:
            raise KeyError(
                f"{weights}: missing '{key}': a DiffewS UNet holds the support input conv "
                "conv_in_ref (docs/METHOD.md section 8); a plain Stable Diffusion UNet goes in "
                "MODEL.DIFFEWS.PRETRAINED instead"
            )
    logger.info("Read released DiffewS UNet weights from %s (stored as %s%s; loaded into the "
                "float32 model)", weights, describe_dtypes(state),
                ", fp16 variant" if weights_variant(weights) else "")
    return state


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def save_release_unet(
    unet: UNet2DConditionModel, folder: str, safe_serialization: bool = True
) -> None:
    """Write a DiffewS UNet in the released layout: a diffusers folder whose weights hold
    ``conv_in_ref`` and whose config names ``in_channels_ref``."""
    if not hasattr(unet, "conv_in_ref"):
        raise ValueError("the UNet has no conv_in_ref: it is not a DiffewS UNet")
    unet.save_pretrained(folder, safe_serialization=safe_serialization)
