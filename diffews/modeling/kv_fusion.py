# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""KV fusion: the query's self-attention also attends to the supports' keys and values.

The support pass runs the UNet on the supports with a ``KVBank`` in write mode: every
self-attention (``attn1``) layer runs ordinary self-attention over each support's own tokens and
stores its keys/values under the layer's name; ``KVBank.to_support_set`` turns them into a
``SupportSet``. The query pass runs with a bank in read mode over SupportSets: each ``attn1``
attends to ``[own ; support 1 ; ... ; support K]`` along the token axis (docs/METHOD.md section
1.4). The K supports of one query are flattened into one key sequence, which is what the reference's
xformers path does; its SDPA path is only correct for K = 1.

A bank reaches the processors through ``cross_attention_kwargs`` (``kv_bank``), so processors
hold no state and each pass keeps its own bank: gradient checkpointing can recompute either pass,
and nothing has to be cleared between episodes.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..utils.errors import SupportSetError
from .support_set import SupportSet, flatten_supports


class SupportPassDone(Exception):
    """Raised by the last fused layer of a support pass run with ``KVBank(stop_after=...)``: every
    key/value is stored, and the rest of the UNet (whose output is never used) is skipped."""


class KVBank:
    """Keys/values of supports, keyed by attention-layer name, in one of two modes.

    * write mode, ``KVBank()``: the support pass stores each layer's (N, heads, L, head_dim) K/V.
      With ``stop_after=<layer name>`` that layer raises ``SupportPassDone`` once it has stored its
      K/V (inference: the support pass's output is never used).
    * read mode, ``KVBank(supports)``: ``supports`` is one ``SupportSet`` shared by every query of
      the batch, or a list with one ``SupportSet`` per query (all with the same K).
      ``probe`` (a ``presence_head.QueryProbe``) also records, per fused layer, what the
      presence signals read: the share of each query's attention mass on the supports' keys
      (``support_share``) and the head's features; None by default (it costs one more attention
      product per layer, never another UNet pass).
    """

    def __init__(self, supports: Union[None, SupportSet, Sequence[SupportSet]] = None,
                 stop_after: Optional[str] = None, probe=None):
        self._kv: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.stop_after = stop_after
        self.probe = probe
        self.shared: Optional[SupportSet] = None
        self.rows: Optional[List[SupportSet]] = None
        if isinstance(supports, SupportSet):
            self.shared = supports
        elif supports is not None:
            self.rows = list(supports)
            if not self.rows:
                raise SupportSetError("a read-mode KVBank needs at least one SupportSet")
            if len({len(r) for r in self.rows}) != 1:
                raise SupportSetError("the queries of one batch must have the same number of "
                                      f"supports, got {[len(r) for r in self.rows]}")
        for s in ([self.shared] if self.shared is not None else self.rows or []):
            if len(s) == 0:
                raise SupportSetError("the SupportSet is empty: a query needs at least one support")

    @property
    def writable(self) -> bool:
        return self.shared is None and self.rows is None

    def __len__(self) -> int:
        return len(self._kv)

    def write(self, name: str, key: torch.Tensor, value: torch.Tensor) -> None:
        if not self.writable:
            raise RuntimeError("this KVBank reads SupportSets; the support pass needs KVBank()")
        self._kv[name] = (key, value)

    def to_support_set(self, latents: torch.Tensor, signature: Optional[Dict] = None,
                       info: Optional[List[Dict]] = None) -> SupportSet:
        """The written K/V, with the support-pass input ``latents`` (N, 2C, h, w), as a set."""
        if not self._kv:
            raise RuntimeError("the support pass wrote no keys/values (no fused attn1 layer ran)")
        return SupportSet(latents, {k: kv[0] for k, kv in self._kv.items()},
                          {k: kv[1] for k, kv in self._kv.items()}, signature, info)

    def read(self, name: str, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The supports' keys/values for ``batch_size`` queries.

        Returns:
            (key, value), each (batch_size, heads, K * L, head_dim).
        """
        if self.writable:
            raise RuntimeError("this KVBank is in write mode; the query pass reads SupportSets")
        if self.shared is not None:
            key, value = self.shared.flat_kv(name)
            return (key[None].expand(batch_size, -1, -1, -1),
                    value[None].expand(batch_size, -1, -1, -1))
        if len(self.rows) != batch_size:
            raise ValueError(f"layer {name}: {len(self.rows)} SupportSets for a batch of "
                             f"{batch_size} queries")
        if name not in self.rows[0].keys:
            self.rows[0].flat_kv(name)  # raises, naming the layer
        return (torch.stack([flatten_supports(r.keys[name]) for r in self.rows]),
                torch.stack([flatten_supports(r.values[name]) for r in self.rows]))


# Adapted from diffusers.models.attention_processor.AttnProcessor2_0
# (difference: the support K/V of a KVBank are stored or concatenated after the head split).
class KVFusionAttnProcessor2_0:
    """Self-attention processor with KV fusion, on PyTorch SDPA.

    Args:
        name (str): the layer's path in the UNet, the key of its entry in the bank.
    """

    def __init__(self, name: str):
        if not hasattr(F, "scaled_dot_product_attention"):
            raise ImportError("KVFusionAttnProcessor2_0 requires PyTorch 2.0 or newer.")
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        kv_bank: Optional[KVBank] = None,
    ) -> torch.Tensor:
        residual = hidden_states
        probe = kv_bank.probe if kv_bank is not None and not kv_bank.writable else None
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            raise ValueError(f"{self.name}: KV fusion does not take an attention mask")

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # KV fusion: supports store their own K/V (and attend only to themselves); the query
        # attends to its own tokens followed by those of its K supports, in shot order.
        if kv_bank is not None:
            if not kv_bank.writable:
                support_key, support_value = kv_bank.read(self.name, batch_size)
                own = key.shape[2]
                key = torch.cat([key, support_key.to(key.dtype)], dim=2)
                value = torch.cat([value, support_value.to(value.dtype)], dim=2)
            else:
                kv_bank.write(self.name, key, value)
                if kv_bank.stop_after == self.name:
                    raise SupportPassDone()

        # the output of sdp = (batch, num_heads, seq_len, head_dim)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if probe is not None:  # presence measurements (a read-mode bank with a QueryProbe)
            probe.record(self.name, query, key, own, hidden_states if input_ndim == 3 else None)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CrossAttnProcessor2_0(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0``, unchanged, that also accepts (and ignores) ``kv_bank``.

    Cross-attention receives the same ``cross_attention_kwargs`` as self-attention; accepting
    the arguments keeps diffusers from warning about them on every call.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, kv_bank: Optional[KVBank] = None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def fused_layer_names(unet) -> List[str]:
    """Names of the UNet's self-attention layers (``...attn1``) in forward order (down blocks,
    mid block, up blocks): the layers KV fusion reads and writes (16 for SD 2.1)."""
    names = [name[: -len(".processor")] for name in unet.attn_processors
             if name[: -len(".processor")].endswith("attn1")]
    group = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

    def order(name):
        parts = name.split(".")
        return (group.get(parts[0], 3),) + tuple(int(p) for p in parts if p.isdigit())

    return sorted(names, key=order)


def support_entry_shapes(unet_config: Dict, latent_size: int, prompt_tokens: int = 2
                         ) -> Dict[str, Tuple[int, ...]]:
    """Shape of the keys (equally the values) one support stores in each fused layer, for a UNet
    of ``unet_config`` (a diffusers config dict) at a ``latent_size`` square latent.

    Computed by running the support pass on PyTorch's "meta" device: exact, instant, and no
    memory is allocated (e.g. SD 2.1 at 512 px: 16 layers, 88.1 MiB of fp32 K/V per support).
    """
    from diffusers import UNet2DConditionModel

    config = {
        k: v for k, v in unet_config.items() if not k.startswith("_") and k != "in_channels_ref"
    }
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        set_kv_fusion_processors(unet)
        bank = KVBank()
        x = torch.zeros(1, config.get("in_channels", 4), latent_size, latent_size)
        context = torch.zeros(1, prompt_tokens, config["cross_attention_dim"])
        unet(x, torch.ones(1, dtype=torch.long), encoder_hidden_states=context,
             cross_attention_kwargs={"kv_bank": bank})
    return {name: tuple(k.shape[1:]) for name, (k, _) in bank._kv.items()}


def set_kv_fusion_processors(unet) -> int:
    """Install KV fusion in every self-attention (``attn1``) layer of a diffusers UNet.

    Cross-attention (``attn2``) layers get a plain SDPA processor. Returns the number of fused
    layers (16 for SD 2.1).
    """
    processors = {}
    fused = 0
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        if layer.endswith("attn1"):
            processors[name] = KVFusionAttnProcessor2_0(layer)
            fused += 1
        else:
            processors[name] = CrossAttnProcessor2_0()
    unet.set_attn_processor(processors)
    if fused == 0:
        raise ValueError("the UNet has no self-attention (attn1) layer to fuse support K/V into")
    return fused
