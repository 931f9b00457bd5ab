# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A soak test of a running web demo on this machine (``tools/web_demo_load.py``): N concurrent
``gradio_client`` clients, each with its own supports and queries (one query shared by all, so
that the same query meets different supports), M requests each; latency percentiles, errors, and
the server's resident memory read from ``/proc``.

Traffic goes to a loopback address only, and stops after M requests per client or the time limit.
"""

import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.datasets.synthetic import render, synthetic_records
from ..utils.errors import UsageError
from .access import is_loopback
from .inputs import MAX_SUPPORTS

__all__ = ["ClientInputs", "LoadReport", "write_client_inputs", "segment_args", "run_load",
           "memory_of", "check_local_url", "start_server", "format_report"]


@dataclass
class ClientInputs:
    """support_sets: each a list of (image file, mask file); queries: image files (the first
    one is the same file for every client)."""

    support_sets: List[List[Tuple[str, str]]]
    queries: List[str]


@dataclass
class LoadReport:
    latencies: List[float] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    wall: float = 0.0
    stopped_early: bool = False

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)


def check_local_url(url: str) -> str:
    host = urllib.parse.urlparse(url).hostname or ""
    if not is_loopback(host):
        raise UsageError(f"--url {url}: the soak test runs against this machine only "
                         "(127.0.0.1, ::1 or localhost)")
    return url


def _save(path: str, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return path


def write_client_inputs(folder: str, clients: int, size: int = 96) -> List[ClientInputs]:
    """Synthetic pictures (the benchmark's test classes) for ``clients`` clients: two support
    sets each (1 and 2 shots, with the object's mask), the shared query and one own query."""
    os.makedirs(folder, exist_ok=True)
    records = synthetic_records("test", size)
    pick = lambda i: render(records[i % len(records)], records[i % len(records)]["classes"][0])
    shared = _save(os.path.join(folder, "shared_query.png"), pick(len(records) - 1)[0])
    out = []
    for c in range(clients):
        sets = []
        for s, shots in enumerate((1, 2)):
            pairs = []
            for k in range(shots):
                image, label = pick(7 * c + 3 * s + k)
                stem = os.path.join(folder, f"client{c}_set{s}_support{k}")
                pairs.append((_save(stem + ".png", image),
                              _save(stem + "_mask.png", label.astype(np.uint8) * 255)))
            sets.append(pairs)
        own = _save(os.path.join(folder, f"client{c}_query.png"), pick(5 * c + 2)[0])
        out.append(ClientInputs(sets, [shared, own]))
    return out


def segment_args(supports: Sequence[Tuple[str, str]], queries: Sequence[str]) -> Dict:
    """The keyword arguments of the page's ``/segment`` API: supports as (image, mask file)."""
    from gradio_client import handle_file

    args = {}
    for i in range(1, MAX_SUPPORTS + 1):
        image, mask = supports[i - 1] if i <= len(supports) else (None, None)
        args[f"support_{i}_image"] = None if image is None else {
            "background": handle_file(image), "composite": None, "layers": []}
        args[f"support_{i}_mask"] = None if mask is None else handle_file(mask)
    args["queries"] = [handle_file(q) for q in queries]
    args["folder"] = ""
    return args


def run_load(url: str, inputs: Sequence[ClientInputs], requests: int, timeout: float,
             auth: Optional[Tuple[str, str]] = None) -> LoadReport:
    """Each client (a thread with its own ``gradio_client.Client``) sends ``requests`` requests,
    alternating its support sets; all start together. Stops early past ``timeout`` seconds."""
    from gradio_client import Client

    check_local_url(url)
    report, lock = LoadReport(), threading.Lock()
    start_line = threading.Barrier(len(inputs))
    deadline = time.monotonic() + timeout

    def client(mine: ClientInputs):
        try:
            c = Client(url, auth=auth, verbose=False)
        except Exception as e:  # noqa: BLE001 (counted, the other clients go on)
            with lock:
                report.errors.append(f"connect: {type(e).__name__}: {e}")
            start_line.abort()
            return
        try:
            start_line.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        for r in range(requests):
            if time.monotonic() > deadline:
                report.stopped_early = True
                return
            t0 = time.perf_counter()
            try:
                c.predict(**segment_args(mine.support_sets[r % len(mine.support_sets)],
                                         mine.queries), api_name="/segment")
            except Exception as e:  # noqa: BLE001
                with lock:
                    report.errors.append(f"{type(e).__name__}: {' '.join(str(e).split())}")
                continue
            with lock:
                report.latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(x,), daemon=True) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 120))
    report.wall = time.perf_counter() - t0
    return report


def memory_of(pid: int) -> Dict[str, int]:
    """Resident memory of a process on this machine, in bytes: {"rss": now, "peak": its peak
    since it started (VmHWM)}."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) * 1024
    return out


def start_server(argv: Sequence[str], port: int, timeout: float = 600
                 ) -> Tuple[subprocess.Popen, str]:
    """Start ``tools/web_demo.py ARGV --host 127.0.0.1 --port PORT`` and wait until the page
    answers. Returns (process, url)."""
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "tools", "web_demo.py")
    options = [a for a in argv]
    proc = subprocess.Popen([sys.executable, tool, "--host", "127.0.0.1", "--port", str(port),
                             *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (proc.stderr.read() or "").strip().splitlines()
            raise RuntimeError(f"the web demo did not start: {err[-1] if err else proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"the web demo did not answer at {url} within {timeout:.0f} s")


def format_report(report: LoadReport, clients: int, requests: int, queries: int,
                  memory: Optional[Dict[str, int]] = None,
                  memory_before: Optional[Dict[str, int]] = None) -> str:
    lat = np.asarray(report.latencies) if report.latencies else np.asarray([np.nan])
    lines = [
        f"clients {clients}, requests per client {requests}, queries per request {queries}: "
        f"{report.requests} requests in {report.wall:.1f} s"
        + (" (stopped at the time limit)" if report.stopped_early else ""),
        f"latency per request (s): p50 {np.percentile(lat, 50):.3f}, p95 "
        f"{np.percentile(lat, 95):.3f}, max {lat.max():.3f}",
        f"errors: {len(report.errors)}" + (f" (first: {report.errors[0]})" if report.errors
                                           else ""),
    ]
    if memory:
        before = (f"{memory_before['rss'] / 2**20:.0f} MiB before the load, "
                  if memory_before else "")
        lines.append(f"server RSS: {before}{memory['rss'] / 2**20:.0f} MiB after, peak "
                     f"{memory['peak'] / 2**20:.0f} MiB")
    return "\n".join(lines)
