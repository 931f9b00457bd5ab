# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""ONNX export of a built ``DiffewS`` and an ONNX Runtime backend for its inference parts.

An export folder holds four graphs and a ``manifest.json``:

* ``vae_encoder.onnx``: images in [-1, 1] -> scaled posterior-mean latents (``DiffewS.encode``);
* ``vae_decoder.onnx``: scaled latents -> the VAE's float image (``DiffewS.decode`` before its
  uint8 mapping, which the backend applies exactly as torch does);
* ``support_pass.onnx``: support latents (N, 2C, h, w) -> keys and values of every fused layer,
  traced with ``stop_early`` so nothing past the last fused layer is in the graph;
* ``query_pass.onnx``: query latents and, per fused layer, a SupportSet's keys/values ->
  ``DiffewS.query_pass``'s output.

``export_model`` writes a folder, ``cached_export`` keeps one beside the weights keyed by the model
signature and image size, ``OnnxRuntimeBackend`` runs one. onnx/onnxruntime are imported lazily,
so importing this package never needs them.
"""

from .cache import cached_export, export_key
from .export import OnnxExportError, export_model, read_manifest

__all__ = ["export_model", "cached_export", "export_key", "read_manifest", "OnnxExportError",
           "OnnxRuntimeBackend"]


def __getattr__(name):
    # the backend imports onnxruntime; loaded on first use so that a missing onnxruntime only
    # matters to code that runs graphs
    if name == "OnnxRuntimeBackend":
        from .runtime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    raise AttributeError(name)
