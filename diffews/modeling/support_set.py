# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``SupportSet``: K supports encoded once, for any number of queries.

In the support pass every support attends only to its own tokens (docs/METHOD.md section 1.4), so
what a support contributes to a query is fixed once its latents are known: the keys and values that
each fused self-attention layer computes from it. A ``SupportSet`` keeps, per support,

* its latent: the VAE posterior mean of the image concatenated with that of the mask image,
  ``(2C, h, w)`` (what the support input conv reads);
* its keys and values in every fused ``attn1`` layer, ``(heads, L, head_dim)`` each;

stacked along the first axis, so a set is a list of independent entries: it can be indexed,
sliced, concatenated (``SupportSet.cat``) and moved (``.to``) without running the model again.

File format (``save``/``load``): ``torch.save`` of a plain dict, read back with
``torch.load(weights_only=True)`` (no code runs on load)::

    {"format": "diffews.SupportSet", "version": 1, "signature": {...}, "info": [{...}, ...],
     "latents": (K, 2C, h, w) float32, "keys": {layer: (K, heads, L, d)}, "values": {...}}

``signature`` describes the model that encoded the set (UNet architecture, the fused layers,
latent size, timestep, a fingerprint of the weights): using a set with another model is an error
that names the first field that differs.
"""

import hashlib
import os
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..utils.atomic import atomic_path
from ..utils.errors import SupportSetError

FORMAT = "diffews.SupportSet"
VERSION = 1

__all__ = ["SupportSet", "model_signature"]


class SupportSet:
    """Encoded supports: per support, its image+mask latent and its K/V in every fused layer.

    Args:
        latents: (K, 2C, h, w) image latent concatenated with mask latent, per support.
        keys, values: layer name -> (K, heads, L, head_dim), in the UNet's layer order.
        signature: the encoding model's ``DiffewS.support_signature()``; None for the transient
            sets of training and benchmark episodes.
        info: per-support dicts (e.g. ``{"source": "dog.jpg", "mask_fraction": 0.21}``).
    """

    def __init__(self, latents: torch.Tensor, keys: Dict[str, torch.Tensor],
                 values: Dict[str, torch.Tensor], signature: Optional[Dict] = None,
                 info: Optional[List[Dict]] = None):
        k = latents.shape[0]
        if list(keys) != list(values):
            raise SupportSetError("SupportSet keys and values name different layers")
        for name in keys:
            if keys[name].shape[0] != k or values[name].shape[0] != k:
                raise SupportSetError(
                    f"SupportSet layer {name}: {keys[name].shape[0]} keys and "
                    f"{values[name].shape[0]} values for {k} supports"
                )
        info = [dict(i) for i in info] if info is not None else [{} for _ in range(k)]
        if len(info) != k:
            raise SupportSetError(f"SupportSet: {len(info)} info entries for {k} supports")
        self.latents, self.keys, self.values = latents, dict(keys), dict(values)
        self.signature, self.info = signature, info

    # -- the list interface ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: Union[int, slice, Sequence[int]]) -> "SupportSet":
        """A set of the selected supports: ``s[0]``, ``s[1:3]``, ``s[[0, 2]]``."""
        n = len(self)
        if isinstance(index, int):
            if not -n <= index < n:
                raise IndexError(f"support {index} out of range for a SupportSet of {n}")
            index = slice(index % n, index % n + 1)
        if isinstance(index, slice):
            picked = list(range(n))[index]
        else:
            picked = [int(i) for i in index]
            for i in picked:
                if not -n <= i < n:
                    raise IndexError(f"support {i} out of range for a SupportSet of {n}")
            index = torch.tensor(picked, dtype=torch.long, device=self.latents.device)
        return SupportSet(self.latents[index], {k: v[index] for k, v in self.keys.items()},
                          {k: v[index] for k, v in self.values.items()}, self.signature,
                          [self.info[i] for i in picked])

    @staticmethod
    def cat(sets: Sequence["SupportSet"]) -> "SupportSet":
        """The supports of ``sets``, in order, as one set. All must come from the same model
        and live on the same device with the same K/V dtype."""
        sets = list(sets)
        if not sets:
            raise SupportSetError("SupportSet.cat needs at least one SupportSet")
        first = sets[0]
        for i, s in enumerate(sets[1:], 1):
            if not isinstance(s, SupportSet):
                raise TypeError(f"SupportSet.cat: item {i} is a {type(s).__name__}")
            diff = signature_difference(s.signature, first.signature, (f"set {i}", "set 0"))
            if diff:
                raise SupportSetError(f"SupportSet.cat: set {i} and set 0 come from different "
                                      f"models ({diff})")
            if s.dtype != first.dtype or s.device != first.device:
                raise SupportSetError(
                    f"SupportSet.cat: set {i} is {s.dtype} on {s.device}, set 0 {first.dtype} on "
                    f"{first.device}; use .to() first")
            if list(s.keys) != list(first.keys) or s.latents.shape[1:] != first.latents.shape[1:]:
                raise SupportSetError(f"SupportSet.cat: set {i} has other layers or latent shape")
        return SupportSet(
            torch.cat([s.latents for s in sets]),
            {k: torch.cat([s.keys[k] for s in sets]) for k in first.keys},
            {k: torch.cat([s.values[k] for s in sets]) for k in first.keys},
            first.signature, [i for s in sets for i in s.info],
        )

    # -- device and precision ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.latents.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored keys/values (latents stay float32)."""
        return next(iter(self.keys.values())).dtype if self.keys else self.latents.dtype

    @property
    def layers(self) -> List[str]:
        return list(self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by latents, keys and values."""
        tensors = [self.latents, *self.keys.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "SupportSet":
        """A copy on ``device`` whose keys/values are stored as ``dtype`` (e.g. ``torch.float16``
        halves the memory; the query pass computes in its own dtype either way)."""
        def move(t):
            return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)

        return SupportSet(self.latents.to(device), {k: move(v) for k, v in self.keys.items()},
                          {k: move(v) for k, v in self.values.items()}, self.signature, self.info)

    def detach(self) -> "SupportSet":
        return SupportSet(self.latents.detach(), {k: v.detach() for k, v in self.keys.items()},
                          {k: v.detach() for k, v in self.values.items()}, self.signature,
                          self.info)

    # -- what the query pass reads -------------------------------------------------------------
    def flat_kv(self, name: str):
        """Keys/values of layer ``name`` with the K supports as one token sequence:
        (heads, K * L, head_dim) each (a view for K = 1, a copy otherwise; not kept)."""
        if name not in self.keys:
            raise SupportSetError(f"the SupportSet has no keys/values for layer {name!r}: it was "
                                  "encoded by another model")
        return flatten_supports(self.keys[name]), flatten_supports(self.values[name])

    def check_compatible(self, signature: Dict, what: str = "this model") -> None:
        """Raise ``SupportSetError`` if the set was not encoded by a model with ``signature``."""
        if self.signature is None:
            raise SupportSetError("this SupportSet carries no model signature (it was built "
                                  "inside a training/benchmark episode); encode the supports "
                                  "with DiffewSPredictor.encode_supports")
        diff = signature_difference(self.signature, signature, ("the set", what))
        if diff:
            raise SupportSetError(f"SupportSet was encoded by another model than {what}: {diff}; "
                                  "encode the supports again with this model")

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the set (CPU tensors) to ``path`` atomically (see the module docstring)."""
        state = {
            "format": FORMAT, "version": VERSION, "signature": self.signature, "info": self.info,
            "latents": self.latents.detach().cpu(),
            "keys": {k: v.detach().cpu() for k, v in self.keys.items()},
            "values": {k: v.detach().cpu() for k, v in self.values.items()},
        }
        with atomic_path(path) as tmp:  # a killed save never leaves half a set under ``path``
            torch.save(state, tmp)

    @staticmethod
    def load(path: str, map_location="cpu") -> "SupportSet":
        """Read a file written by ``save``; errors name the file."""
        if not os.path.isfile(path):
            raise SupportSetError(f"{path}: no such SupportSet file")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # pickle, zip or unsupported-type errors all mean "not our file"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SupportSetError(f"{path}: not a readable SupportSet file ({first})") from e
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SupportSetError(f"{path}: not a SupportSet file (no '{FORMAT}' format tag)")
        if state.get("version") != VERSION:
            raise SupportSetError(f"{path}: SupportSet file version {state.get('version')}, this "
                                  f"DiffewS reads version {VERSION}")
        return SupportSet(state["latents"], state["keys"], state["values"], state["signature"],
                          state["info"])

    def __repr__(self) -> str:
        return (f"SupportSet({len(self)} support(s), {len(self.keys)} layers, K/V {self.dtype}, "
                f"{self.device}, {self.nbytes / 2**20:.1f} MiB)")


def flatten_supports(t: torch.Tensor) -> torch.Tensor:
    """(K, heads, L, d) -> (heads, K * L, d): the K supports' tokens in shot order."""
    k, heads, length, dim = t.shape
    return t.permute(1, 0, 2, 3).reshape(heads, k * length, dim)


def signature_difference(a: Optional[Dict], b: Optional[Dict], names=("the set", "the model")
                         ) -> str:
    """'' if the signatures agree, else a short text naming the first field that differs."""
    if a == b:
        return ""
    if a is None or b is None:
        return "one of them carries no model signature"
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = signature_difference(va, vb, names)
            if sub:
                return f"{key}.{sub}"
        elif va != vb:
            if key == "layers" and isinstance(va, list) and isinstance(vb, list):
                return f"fused layers differ ({len(va)} vs {len(vb)} layers)"
            if key == "weights":
                return f"other weights (fingerprint {va} in {names[0]}, {vb} in {names[1]})"
            return f"{key} is {va!r} in {names[0]}, {vb!r} in {names[1]}"
    return "signatures differ"


def model_signature(model) -> Dict:
    """A DiffewS model's signature: the UNet architecture, the fused layers, the VAE latent space,
    timestep, prompt length and a fingerprint of the weights that shape the keys/values."""
    from .unet import ARCH_KEYS

    cfg = model.unet.config
    return {
        "unet": {k: _plain(cfg[k]) for k in ARCH_KEYS if k in cfg},
        "layers": list(model.fused_layers),
        "vae": {"block_out_channels": _plain(model.vae.config.block_out_channels),
                "latent_channels": int(model.vae.config.latent_channels),
                "scaling_factor": model.latent_scale},
        "timestep": int(model.timestep),
        "prompt_tokens": int(model.prompt_embeds_test.shape[1]),
        "weights": weights_fingerprint(model),
    }


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A short hash of a few weight tensors (support conv, first fused layer's key/value
    projections, VAE encoder input conv): differs between two trainings or releases."""
    first = model.unet.get_submodule(model.fused_layers[0])
    tensors = [model.unet.conv_in_ref.weight, first.to_k.weight, first.to_v.weight,
               model.vae.encoder.conv_in.weight]
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v
