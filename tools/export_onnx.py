#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Export the model of a config as ONNX graphs (VAE encoder, VAE decoder, support pass, query
pass) with a manifest, checked against torch on random inputs.

  python tools/export_onnx.py --config-file CFG --output DIR [--size 512] [KEY VALUE ...]

The model is built from the config and MODEL.WEIGHTS is loaded (MODEL.DIFFEWS.ALLOW_UNTRAINED True
exports the untrained model); --size defaults to INPUT.IMAGE_SIZE; --device defaults to cpu
(tracing needs no accelerator). <output> receives vae_encoder.onnx, vae_decoder.onnx,
support_pass.onnx, query_pass.onnx and manifest.json (written last: a folder with a manifest
holds a complete export); diffews/modeling/onnx/__init__.py describes them. The max abs
differences ONNX Runtime vs torch are printed per graph; above 1e-3 the export is reported as
failed (exit status 1). MODEL.DIFFEWS.BACKEND onnxruntime makes and caches such an export by
itself: this tool is for exporting to a folder of your choice. Errors are one line (exit status
2: command line or config, 1: files); --debug shows the traceback.
"""

import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews.checkpoint import load_inference_weights
from diffews.cli import (
    UsageError,
    config_overrides,
    entry_parser,
    load_entry_config,
    preflight,
    run_cli,
)
from diffews.modeling.onnx import export_model
from diffews.modeling.onnx.export import require

from detectron2.modeling import build_model

# fp32 graphs of the same functions differ from torch by float rounding (about 1e-5); more
# than this means the graph computes something else
TOLERANCE = 1e-3


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     output="required", device=True, output_help="export folder to write")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="square input size of the graphs (default INPUT.IMAGE_SIZE)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check against torch (faster; nothing is printed to compare)")
    return p


def main(args) -> int:
    if args.device is None and "MODEL.DEVICE" not in config_overrides(args)[0::2]:
        args.device = "cpu"
    cfg = load_entry_config(args, {"size": "INPUT.IMAGE_SIZE"})
    # the export goes to --output; the config's backend (which would export into its cache
    # when the weights load) is not attached here
    cfg.MODEL.DIFFEWS.BACKEND = "torch"
    preflight(cfg, output_dir=args.output, weights=[cfg.MODEL.WEIGHTS])
    require("onnx")
    require("onnxruntime")
    if cfg.MODEL.DIFFEWS.INFERENCE_DTYPE != "float32" or cfg.MODEL.DIFFEWS.COMPILE:
        raise UsageError("the ONNX graphs are float32 graphs of the eager model: set "
                         "MODEL.DIFFEWS.INFERENCE_DTYPE float32 and MODEL.DIFFEWS.COMPILE False")
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    manifest = export_model(model, args.output, cfg.INPUT.IMAGE_SIZE, check=not args.no_check)
    graphs = ", ".join(f"{name} ({info['nodes']} nodes)" for name, info in
                       manifest["graphs"].items())
    print(f"wrote {args.output}: {graphs}, {cfg.INPUT.IMAGE_SIZE} px, opset {manifest['opset']}")
    if args.no_check:
        return 0
    print("max abs difference ONNX Runtime vs torch (random inputs):")
    for name, diff in manifest["check"].items():
        note = " (uint8 grey levels)" if name.endswith("uint8") else ""
        print(f"  {name:20s} {diff:.2e}{note}")
    bad = {k: v for k, v in manifest["check"].items()
           if not k.endswith("uint8") and v > TOLERANCE}
    if bad:
        raise ValueError(f"{args.output}: the export differs from torch by more than "
                         f"{TOLERANCE:g}: {bad}")
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, export; one ``error:`` line and exit status 1/2."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
