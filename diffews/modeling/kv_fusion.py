# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""KV fusion: the query's self-attention also attends to the supports' keys and values.

The support pass runs the UNet on all supports with a ``KVBank`` in write mode: every
self-attention (``attn1``) layer runs ordinary self-attention over each support's own tokens and
stores its keys/values under the layer's name. The query pass runs with the same bank in read
mode: each ``attn1`` attends to ``[own ; support 1 ; ... ; support K]`` along the token axis
(METHOD.md 1.4). The K supports of one query are flattened into one key sequence, which is what the
reference's xformers path does; its SDPA path is only correct for K = 1.

The bank is a fresh object per episode batch and reaches the processors through
``cross_attention_kwargs`` (``kv_bank``, with ``kv_read`` False for the support pass and True for
the query pass), so processors hold no state and each pass keeps its own mode: gradient
checkpointing can recompute either pass, and nothing has to be cleared between episodes.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class KVBank:
    """Keys/values of the support pass, keyed by attention-layer name.

    Args:
        shots (int): K, the number of supports per query. The support pass batch holds the
            supports of query 0, then those of query 1, ... (``B * K`` rows).
    """

    def __init__(self, shots: int):
        if shots < 1:
            raise ValueError(f"KVBank needs at least one support per query, got shots={shots}")
        self.shots = shots
        self._kv: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._kv)

    def write(self, name: str, key: torch.Tensor, value: torch.Tensor) -> None:
        self._kv[name] = (key, value)

    def read(self, name: str, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return the supports' keys/values for ``batch_size`` queries.

        Returns:
            (key, value), each (batch_size, heads, K * L, head_dim).
        """
        if name not in self._kv:
            raise KeyError(f"KV bank has no entry for layer {name!r}: was the support pass run?")
        key, value = self._kv[name]
        n, heads, length, dim = key.shape
        if n != batch_size * self.shots:
            raise ValueError(
                f"layer {name}: the support pass had {n} images, expected {batch_size} queries x "
                f"{self.shots} shots"
            )

        def flatten(t):
            # (B*K, h, L, d) -> (B, h, K*L, d): the K supports of a query become one token sequence
            t = t.view(batch_size, self.shots, heads, length, dim).permute(0, 2, 1, 3, 4)
            return t.reshape(batch_size, heads, self.shots * length, dim)

        return flatten(key), flatten(value)


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
        kv_read: bool = False,
    ) -> torch.Tensor:
        residual = hidden_states
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
            if kv_read:
                support_key, support_value = kv_bank.read(self.name, batch_size)
                key = torch.cat([key, support_key.to(key.dtype)], dim=2)
                value = torch.cat([value, support_value.to(value.dtype)], dim=2)
            else:
                kv_bank.write(self.name, key, value)

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
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CrossAttnProcessor2_0(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0``, unchanged, that also accepts (and ignores) ``kv_bank``.

    Cross-attention receives the same ``cross_attention_kwargs`` as self-attention; accepting
    the arguments keeps diffusers from warning about them on every call.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, kv_bank: Optional[KVBank] = None, kv_read: bool = False):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


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
