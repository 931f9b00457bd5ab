#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Web demo: annotate 1-5 support images in the browser, segment query images, download the masks.

  python tools/web_demo.py   # the quick start's tiny model (run python tools/quickstart.py first)
  python tools/web_demo.py --config-file configs/Base-DiffewS.yaml --device cuda \
      MODEL.DIFFEWS.PRETRAINED weight/stable-diffusion-2-1-ref8inchannels-tag4inchannels \
      MODEL.WEIGHTS weight/coco_fold0
"""

import argparse
import logging
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.utils.logger import setup_logger  # noqa: E402

from diffews.predictor import DiffewSPredictor  # noqa: E402
from diffews.cli import (OneLineArgumentParser, add_common_arguments,  # noqa: E402
                               config_overrides, load_config_checked, run_cli)
from diffews.web_demo import (QUICKSTART_DIR, WebDemoSession, build_demo,  # noqa: E402
                              launch_demo, quickstart_overrides, write_synthetic_examples)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")

EPILOG = """\
Without --config-file the page runs the quick start's tiny model (QUICKSTART_DIR/tiny_sd and
QUICKSTART_DIR/train/model_final.pth, written by `python tools/quickstart.py`); it segments the
built-in synthetic shapes of the page's examples, not photographs. With --config-file, trailing
KEY VALUE pairs override the config (MODEL.WEIGHTS, MODEL.DIFFEWS.PRETRAINED, INPUT.IMAGE_SIZE ...).

The page listens on --host (127.0.0.1: this machine only) and --port; --share also opens a public
gradio.live link and then disables reading query folders on the server. Bad uploads (not an
image, a mask of another size than its image, nothing painted, no support) show a message in the
page; the server keeps serving.
"""


def get_parser():
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="CFG",
                   help="config of real weights (default: the quick start's tiny model)")
    p.add_argument("--quickstart-dir", default=QUICKSTART_DIR, metavar="DIR",
                   help="the quick start's --output folder, used without --config-file")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: MODEL.DEVICE)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--batch-size", type=int, default=1, help="queries per model pass")
    return add_common_arguments(p, opts_flag=True)


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    log = logging.getLogger("diffews.web_demo")
    opts = config_overrides(args)
    if args.config_file:
        config_file, model = args.config_file, "the weights of the config"
    else:
        config_file = QUICK_CONFIG
        opts = quickstart_overrides(args.quickstart_dir) + opts
        model = ("the quick start's tiny model, trained on synthetic shapes on a CPU: it "
                 "segments the examples' shapes, not photographs")
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    cfg = load_config_checked(config_file, opts)
    cfg.freeze()
    predictor = DiffewSPredictor.from_config(cfg)
    session = WebDemoSession(predictor, batch_size=args.batch_size, allow_folders=not args.share)
    examples_dir = tempfile.mkdtemp(prefix="diffews_web_demo_examples_")
    examples = write_synthetic_examples(examples_dir)
    description = (f"Model: {model} (`{cfg.MODEL.WEIGHTS}`), device `{cfg.MODEL.DEVICE}`, working "
                   f"size {cfg.INPUT.IMAGE_SIZE}x{cfg.INPUT.IMAGE_SIZE}.")
    demo = build_demo(session, examples, description)
    url = launch_demo(demo, args.host, args.port, args.share, block=False,
                      allowed_paths=[examples_dir])
    log.info("web demo running at %s (Ctrl+C stops it)", url)
    print(f"Web demo: open {url} in a browser (Ctrl+C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    args = get_parser().parse_args()
    sys.exit(run_cli(lambda: main(args), args.debug))
