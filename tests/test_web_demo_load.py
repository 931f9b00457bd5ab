# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo under concurrent users (issue 21): 8 ``gradio_client`` clients at once, each with
its own supports and queries (one query shared by all), get exactly the masks and predictions
that ``DiffewSPredictor`` gives for their own inputs, with a support-set cache so small that sets
are evicted and re-encoded during the run; no request fails and the server keeps serving. Also:
the page behind a login, Gradio's upload size limit, no server file reachable through the API,
and the soak tool (``tools/web_demo_load.py``) against the same server.

Traffic goes to 127.0.0.1 only."""

import io
import os
import socket
import sys
import threading
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import SIZE
from diffews import DiffewSPredictor
from diffews.web_demo import InputLimits, WebDemoSession, build_demo, launch_demo
from diffews.web_demo.soak import segment_args, write_client_inputs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import web_demo_load as load_tool  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
CLIENTS, REQUESTS, BATCH = 8, 3, 4
PANEL = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _reference(predictor, supports, queries):
    """The predictor on the files: one dict per query, batched as the page batches them."""
    encoded = predictor.encode_supports([_rgb(i) for i, _ in supports],
                                        [np.asarray(Image.open(m)) > 0 for _, m in supports])
    return predictor.predict([_rgb(q) for q in queries], encoded, batch_size=BATCH)


@pytest.fixture(scope="module")
def server(predictor, tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    inputs = write_client_inputs(str(d / "inputs"), CLIENTS)
    one_shot = predictor.encode_supports([_rgb(inputs[0].support_sets[0][0][0])],
                                         [np.asarray(Image.open(inputs[0].support_sets[0][0][1]))
                                          > 0]).nbytes
    # room for 2.5 one-shot sets: 16 sets of 1 and 2 shots are evicted and re-encoded
    session = WebDemoSession(predictor, batch_size=BATCH, cache_bytes=int(2.5 * one_shot),
                             output_dir=str(d / "runs"))
    demo = build_demo(session)
    url = launch_demo(demo, port=_free_port(), block=False)
    yield url, session, inputs
    demo.close()


def _check(result, refs, queries):
    gallery, table, status, zip_path = result
    names = [os.path.basename(q) for q in queries]
    assert [row[0] for row in table["data"]] == names
    assert f"{len(queries)} queries segmented" in status
    with zipfile.ZipFile(zip_path) as zf:
        for name, ref in zip(names, refs):
            shown = np.asarray(Image.open(io.BytesIO(zf.read(name[:-4] + "_mask.png"))))
            assert np.array_equal(shown > 0, ref["mask"]), name
    for item, ref in zip(gallery, refs):
        path = item["image"]["path"] if isinstance(item["image"], dict) else item["image"]
        panel = np.asarray(Image.open(path).convert("RGB"))
        step = PANEL // SIZE  # the decoded prediction, enlarged with nearest
        assert np.array_equal(panel[:, -PANEL:][::step, ::step], ref["pred_image"])


def test_eight_concurrent_clients_get_their_own_masks(server, predictor):
    from gradio_client import Client

    url, session, inputs = server
    refs = [[_reference(predictor, s, c.queries) for s in c.support_sets] for c in inputs]
    # the shared query meets 16 support sets: 16 different predictions, so mixing would show
    shared = {refs[c][s][0]["pred_image"].tobytes() for c in range(CLIENTS) for s in range(2)}
    assert len(shared) == 2 * CLIENTS
    results, errors = {}, []
    start = threading.Barrier(CLIENTS)

    def client(c):
        try:
            api = Client(url, verbose=False)
            start.wait(timeout=60)
            for r in range(REQUESTS):
                s = r % 2
                results[c, r] = (s, api.predict(**segment_args(inputs[c].support_sets[s],
                                                               inputs[c].queries),
                                                api_name="/segment"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"client {c}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert len(results) == CLIENTS * REQUESTS
    states = []
    for (c, r), (s, result) in sorted(results.items()):
        _check(result, refs[c][s], inputs[c].queries)
        states.append(result[2].split("**")[1])
    assert "Support set re-encoded" in states  # the cache bound was exercised
    assert session.cache.nbytes <= session.cache.max_bytes and session.cache.evictions > 0
    # the server is still up
    with urllib.request.urlopen(url + "config", timeout=10) as r:
        assert r.status == 200
    _check(Client(url, verbose=False).predict(**segment_args(inputs[0].support_sets[1],
                                                             inputs[0].queries),
                                              api_name="/segment"),
           refs[0][1], inputs[0].queries)


def test_soak_tool_reports(server, capsys, tmp_path):
    url, _, _ = server
    assert load_tool.cli(["--url", url, "--server-pid", str(os.getpid()), "--clients", "2",
                          "--requests", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "clients 2, requests per client 2, queries per request 2: 4 requests" in out
    assert "latency per request (s): p50 " in out and "errors: 0" in out
    assert "server RSS: " in out and " MiB after, peak " in out
    assert (tmp_path / "load.json").exists()
    assert load_tool.cli(["--url", "http://192.0.2.1:7860/"]) == 2  # not this machine


def test_login_and_upload_limit(predictor, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError, AuthenticationError

    big = tmp_path / "big.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (200, 200, 3), np.uint8)).save(big)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "runs"),
                             limits=InputLimits(max_file_bytes=20_000))
    demo = build_demo(session)
    url = launch_demo(demo, port=_free_port(), block=False, auth=[("alice", "pw")],
                      max_file_bytes=20_000)
    try:
        with pytest.raises(AuthenticationError, match="Please login"):
            Client(url, verbose=False)  # no login: the API is closed
        client = Client(url, auth=("alice", "pw"), verbose=False)
        empty = {f"support_{i}_{k}": None for i in range(1, 6) for k in ("image", "mask")}
        with pytest.raises(AppError, match="no support"):  # the login reaches the page
            client.predict(**empty, queries=[], folder="", api_name="/segment")
        with pytest.raises(Exception, match="(?i)size|large|413"):  # refused by Gradio itself
            client.predict(**empty, queries=[handle_file(str(big))], folder="",
                           api_name="/segment")
        with pytest.raises(AppError, match="no support"):  # still serving
            client.predict(**empty, queries=[], folder="", api_name="/segment")
    finally:
        demo.close()


def test_no_server_file_through_the_api(server, tmp_path):
    """A request that names a server file instead of uploading it (a raw HTTP call, as a script
    would send it) is refused, and the file route does not serve it either."""
    import httpx

    url, _, inputs = server
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(secret)
    image, mask = inputs[0].support_sets[0][0]
    with open(image, "rb") as f1, open(mask, "rb") as f2:
        uploaded = httpx.post(url + "gradio_api/upload",
                              files=[("files", f1), ("files", f2)]).json()

    def fd(path):
        return {"path": path, "meta": {"_type": "gradio.FileData"},
                "orig_name": os.path.basename(path)}

    data = [{"background": fd(uploaded[0]), "layers": [], "composite": None}, None, None, None,
            None, fd(uploaded[1]), None, None, None, None, [fd(str(secret))], ""]
    event = httpx.post(url + "gradio_api/call/segment", json={"data": data}).json()["event_id"]
    answer = httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=120).text
    assert "event: error" in answer and "event: complete" not in answer
    assert httpx.get(f"{url}gradio_api/file={secret}").status_code in (403, 404)
    # the same request with an uploaded query is answered
    with open(inputs[0].queries[0], "rb") as f:
        data[10] = [fd(httpx.post(url + "gradio_api/upload", files=[("files", f)]).json()[0])]
    event = httpx.post(url + "gradio_api/call/segment", json={"data": data}).json()["event_id"]
    assert "event: complete" in httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=120).text
