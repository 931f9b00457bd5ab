# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``export_model``: a built ``DiffewS`` -> four ONNX graphs and a ``manifest.json``.

The manifest is written last, so a folder with a manifest holds a complete export. It records
every graph's input/output names and shapes (symbolic dims by name), the fused layers in graph
order, the SupportSet model signature, a digest of all weights (the signature's fingerprint covers
only a few tensors; the digest lets a cache notice any changed weight), the image size, the baked
constants, opset and package versions, and the check's max differences.
"""

import hashlib
import json
import logging
import os
import warnings
from typing import Dict, List, Optional

import torch

from ...utils.atomic import atomic_write_json
from ..support_set import model_signature
from .graphs import (QueryPassGraph, SupportPassGraph, VaeDecoderGraph, VaeEncoderGraph,
                     kv_names)

logger = logging.getLogger(__name__)

__all__ = ["OnnxExportError", "export_model", "read_manifest", "weights_digest", "FORMAT",
           "VERSION", "OPSET", "GRAPHS", "require"]

FORMAT = "diffews.onnx"
VERSION = 1
OPSET = 17
GRAPHS = ("vae_encoder", "vae_decoder", "support_pass", "query_pass")


class OnnxExportError(ValueError):
    """An export folder that cannot be used (missing file, another model, another size)."""


def require(module: str):
    """Import onnx/onnxruntime, or raise a one-line ImportError naming the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install onnx onnxruntime (the versions "
                          "pinned in requirements.txt)") from None


def read_manifest(folder: str) -> Dict:
    """The manifest of an export folder; a missing or unreadable one is a one-line error."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise OnnxExportError(f"{path}: missing; not an ONNX export folder (export_model or "
                              "cached_export writes one)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise OnnxExportError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise OnnxExportError(f"{path}: not a {FORMAT} version {VERSION} manifest")
    return manifest


@torch.no_grad()
def weights_digest(model) -> str:
    """A digest of every UNet and VAE tensor and of the baked prompt embedding and timestep.

    Per tensor: name, shape, float64 sum and sum of squares, and its first and last 64 values;
    one pass over the weights in about a tenth of the time hashing all their bytes would take,
    and any fine-tuning or swapped component changes it.
    """
    h = hashlib.sha1()
    for prefix, module in (("unet", model.unet), ("vae", model.vae)):
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            t = t.detach().float().cpu().reshape(-1)
            d = t.double()
            h.update(f"{prefix}.{name}{tuple(t.shape)}{d.sum().item():.17g}"
                     f"{(d * d).sum().item():.17g}".encode())
            h.update(t[:64].numpy().tobytes() + t[-64:].numpy().tobytes())
    h.update(model.prompt_embeds_test.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(f"timestep={model.timestep}".encode())
    return h.hexdigest()[:16]


def _check_model(model, image_size: int) -> None:
    if model.inference_dtype != torch.float32 or model.vae.dtype != torch.float32:
        raise OnnxExportError(f"ONNX export needs a float32 model, this one has a "
                              f"{model.inference_dtype} UNet and a {model.vae.dtype} VAE "
                              "(MODEL.DIFFEWS.INFERENCE_DTYPE)")
    if model.compiled:
        raise OnnxExportError("ONNX export traces the eager model; build it without "
                              "MODEL.DIFFEWS.COMPILE")
    model.check_size((image_size, image_size))


def _dims(shape, names: Dict[int, str]) -> List:
    return [names.get(i, int(n)) for i, n in enumerate(shape)]


def _export(module, args, path, input_names, output_names, dynamic_axes) -> None:
    # the wrapper in eval mode: torch.onnx.export restores the mode the module had, and a new
    # wrapper's default (training) would switch the wrapped model to training mode for good
    module.eval()
    with warnings.catch_warnings():
        # every Python branch the tracer freezes tests a fixed dim (channels, spatial size) or
        # only memory layout (diffusers' upsampler, batch >= 64), and the Slice constant-folding
        # note is harmless: silenced so that an export prints what matters
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        # dynamo=False on purpose (asked for opset 17 graphs from the TorchScript tracer, which
        # follows the Python control flow that stops the support pass); its notice is known
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


def _node_count(onnx, path: str) -> int:
    # the weights are not needed to count nodes (and may be external data for large models)
    return len(onnx.load(path, load_external_data=False).graph.node)


@torch.no_grad()
def export_model(model, out_dir: str, image_size: int, check: bool = True,
                 providers: Optional[List] = None) -> Dict:
    """Export ``model`` (a built ``DiffewS``, float32, eager) for square ``image_size`` inputs.

    Args:
        out_dir: folder to write (created; existing graph files are overwritten).
        check: run every graph in ONNX Runtime on random inputs against the torch model and
            record the max abs differences (``manifest["check"]``, also logged).
        providers: ONNX Runtime providers for the check (default CPU).
    Returns:
        the manifest (as written to ``out_dir/manifest.json``).
    """
    onnx = require("onnx")
    image_size = int(image_size)
    _check_model(model, image_size)
    # traced and checked in torch: an attached backend would stand in for the blocks traced
    attached, was_training = getattr(model, "inference_backend", None), model.training
    model.inference_backend = None
    try:
        return _export_model(onnx, model.eval(), out_dir, image_size, check, providers)
    finally:
        model.inference_backend = attached
        model.train(was_training)


def _export_model(onnx, model, out_dir: str, image_size: int, check: bool,
                  providers: Optional[List]) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "manifest.json")
    if os.path.exists(stale):
        os.remove(stale)  # the folder is incomplete until the new manifest is written
    channels = int(model.vae.config.latent_channels)
    latent = image_size // 2 ** (len(model.vae.config.block_out_channels) - 1)
    layers = list(model.fused_layers)
    g = torch.Generator().manual_seed(0)
    # batch 2 (not 1) in the traced examples, so that no batch dimension is folded into a
    # constant as a broadcastable 1
    device = model.device  # traced where the model lies (a GPU model exports the same graph)
    images = (torch.rand(2, 3, image_size, image_size, generator=g) * 2 - 1).to(device)
    z = torch.randn(2, channels, latent, latent, generator=g).to(device)
    z_support = torch.randn(2, 2 * channels, latent, latent, generator=g).to(device)
    graphs: Dict[str, Dict] = {}

    def record(name, inputs, outputs):
        graphs[name] = {"file": f"{name}.onnx", "inputs": inputs, "outputs": outputs}
        return os.path.join(out_dir, f"{name}.onnx")

    path = record("vae_encoder", [{"name": "images", "shape": ["N", 3, image_size, image_size]}],
                  [{"name": "latents", "shape": ["N", channels, latent, latent]}])
    _export(VaeEncoderGraph(model), (images,), path, ["images"], ["latents"],
            {"images": {0: "N"}, "latents": {0: "N"}})
    path = record("vae_decoder", [{"name": "latents", "shape": ["N", channels, latent, latent]}],
                  [{"name": "image", "shape": ["N", 3, image_size, image_size]}])
    _export(VaeDecoderGraph(model), (z,), path, ["latents"], ["image"],
            {"latents": {0: "N"}, "image": {0: "N"}})

    support_graph = SupportPassGraph(model)
    kv = support_graph(z_support)
    out_names = kv_names(layers)
    path = record("support_pass",
                  [{"name": "latents", "shape": ["N", 2 * channels, latent, latent]}],
                  [{"name": n, "layer": layers[i // 2], "shape": _dims(t.shape, {0: "N"})}
                   for i, (n, t) in enumerate(zip(out_names, kv))])
    _export(support_graph, (z_support,), path, ["latents"], out_names,
            {"latents": {0: "N"}, **{n: {0: "N"} for n in out_names}})

    # two queries, each with its own two supports: G = B = 2, K = 2 (all dims traced as > 1)
    in_names = kv_names(layers, "support_")
    kv_in = [t.reshape(1, *t.shape).expand(2, -1, -1, -1, -1).contiguous() for t in kv]
    kv_axes = {n: {0: "G", 1: "K"} for n in in_names}
    path = record("query_pass",
                  [{"name": "query_latents", "shape": ["B", channels, latent, latent]}]
                  + [{"name": n, "layer": layers[i // 2], "shape": _dims(t.shape, {0: "G", 1: "K"})}
                     for i, (n, t) in enumerate(zip(in_names, kv_in))],
                  [{"name": "output", "shape": ["B", channels, latent, latent]}])
    _export(QueryPassGraph(model), (z, *kv_in), path, ["query_latents", *in_names], ["output"],
            {"query_latents": {0: "B"}, "output": {0: "B"}, **kv_axes})

    for name, info in graphs.items():
        info["nodes"] = _node_count(onnx, os.path.join(out_dir, info["file"]))
    # the support graph must stop at the last fused layer: it holds fewer nodes than the query
    # graph, which is the whole UNet
    if graphs["support_pass"]["nodes"] >= graphs["query_pass"]["nodes"]:
        raise OnnxExportError(f"the support-pass graph has {graphs['support_pass']['nodes']} "
                              f"nodes, the full UNet {graphs['query_pass']['nodes']}: not pruned")
    manifest = {
        "format": FORMAT, "version": VERSION, "opset": OPSET, "image_size": image_size,
        "latent_size": latent, "latent_channels": channels, "layers": layers,
        "signature": model_signature(model), "weights_digest": weights_digest(model),
        "support_pass_batch": int(model.support_pass_batch),
        "constants": {"timestep": int(model.timestep),
                      "encoder_hidden_states": {"baked": True, "source": "prompt_embeds_test",
                                                "shape": list(model.prompt_embeds_test.shape)}},
        "dims": {"N": "images / latents per call", "B": "queries",
                 "G": "1 (one SupportSet shared by the B queries) or B (one per query)",
                 "K": "supports (shots) per query"},
        "graphs": graphs, "versions": _versions(),
    }
    if check:
        from .check import check_export

        manifest["check"] = check_export(model, out_dir, manifest, providers)
    atomic_write_json(manifest, os.path.join(out_dir, "manifest.json"), indent=1)
    logger.info("ONNX export of the model at %d px written to %s", image_size, out_dir)
    return manifest


def _versions() -> Dict[str, Optional[str]]:
    import diffusers

    out = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out
