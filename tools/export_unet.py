#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Export a trained DiffewS UNet in the released DiffewS layout (``<output>/unet/``: a diffusers
folder whose weights hold ``conv_in_ref``), which MODEL.WEIGHTS accepts as it accepts the
official releases.

  python tools/export_unet.py --config-file CFG --weights output/model_final.pth --output
  weight/my_fold0

--output defaults to output/export_unet; the model is built on --device (default cpu, unless a
MODEL.DEVICE override is given). Config
overrides are trailing KEY VALUE pairs (or after --opts). The PRETRAINED folder, the weights and
the output folder are checked before the model is built. The folder is written under a temporary
name and renamed when complete. Errors are one line (exit status 2: command line or config, 1:
files); --debug shows the traceback.
"""

import os
import sys

# diffews first: its __init__ filters fvcore's torch.jit.script FutureWarning before detectron2
from diffews import DiffewSCheckpointer
from diffews.cli import config_overrides, entry_parser, load_entry_config, run_cli
from diffews.cli.preflight import check_weights, preflight
from diffews.modeling import save_release_unet
from diffews.utils.atomic import atomic_folder

from detectron2.modeling import build_model

DEFAULT_OUTPUT = "output/export_unet"


def get_parser():
    p = entry_parser(
        __doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        output="optional",
        device=True,
        output_help=f"release folder to write, <output>/unet/ (default {DEFAULT_OUTPUT})",
    )
    p.add_argument("--weights", required=True, help="trainer checkpoint (.pth) to export")
    p.add_argument("--bin", action="store_true", help="write .bin instead of .safetensors")
    return p


def main(args) -> str:
    output = args.output or DEFAULT_OUTPUT
    if args.device is None and "MODEL.DEVICE" not in config_overrides(args)[0::2]:
        args.device = "cpu"  # exporting needs no accelerator, whatever the config says
    cfg = load_entry_config(args)
    preflight(cfg, output_dir=output)
    check_weights(args.weights, allow_untrained=False, key="--weights")
    model = build_model(cfg)
    DiffewSCheckpointer(model).load(args.weights)
    folder = os.path.join(output, "unet")
    with atomic_folder(folder) as tmp:  # never a half-written <output>/unet
        save_release_unet(model.unet, tmp, safe_serialization=not args.bin)
    print(f"wrote {folder}; use it with MODEL.WEIGHTS {output}")
    return folder


def cli(argv=None) -> int:
    """The command line: parse, check, export; one ``error:`` line and exit status 1/2."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
