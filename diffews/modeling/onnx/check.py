# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``check_export``: every graph of an export run in ONNX Runtime against the torch model's own
methods (``encode``, ``vae.decode``, ``support_pass``, ``query_pass``) on random inputs."""

import logging
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["check_export"]


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@torch.no_grad()
def check_export(model, folder: str, manifest: Dict, providers: Optional[List] = None
                 ) -> Dict[str, float]:
    """Max abs differences ONNX Runtime vs torch per graph (logged and returned).

    The query pass is checked with two queries, each with its own two supports (a list of
    SupportSets), and with one single-support set shared by both queries.
    """
    from .runtime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(folder, providers=providers, manifest=manifest)
    size, latent = manifest["image_size"], manifest["latent_size"]
    channels = manifest["latent_channels"]
    g = torch.Generator().manual_seed(1)
    device = model.device
    images = (torch.rand(2, 3, size, size, generator=g) * 2 - 1).to(device)
    z = torch.randn(2, channels, latent, latent, generator=g).to(device)
    z_support = torch.randn(4, 2 * channels, latent, latent, generator=g).to(device)
    prompt = model.prompt_embeds_test

    out = {"vae_encoder": _diff(backend.encode(images), model.encode(images, sample=False))}
    ref = model.vae.decode(z / model.latent_scale).sample
    out["vae_decoder"] = _diff(backend.decode_float(z), ref)
    # with the uint8 mapping both sides apply: differences of at most one grey level are
    # rounding at a truncation boundary
    out["vae_decoder_uint8"] = _diff(backend.decode(z), model.decode(z))

    torch_set = model.support_pass(z_support, prompt, stop_early=True)[0]
    ort_set = backend.support_pass(z_support)
    out["support_pass"] = max(max(_diff(ort_set.keys[n], torch_set.keys[n]),
                                  _diff(ort_set.values[n], torch_set.values[n]))
                              for n in manifest["layers"])
    rows = [torch_set[0:2], torch_set[2:4]]
    out["query_pass"] = _diff(backend.query_pass(z, rows), model.query_pass(z, rows, prompt))
    shared = torch_set[1]
    out["query_pass_shared"] = _diff(backend.query_pass(z, shared),
                                     model.query_pass(z, shared, prompt))
    logger.info("ONNX export check, max abs difference vs torch: %s",
                ", ".join(f"{k} {v:.2e}" for k, v in out.items()))
    # fp32 graphs of the same functions differ by float rounding only (about 1e-5 at most);
    # much more means the graph computes something else
    bad = {k: v for k, v in out.items() if k != "vae_decoder_uint8" and v > 1e-3}
    if bad:
        logger.warning("ONNX export in %s differs from torch by more than 1e-3: %s", folder, bad)
    return out

