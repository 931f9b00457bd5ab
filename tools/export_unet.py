#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Export a trained DiffewS UNet in the released DiffewS layout (``<output>/unet/``: a diffusers
folder whose weights hold ``conv_in_ref``), which MODEL.WEIGHTS accepts as it accepts the
official releases.

  python tools/export_unet.py --config-file CFG --weights output/model_final.pth --output weight/my_fold0
"""

import argparse
import os
import sys

from detectron2.modeling import build_model

from diffews import DiffewSCheckpointer
from diffews.config import load_config
from diffews.modeling import save_release_unet


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, help="the training config")
    p.add_argument("--weights", required=True, help="trainer checkpoint (.pth) to export")
    p.add_argument("--output", required=True, help="release folder to write (<output>/unet/)")
    p.add_argument("--bin", action="store_true", help="write .bin instead of .safetensors")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p


def main(args) -> str:
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    model = build_model(cfg)
    DiffewSCheckpointer(model).load(args.weights)
    folder = os.path.join(args.output, "unet")
    save_release_unet(model.unet, folder, safe_serialization=not args.bin)
    print(f"wrote {folder}; use it with MODEL.WEIGHTS {args.output}")
    return folder


if __name__ == "__main__":
    try:
        main(get_parser().parse_args())
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(1)
