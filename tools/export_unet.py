#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Export a trained DiffewS UNet in the released DiffewS layout (``<output>/unet/``: a diffusers
folder whose weights hold ``conv_in_ref``), which MODEL.WEIGHTS accepts as it accepts the
official releases.

  python tools/export_unet.py --config-file CFG --weights output/model_final.pth --output weight/my_fold0

Config overrides are trailing KEY VALUE pairs (``--opts KEY VALUE ...`` is accepted too). The
folder is written under a temporary name and renamed when complete. Errors are one line (exit
status 2: command line or config, 1: files); --debug shows the traceback.
"""

import os
import sys
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.modeling import build_model  # noqa: E402

from diffews import DiffewSCheckpointer  # noqa: E402
from diffews.modeling import save_release_unet  # noqa: E402
from diffews.utils.atomic import atomic_folder  # noqa: E402
from diffews.cli import (  # noqa: E402
    OneLineArgumentParser, add_common_arguments, config_overrides, load_config_checked, run_cli)
from diffews.cli.preflight import check_output_dir, check_weights, preflight  # noqa: E402


def get_parser():
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, help="the training config")
    p.add_argument("--weights", required=True, help="trainer checkpoint (.pth) to export")
    p.add_argument("--output", required=True, help="release folder to write (<output>/unet/)")
    p.add_argument("--bin", action="store_true", help="write .bin instead of .safetensors")
    return add_common_arguments(p, opts_flag=True)


def main(args) -> str:
    cfg = load_config_checked(args.config_file, ["MODEL.DEVICE", "cpu", *config_overrides(args)])
    preflight(cfg)
    check_weights(args.weights, allow_untrained=False, key="--weights")
    check_output_dir(args.output)
    model = build_model(cfg)
    DiffewSCheckpointer(model).load(args.weights)
    folder = os.path.join(args.output, "unet")
    with atomic_folder(folder) as tmp:  # never a half-written <output>/unet
        save_release_unet(model.unet, tmp, safe_serialization=not args.bin)
    print(f"wrote {folder}; use it with MODEL.WEIGHTS {args.output}")
    return folder


if __name__ == "__main__":
    arguments = get_parser().parse_args()
    sys.exit(run_cli(lambda: main(arguments), arguments.debug))
