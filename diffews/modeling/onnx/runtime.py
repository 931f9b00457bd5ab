# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``OnnxRuntimeBackend``: an export folder run in ONNX Runtime, with the torch model's methods.

Tensors in and out are torch tensors, so a ``SupportSet`` encoded by either backend feeds the
other's query pass. Every run binds torch tensors' memory to the session (IO binding): inputs are
read where they lie (a SupportSet's stored keys/values included) and outputs are written straight
into preallocated torch tensors, on the CPU or, with the CUDA / TensorRT providers, on the GPU.

Static shapes (``static_shapes``, default on): the graphs are exported with symbolic batch, group
and shot axes, and ONNX Runtime's optimiser cannot fuse across the Shape/Gather/Reshape chains
those leave (the mid model's query pass keeps 3,118 nodes after level-"all" optimisation). Each
shape actually used gets its own session with every symbolic dimension fixed
(``add_free_dimension_override_by_name``), built on first use of that shape: the same
optimiser then folds the chains and fuses the attention MatMuls (1,442 nodes, as many as a graph
exported with static shapes), with no second export. ``optimized_node_count`` reports both.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..readout import prediction_score, relative_threshold
from ...utils.errors import SupportSetError
from ..support_set import SupportSet, signature_difference
from .export import GRAPHS, OnnxExportError, read_manifest, require, weights_digest
from .graphs import kv_names

logger = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "session_options"]

# ORT_ENABLE_ALL: on the tiny model at 64 px (2 shared, heavily loaded cores; bench.py) it was
# the fastest level for the VAE encoder, decoder and support pass, while BASIC/EXTENDED ran the
# query pass about 30% faster; re-measure with bench.py on a quiet machine before changing it
DEFAULT_OPTIMIZATION = "all"
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
          "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(threads: Optional[int] = None, optimization: str = DEFAULT_OPTIMIZATION,
                    spinning: Optional[bool] = None):
    """``onnxruntime.SessionOptions`` with a graph optimisation level ("basic", "extended",
    "all", "disable"), ``intra_op_num_threads`` (None: torch's thread count, so both runtimes
    use the same cores) and intra-op thread spinning (None: ORT's default)."""
    ort = require("onnxruntime")
    if optimization not in LEVELS:
        raise ValueError(f"optimization must be one of {sorted(LEVELS)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization])
    opts.intra_op_num_threads = int(threads) if threads else torch.get_num_threads()
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # errors only: ORT warns about every constant-folded initializer
    return opts


class OnnxRuntimeBackend:
    """The inference parts of a ``DiffewS`` from an export folder (``export_model``).

    Args:
        folder: the export folder.
        model: optional ``DiffewS``; an export of another model (signature or weights digest) or
            another size is refused with a one-line ``OnnxExportError`` naming the field.
        image_size: optional working size the export must have.
        providers: ONNX Runtime execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]`` or with ``"TensorrtExecutionProvider"`` first; default CPU.
        threads, optimization, spinning: see ``session_options`` (ignored if ``options`` given).
        options: a ready ``onnxruntime.SessionOptions`` (then one session per graph, with the
            symbolic dimensions left free).
        manifest: the manifest dict, when the folder has none yet (``export_model``'s check).
        static_shapes: one session per graph and input shape, every symbolic dimension fixed
            (module docstring); False: one session per graph for every shape.
    """

    def __init__(self, folder: str, model=None, image_size: Optional[int] = None,
                 providers: Optional[Sequence] = None, threads: Optional[int] = None,
                 optimization: str = DEFAULT_OPTIMIZATION, spinning: Optional[bool] = None,
                 options=None, manifest: Optional[Dict] = None, static_shapes: bool = True):
        self.ort = require("onnxruntime")
        self.folder = folder
        self.manifest = manifest if manifest is not None else read_manifest(folder)
        for name in GRAPHS:
            path = os.path.join(folder, self.manifest["graphs"][name]["file"])
            if not os.path.isfile(path):
                raise OnnxExportError(f"{path}: missing from the ONNX export; export again "
                                      "(cached_export rebuilds it)")
        if model is not None:
            self.check_model(model)
        if image_size is not None and int(image_size) != self.image_size:
            raise OnnxExportError(f"{folder}: exported for {self.image_size} px, not {image_size}")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.options = options
        self._session_args = (threads, optimization, spinning)
        self.static_shapes = bool(static_shapes) and options is None
        on_gpu = any(str(p if isinstance(p, str) else p[0]).startswith(("CUDA", "Tensorrt"))
                     for p in self.providers)
        self.device = torch.device("cuda" if on_gpu else "cpu")
        self._sessions: Dict[str, object] = {}

    # -- the export ----------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def layers(self) -> List[str]:
        return list(self.manifest["layers"])

    @property
    def signature(self) -> Dict:
        """The SupportSet model signature of the exported model."""
        return self.manifest["signature"]

    def check_model(self, model) -> None:
        """Raise ``OnnxExportError`` (one line) if the export is not of ``model``."""
        diff = signature_difference(self.signature, model.support_signature(),
                                    ("the export", "the model"))
        if not diff and self.manifest.get("weights_digest") != weights_digest(model):
            diff = (f"weights_digest is {self.manifest.get('weights_digest')!r} in the export, "
                    f"{weights_digest(model)!r} in the model")
        if diff:
            raise OnnxExportError(f"{self.folder}: ONNX export of another model ({diff}); "
                                  "export again")

    def graph_dims(self, name: str, inputs: Dict[str, torch.Tensor]) -> Dict[str, int]:
        """The symbolic dimensions of graph ``name`` (N, B, G, K) read off ``inputs``' shapes;
        a tensor of the wrong rank or fixed size is a one-line error naming both shapes."""
        dims: Dict[str, int] = {}
        for spec in self.manifest["graphs"][name]["inputs"]:
            t = inputs[spec["name"]]
            want = spec["shape"]
            ok = len(t.shape) == len(want) and all(
                isinstance(w, str) or int(w) == int(n) for w, n in zip(want, t.shape))
            if not ok:
                raise ValueError(f"{name} input {spec['name']}: shape {tuple(t.shape)}, the "
                                 f"export expects {tuple(want)}")
            for w, n in zip(want, t.shape):
                if isinstance(w, str):
                    dims.setdefault(w, int(n))
        return dims

    def _options(self, dims: Dict[str, int], optimized_path: Optional[str] = None):
        if self.options is not None:
            return self.options
        opts = session_options(*self._session_args)
        if self.static_shapes:
            for dim, n in dims.items():
                opts.add_free_dimension_override_by_name(dim, int(n))
        if optimized_path:
            opts.optimized_model_filepath = optimized_path
        return opts

    def session(self, name: str, dims: Optional[Dict[str, int]] = None):
        """The graph's ``InferenceSession`` for inputs with symbolic dimensions ``dims``
        (``graph_dims``), created on first use of that shape (of the graph, without
        ``static_shapes``)."""
        key = (name, tuple(sorted((dims or {}).items())) if self.static_shapes else ())
        if key not in self._sessions:
            path = os.path.join(self.folder, self.manifest["graphs"][name]["file"])
            self._sessions[key] = self.ort.InferenceSession(
                path, sess_options=self._options(dims or {}), providers=self.providers)
        return self._sessions[key]

    def optimized_node_count(self, name: str, dims: Optional[Dict[str, int]] = None) -> int:
        """Nodes of graph ``name`` after ONNX Runtime's optimisation (the session options'
        level), with the symbolic dimensions fixed to ``dims`` (``static_shapes``) or left free
        (``dims`` None). Builds a throw-away session that writes its optimised graph."""
        import tempfile

        onnx = require("onnx")
        path = os.path.join(self.folder, self.manifest["graphs"][name]["file"])
        with tempfile.TemporaryDirectory(prefix="ort_opt_") as tmp:
            out = os.path.join(tmp, f"{name}.onnx")
            static, self.static_shapes = self.static_shapes, dims is not None
            try:
                opts = self._options(dims or {}, out)
            finally:
                self.static_shapes = static
            self.ort.InferenceSession(path, sess_options=opts, providers=self.providers)
            return len(onnx.load(out, load_external_data=False).graph.node)

    def _run(self, graph: str, inputs: Dict[str, torch.Tensor], dims: Dict[str, int]
             ) -> Dict[str, torch.Tensor]:
        """Run ``graph`` on torch tensors bound in place; outputs are new torch tensors whose
        shapes come from the manifest with the symbolic ``dims`` filled in."""
        session = self.session(graph, self.graph_dims(graph, inputs))
        io = session.io_binding()
        kind = self.device.type
        index = self.device.index or 0
        kept = []  # the bound tensors must outlive the run
        for name, t in inputs.items():
            t = t.to(self.device, torch.float32).contiguous()
            kept.append(t)
            io.bind_input(name, kind, index, np.float32, tuple(t.shape), t.data_ptr())
        outputs = {}
        for spec in self.manifest["graphs"][graph]["outputs"]:
            shape = tuple(dims[d] if isinstance(d, str) else d for d in spec["shape"])
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            io.bind_output(spec["name"], kind, index, np.float32, shape, out.data_ptr())
            outputs[spec["name"]] = out
        if kind == "cuda":
            torch.cuda.synchronize(self.device)  # torch's writes to the inputs are done
        session.run_with_iobinding(io)
        io.synchronize_outputs()  # ORT's writes are done before torch reads (a no-op on CPU)
        return outputs

    # -- the model's building blocks -----------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images in [-1, 1] -> (N, C, s, s) scaled posterior means
        (``DiffewS.encode(images, sample=False)``)."""
        return self._run("vae_encoder", {"images": images}, {"N": len(images)})["latents"]

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, s, s) scaled latents -> the VAE decoder's float image (N, 3, S, S)."""
        return self._run("vae_decoder", {"latents": latents}, {"N": len(latents)})["image"]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, s, s) scaled latents -> (N, 3, S, S) uint8, mapped as ``DiffewS.decode``
        maps it (clip to [-1, 1], to [0, 255], truncate)."""
        image = self.decode_float(latents)
        image = (image.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0
        return image.clamp(0, 255).to(torch.uint8)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """[0, 255] -> [-1, 1], as ``DiffewS.normalize``."""
        return torch.as_tensor(images).to(torch.float32) / 127.5 - 1.0

    @staticmethod
    def mask_to_image(masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) masks -> (N, 3, H, W) -1/+1 images, as ``DiffewS.mask_to_image``."""
        m = (torch.as_tensor(masks) > 0).to(torch.float32) * 2.0 - 1.0
        return m[:, None].expand(-1, 3, -1, -1)

    @torch.no_grad()
    def support_pass(self, latents: torch.Tensor, signature: Optional[Dict] = None,
                     info: Optional[List[Dict]] = None) -> SupportSet:
        """(N, 2C, s, s) support latents -> their SupportSet (``DiffewS.support_pass`` with
        ``stop_early``)."""
        out = self._run("support_pass", {"latents": latents}, {"N": len(latents)})
        names = kv_names(self.layers)
        keys = {layer: out[names[2 * i]] for i, layer in enumerate(self.layers)}
        values = {layer: out[names[2 * i + 1]] for i, layer in enumerate(self.layers)}
        return SupportSet(latents.to(self.device, torch.float32), keys, values, signature, info)

    @torch.no_grad()
    def support_latents(self, images: Optional[torch.Tensor], masks: torch.Tensor,
                        image_latents: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 2C, s, s) image then mask latents, each image and mask in its own call (as
        ``DiffewS.support_latents``: a support's latent never depends on the others)."""
        out = []
        for i in range(len(masks)):
            z_img = (image_latents[i:i + 1] if image_latents is not None
                     else self.encode(self.normalize(images[i:i + 1])))
            z_mask = self.encode(self.mask_to_image(masks[i:i + 1]))
            out.append(torch.cat([z_img.to(self.device), z_mask], dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def encode_supports(self, images: Optional[torch.Tensor], masks: torch.Tensor,
                        image_latents: Optional[torch.Tensor] = None, signature=None,
                        info=None) -> SupportSet:
        """Supports at the working size -> SupportSet, as ``DiffewS.encode_supports``
        (``support_pass_batch`` supports per support-pass call)."""
        latents = self.support_latents(images, masks, image_latents)
        n = int(self.manifest.get("support_pass_batch", 8))
        out = SupportSet.cat([self.support_pass(latents[i:i + n])
                              for i in range(0, len(latents), n)])
        return SupportSet(out.latents, out.keys, out.values, signature, info)

    @torch.no_grad()
    def query_pass(self, query_latents: torch.Tensor,
                   supports: Union[SupportSet, Sequence[SupportSet]]) -> torch.Tensor:
        """(B, C, s, s) query latents and one SupportSet shared by all B queries or a list of B
        with the same K -> (B, C, s, s), ``DiffewS.query_pass``'s output. The empty-prompt
        embedding and the timestep are baked into the graph (manifest ``constants``)."""
        batch = len(query_latents)
        rows = [supports] if isinstance(supports, SupportSet) else list(supports)
        if not rows or any(len(r) == 0 for r in rows):
            raise SupportSetError("a query needs at least one support in every SupportSet")
        if not isinstance(supports, SupportSet) and len(rows) != batch:
            # as torch's KVBank: a list holds one set per query
            raise ValueError(f"{len(rows)} SupportSets for a batch of {batch} queries")
        if len({len(r) for r in rows}) != 1:
            raise SupportSetError("the queries of one batch must have the same number of "
                                  f"supports, got {[len(r) for r in rows]}")
        for r in rows:
            if r.signature is not None and signature_difference(r.signature, self.signature):
                r.check_compatible(self.signature, "the exported model")  # raises, naming it
        inputs = {"query_latents": query_latents}
        names = kv_names(self.layers, "support_")
        for i, layer in enumerate(self.layers):
            for name, table in ((names[2 * i], "keys"), (names[2 * i + 1], "values")):
                if layer not in getattr(rows[0], table):
                    rows[0].flat_kv(layer)  # raises, naming the layer
                # one set: its stored (K, heads, L, d) tensor as (1, K, ...) is a view, no copy
                parts = [getattr(r, table)[layer] for r in rows]
                inputs[name] = parts[0][None] if len(parts) == 1 else torch.stack(parts)
        return self._run("query_pass", inputs, {"B": batch})["output"]

    def threshold(self, image: torch.Tensor, rel_threshold: float = 0.25,
                  abs_threshold: float = 0.0) -> torch.Tensor:
        """``readout.relative_threshold`` (the model's thresholds are not in the export)."""
        return relative_threshold(image, rel_threshold, abs_threshold)

    score = staticmethod(prediction_score)

    def __repr__(self) -> str:
        return (f"OnnxRuntimeBackend({self.folder}, {self.image_size} px, "
                f"{len(self.layers)} fused layers, {self.providers})")
