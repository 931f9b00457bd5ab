#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Soak test of the web demo on this machine: N concurrent clients, M requests each; latency p50 /
p95, errors and the server's peak resident memory.

  python tools/web_demo_load.py --url http://127.0.0.1:7860/ --server-pid PID \
      --clients 8 --requests 5
  python tools/web_demo_load.py --clients 8 --requests 5 --config-file configs/Base-DiffewS.yaml \
      MODEL.DIFFEWS.PRETRAINED output/quickstart/tiny_sd MODEL.DIFFEWS.ALLOW_UNTRAINED True \
      INPUT.IMAGE_SIZE 64    # starts tools/web_demo.py itself, on 127.0.0.1, and stops it after
"""

import os
import socket
import sys
import tempfile

from diffews.cli import UsageError, config_overrides, entry_parser, run_cli
from diffews.utils.atomic import atomic_write_json
from diffews.web_demo.access import parse_auth
from diffews.web_demo.soak import (check_local_url, format_report, memory_of, run_load,
                                   start_server, write_client_inputs)

EPILOG = """\
Each client has its own support sets (1 and 2 shots, alternating between requests) and two
queries, one of them shared by all clients (the same query meets different supports). Traffic
goes to a loopback address only and stops after --requests per client or --timeout seconds.
Without --url the tool starts tools/web_demo.py with --config-file / --device / --batch-size /
--quickstart-dir and the trailing KEY VALUE overrides on a free local port, and stops it at the
end; with --url, --server-pid names the server's process for its memory (else not reported).
"""


def get_parser():
    p = entry_parser(__doc__.split("\n\n")[0], epilog=EPILOG, config="optional",
                     output="optional", output_help="also write the report as JSON here",
                     device=True, batch_size="queries per model pass of the started server")
    p.add_argument("--url", default=None, help="a running web demo on this machine")
    p.add_argument("--server-pid", type=int, default=None, metavar="PID",
                   help="the process of the server at --url (for its memory)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="stop sending after this many seconds (default 600)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="the page's login")
    p.add_argument("--quickstart-dir", default=None, metavar="DIR",
                   help="passed to the started tools/web_demo.py")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_argv(args):
    argv = []
    for flag, value in (("--config-file", args.config_file), ("--device", args.device),
                        ("--batch-size", args.batch_size),
                        ("--quickstart-dir", args.quickstart_dir)):
        if value:
            argv += [flag, str(value)]
    return argv + config_overrides(args)


def main(args) -> int:
    if args.clients < 1 or args.requests < 1 or args.timeout <= 0:
        raise UsageError("--clients and --requests must be >= 1 and --timeout > 0")
    auth = parse_auth(args.auth) if args.auth else None
    proc, url, pid = None, args.url, args.server_pid
    if url:
        check_local_url(url)
    else:
        proc, url = start_server(_server_argv(args), _free_port())
        pid = proc.pid
    try:
        before = memory_of(pid) if pid else None
        inputs = write_client_inputs(tempfile.mkdtemp(prefix="diffews_web_demo_load_"),
                                     args.clients)
        report = run_load(url, inputs, args.requests, args.timeout, auth)
        memory = memory_of(pid) if pid else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    print(format_report(report, args.clients, args.requests, len(inputs[0].queries), memory,
                        before))
    if args.output:
        atomic_write_json({"clients": args.clients, "requests_per_client": args.requests,
                           "latencies_s": report.latencies, "errors": report.errors,
                           "wall_s": report.wall, "memory_before": before,
                           "memory_after": memory}, os.path.join(args.output, "load.json"),
                          indent=2)
    return 1 if report.errors else 0


def cli(argv=None) -> int:
    """The command line: parse, run the load, report; exit status 1 when a request failed."""
    args = get_parser().parse_args(argv)
    return run_cli(lambda: main(args), args.debug)


if __name__ == "__main__":
    sys.exit(cli())
