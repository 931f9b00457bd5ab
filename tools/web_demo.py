#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Web demo: annotate 1-5 support images in the browser, segment query images, download the masks.

  python tools/web_demo.py   # the quick start's tiny model (run python tools/quickstart.py first)
  python tools/web_demo.py --config-file configs/Base-DiffewS.yaml --device cuda \
      MODEL.DIFFEWS.PRETRAINED weight/stable-diffusion-2-1-ref8inchannels-tag4inchannels \
      MODEL.WEIGHTS weight/coco_fold0
  python tools/web_demo.py ... --host 0.0.0.0 --auth-file users.txt --allowed-root /data/images
"""

import logging
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fvcore

from detectron2.utils.logger import setup_logger  # noqa: E402

from diffews.cli import (UsageError, entry_parser, load_entry_config,  # noqa: E402
                         preflight, run_cli)
from diffews.predictor import build_predictor  # noqa: E402
from diffews.web_demo import (QUICKSTART_DIR, FolderPolicy, InputLimits,  # noqa: E402
                              WebDemoSession, build_demo, folder_roots, launch_demo,
                              quickstart_overrides, write_synthetic_examples)
from diffews.web_demo.access import auth_warnings, parse_auth, read_auth_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")

EPILOG = """\
Without --config-file the page runs the quick start's tiny model (QUICKSTART_DIR/tiny_sd and
QUICKSTART_DIR/train/model_final.pth, written by `python tools/quickstart.py`); it segments the
built-in synthetic shapes of the page's examples, not photographs. Trailing KEY VALUE pairs
override the config (MODEL.WEIGHTS, MODEL.DIFFEWS.PRETRAINED, INPUT.IMAGE_SIZE ...).

Serving to others: the page listens on --host (127.0.0.1: this machine only) and --port. Query
folders on the server are read only under --allowed-root DIR (repeatable); without it, the
current folder's subtree on a loopback host and no folder at all on any other host; --share (a
public gradio.live link) turns folders off. --auth-file FILE (one USER:PASS a line, chmod 600)
puts a login in front of the page and its API; --auth USER:PASS (repeatable) does too, but shows
the password to every user of the machine (ps) and logs a warning. Serving on the network or with
--share without a login logs a warning. Encoded support sets are cached up to --cache-mb
(default: a quarter of the GPU's memory, an eighth of the RAM on a CPU). An image above
--max-pixels or --max-side (both read from its header, before decoding) or --max-file-mb is
refused with a message in the page; bad uploads (not an image, a mask of another size than its
image, nothing painted, no support) too; the server keeps serving. The mask zips of the last 20
runs are kept in --output (in run-* folders marked as the demo's; nothing else there is deleted);
Gradio's own copies of uploads and results are deleted after --gradio-cache-minutes.
"""


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, config="optional",
                     output="optional", output_help="where the mask zips of the runs go (default: "
                     "a new temporary folder; the last 20 runs are kept)", device=True,
                     batch_size="queries per model pass (default 4)")
    p.set_defaults(batch_size=4)
    p.add_argument("--quickstart-dir", default=QUICKSTART_DIR, metavar="DIR",
                   help="the quick start's --output folder, used without --config-file")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link "
                   "(anyone who has it reaches the page: add --auth-file)")
    p.add_argument("--allowed-root", action="append", default=[], metavar="DIR",
                   help="a server folder whose subtree may hold query folders (repeatable)")
    p.add_argument("--auth-file", default=None, metavar="FILE",
                   help="logins of the page, one USER:PASS a line (the way to give them: chmod "
                   "600 the file)")
    p.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                   help="a login of the page (repeatable); every user of this machine sees it "
                   "in ps: prefer --auth-file")
    p.add_argument("--cache-mb", type=float, default=None, metavar="MB",
                   help="most MiB of encoded support sets kept (default: a share of the "
                   "device's memory)")
    p.add_argument("--max-pixels", type=int, default=InputLimits().max_pixels, metavar="N",
                   help="most pixels (width x height) of one image (default 40000000)")
    p.add_argument("--max-side", type=int, default=InputLimits().max_side, metavar="N",
                   help="longest side of one image in pixels (default 30000)")
    p.add_argument("--max-file-mb", type=float, default=InputLimits().max_file_bytes / 2**20,
                   metavar="MB", help="largest image file in MiB (default 50)")
    p.add_argument("--max-queries", type=int, default=200, metavar="N",
                   help="most queries per run (default 200)")
    p.add_argument("--gradio-cache-minutes", type=float, default=60, metavar="MIN",
                   help="uploads, result pictures and zips are deleted from Gradio's cache "
                   "folder (GRADIO_TEMP_DIR, else /tmp/gradio) after MIN minutes, and when the "
                   "server stops (default 60)")
    return p


def _checked(args):
    """Everything about the flags that can fail, before any model is loaded: (limits, roots,
    logins, cache bytes)."""
    for name in ("batch_size", "max_pixels", "max_side", "max_queries", "port"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for flag, value in (("--cache-mb", args.cache_mb), ("--max-file-mb", args.max_file_mb),
                        ("--gradio-cache-minutes", args.gradio_cache_minutes)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be > 0, got {value:g}")
    limits = InputLimits(args.max_pixels, int(args.max_file_mb * 2**20), args.max_side)
    roots = folder_roots(args.host, args.allowed_root, args.share)
    FolderPolicy(roots)  # a missing --allowed-root fails here, not after the model loads
    auth = [parse_auth(a) for a in args.auth]
    if args.auth_file:
        auth += read_auth_file(args.auth_file)
    cache = None if args.cache_mb is None else max(1, int(args.cache_mb * 2**20))
    return limits, roots, auth or None, cache


def main(args) -> int:
    setup_logger(name="diffews", abbrev_name="diffews")
    log = logging.getLogger("diffews.web_demo")
    limits, roots, auth, cache_bytes = _checked(args)
    for warning in auth_warnings(args.auth, args.auth_file):
        log.warning(warning)
    if args.config_file:
        config_file, model = args.config_file, "the weights of the config"
    else:
        config_file = QUICK_CONFIG
        args.opts = quickstart_overrides(args.quickstart_dir) + list(args.opts or [])
        model = ("the quick start's tiny model, trained on synthetic shapes on a CPU: it "
                 "segments the examples' shapes, not photographs")
    cfg = load_entry_config(args, config_file=config_file)
    cfg.freeze()
    preflight(cfg, output_dir=args.output, weights=[cfg.MODEL.WEIGHTS])
    predictor = build_predictor(cfg)
    session = WebDemoSession(predictor, batch_size=args.batch_size, cache_bytes=cache_bytes,
                             max_queries=args.max_queries, allowed_roots=roots, limits=limits,
                             output_dir=args.output)
    log.info("query folders on the server: %s; support-set cache %.0f MiB; images up to %d "
             "pixels, %d pixels a side and %.0f MiB", ", ".join(session.folders.roots) or "off",
             session.cache.max_bytes / 2**20, limits.max_pixels, limits.max_side,
             limits.max_file_bytes / 2**20)
    examples_dir = tempfile.mkdtemp(prefix="diffews_web_demo_examples_")
    examples = write_synthetic_examples(examples_dir)
    description = (f"Model: {model} (`{cfg.MODEL.WEIGHTS}`), device `{cfg.MODEL.DEVICE}`, working "
                   f"size {cfg.INPUT.IMAGE_SIZE}x{cfg.INPUT.IMAGE_SIZE}.")
    demo = build_demo(session, examples, description,
                      cache_seconds=max(1, round(args.gradio_cache_minutes * 60)))
    url = launch_demo(demo, args.host, args.port, args.share, block=False,
                      allowed_paths=[examples_dir], auth=auth,
                      max_file_bytes=limits.max_file_bytes)
    log.info("web demo running at %s (Ctrl+C stops it)", url)
    print(f"Web demo: open {url} in a browser (Ctrl+C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


def cli(argv=None) -> int:
    """The command line: parse, check, serve; one ``error:`` line and exit status 1/2 on failure."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
