# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DiffewS training loss written from the rules, for tests, without any DiffewS code.

docs/METHOD.md sections 0-4: every latent is ``scaling_factor * VAE posterior`` of an image in
[-1, 1]; a mask becomes a 3-channel image, -1 background / +1 foreground (section 2). The support
pass runs the UNet on ``cat([image latent, mask latent])`` through ``conv_in_ref``; each
self-attention (``attn1``) records its keys/values and attends to its own tokens only. The query
pass runs the query image latent through ``conv_in``; each ``attn1`` attends to
``[own ; support 1 ; ... ; support K]`` (section 1.4). Both passes at timestep 1 with the 77-token
empty prompt ``[BOS, EOS, pad id 0 x 75]`` (sections 1.6, 1.7). The loss is the mean squared error
between the query pass's output and minus the latent of the query mask (section 4).

Only diffusers / transformers loaders and plain tensor algebra are used here: the attention is
computed by hand, the input convolutions with ``F.conv2d`` on the UNet's weights.
"""

import copy

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextModel, CLIPTokenizer


class _Bank:
    def __init__(self):
        self.mode, self.kv = "support", {}


class _HandAttention:
    """Self-attention by hand; ``attn1`` layers record (support pass) or append (query pass) the
    supports' keys/values, flattened over the K supports in shot order."""

    def __init__(self, name: str, bank: _Bank):
        self.name, self.bank = name, bank

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        b, n, c = hidden_states.shape
        heads, d = attn.heads, c // attn.heads

        def split(x):  # (B, L, C) -> (B, heads, L, d)
            return x.reshape(x.shape[0], x.shape[1], heads, d).permute(0, 2, 1, 3)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(
            attn.to_v(hidden_states))
        if self.bank.mode == "support":
            self.bank.kv[self.name] = (k, v)
        else:
            sk, sv = self.bank.kv[self.name]  # (K, heads, L, d) -> (B, heads, K * L, d)
            flat = [x.permute(1, 0, 2, 3).reshape(heads, -1, d)[None].expand(b, -1, -1, -1)
                    for x in (sk, sv)]
            k, v = torch.cat([k, flat[0]], 2), torch.cat([v, flat[1]], 2)
        w = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(b, n, c)
        return attn.to_out[1](attn.to_out[0](out))


class _ConvIn(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.weights, self.use = weights, "query"

    def forward(self, x):
        w, bias = self.weights[self.use]
        return F.conv2d(x, w, bias, padding=w.shape[-1] // 2)


def reference_loss(pretrained: str, unet, episode: dict) -> torch.Tensor:
    """The loss of one episode with posterior means (no sampling), from the rules.

    Args:
        pretrained: the SD folder (vae/, text_encoder/, tokenizer/).
        unet: the model's UNet (its weights: ``conv_in``, ``conv_in_ref`` and the rest); copied,
            its attention processors and input conv replaced by the hand-written ones above.
        episode: {"image" (3,H,W), "support_images" (K,3,H,W), "support_masks" (K,H,W),
            "sem_seg" (H,W) with 1 = foreground, 0 and 255 = not foreground}.
    """
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae").eval()
    tok = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder").eval()
    ids = torch.tensor([[tok.bos_token_id, tok.eos_token_id] + [0] * 75])
    scale = vae.config.scaling_factor

    def latent(images):  # (N, 3, H, W) in [-1, 1] -> scaled posterior means
        return vae.encode(images).latent_dist.mean * scale

    def as_image(mask):  # (N, H, W), 1 = foreground -> (N, 3, H, W) of -1 / +1
        return ((mask == 1).float() * 2 - 1)[:, None].repeat(1, 3, 1, 1)

    ref = copy.deepcopy(unet).eval()
    state = unet.state_dict()
    conv = _ConvIn({"query": (state["conv_in.weight"], state["conv_in.bias"]),
                    "support": (state["conv_in_ref.weight"], state["conv_in_ref.bias"])})
    ref.conv_in = conv
    bank = _Bank()
    ref.set_attn_processor({
        name: _HandAttention(name, bank) if name.endswith("attn1.processor") else AttnProcessor()
        for name in ref.attn_processors})
    with torch.no_grad():
        prompt = text(ids)[0]
        images = episode["support_images"].float() / 127.5 - 1
        support = torch.cat([latent(images), latent(as_image(episode["support_masks"]))], 1)
        k = len(support)
        t = torch.ones(1, dtype=torch.long)
        bank.mode, conv.use = "support", "support"
        ref(support, t.expand(k), encoder_hidden_states=prompt.expand(k, -1, -1))
        bank.mode, conv.use = "query", "query"
        query = latent(episode["image"][None].float() / 127.5 - 1)
        out = ref(query, t, encoder_hidden_states=prompt).sample
        target = -latent(as_image(torch.as_tensor(episode["sem_seg"])[None]))
        return ((out - target) ** 2).mean()
