# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""What the web demo writes stays bounded (issue 29, items 1-3): every side of an input and of
every picture it derives, the run folders it prunes (its own only), Gradio's upload and output
cache. Expected sizes are written from the rules (fit in 256 x 1024, aspect ratio kept)."""

import os
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import SIZE
from diffews import DiffewSPredictor
from diffews.web_demo import DemoInputError, InputLimits, WebDemoSession
from diffews.web_demo.results import result_panel
from diffews.web_demo.session import RUN_MARKER, demo_runs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
GAP = 6  # between the two pictures of a result


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


def _support():
    image = np.full((48, 64, 3), 30, np.uint8)
    image[10:30, 20:40] = 225
    return {"background": image, "layers": [], "composite": None}


@pytest.fixture
def mask_file(tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 255
    path = str(tmp_path / "m.png")
    Image.fromarray(m).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header_png(path, width: int, height: int) -> str:
    """A grey PNG header of width x height (pixel data cut short: decoding it would fail)."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    return str(path)


# ---- 1. every side bounded ---------------------------------------------------------------------
@pytest.mark.parametrize("w,h,shown", [
    (400, 1, (1024, 3)),     # 2.56x: the box's width binds (not 102,400 x 256)
    (3000, 20, (1024, 7)),   # shrunk by 1024 / 3000
    (1, 400, (1, 256)),      # a column: its width rounds up to 1 pixel
    (80, 48, (427, 256)),    # an ordinary query: the height binds, as before
    (2000, 1, (1024, 1)),
])
def test_result_panel_fits_its_box(w, h, shown):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < 0.5
    pred = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    panel = result_panel(image, mask, pred)
    assert panel.shape == (256, shown[0] + GAP + 256, 3)
    # the decoded prediction, enlarged 4x with nearest, at the right
    assert np.array_equal(panel[:, -256:][::4, ::4], pred)
    # below the query's picture the canvas is white
    assert (panel[shown[1]:, :shown[0]] == 255).all()


def test_query_of_one_pixel_height_gives_bounded_pictures(predictor, tmp_path, mask_file):
    query = str(tmp_path / "line.png")
    Image.fromarray(np.full((1, 400, 3), 90, np.uint8)).save(query)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"))
    (r,) = session.run([_support()], [mask_file], [query]).results
    assert r.size == (400, 1)
    assert r.panel.shape == (256, 1024 + GAP + 256, 3)
    with zipfile.ZipFile(session.run([_support()], [mask_file], [query]).zip_path) as zf:
        assert np.asarray(Image.open(zf.open("line_mask.png"))).shape == (1, 400)


def test_side_limit_refuses_before_decoding(predictor, tmp_path, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or real_load(self))
    line = _header_png(tmp_path / "line.png", 40_000_000, 1)  # 40 Mpx: within --max-pixels
    assert os.path.getsize(line) < 300
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"))
    with pytest.raises(DemoInputError) as e:
        session.read_queries([line], "")
    assert str(e.value) == ("query line.png: 40000000x1 has a side of 40000000 pixels; the limit "
                            "is 30000 (--max-side); crop or downscale it")
    tall = _header_png(tmp_path / "tall.png", 2, 501)
    small = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "p"),
                           limits=InputLimits(max_side=500))
    with pytest.raises(DemoInputError, match=r"^query tall\.png: 2x501 has a side of 501 pixels; "
                                             r"the limit is 500 \(--max-side\)"):
        small.read_queries([tall], "")
    assert decoded == []
    with pytest.raises(ValueError, match="max_side"):
        InputLimits(max_side=0)


# ---- 3. only the demo's own run folders are pruned ---------------------------------------------
def test_pruning_keeps_the_users_own_folders(predictor, tmp_path, mask_file):
    out = tmp_path / "out"
    own = ["run", "run-x", "run.old", "run00001", "runner"]
    for name in own:
        (out / name).mkdir(parents=True)
        (out / name / "mine.txt").write_text("the user's")
    (out / "run-file").write_text("a file")
    query = str(tmp_path / "q.png")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(query)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(out), keep_runs=2)
    zips = [session.run([_support()], [mask_file], [query]).zip_path for _ in range(4)]
    for name in own:
        assert (out / name / "mine.txt").read_text() == "the user's", name
    assert (out / "run-file").read_text() == "a file"
    runs = demo_runs(str(out))
    assert runs == [os.path.dirname(z) for z in zips[-2:]]  # the last two, oldest first
    assert all(os.path.isfile(os.path.join(r, RUN_MARKER)) for r in runs)
    assert sorted(os.listdir(out)) == sorted(own + ["run-file"] + [os.path.basename(r)
                                                                   for r in runs])
    # a new session on the same folder (a restarted server) prunes the earlier runs as its own
    again = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(out), keep_runs=1)
    last = again.run([_support()], [mask_file], [query]).zip_path
    assert demo_runs(str(out)) == [os.path.dirname(last)]
    assert all((out / name / "mine.txt").exists() for name in own)


# ---- 2. Gradio's own cache ---------------------------------------------------------------------
def _files(folder) -> list:
    return sorted(os.path.join(d, n) for d, _, names in os.walk(folder) for n in names)


@pytest.mark.slow
def test_gradio_cache_is_pruned(predictor, tmp_path, mask_file, monkeypatch):
    """The page's uploads, result pictures and zip copies in Gradio's cache folder are deleted
    once older than ``cache_seconds`` (they were never deleted: 155 files after 25 runs)."""
    import socket

    from gradio_client import Client, handle_file

    from diffews.web_demo import build_demo, launch_demo

    cache = tmp_path / "gradio_cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    query = str(tmp_path / "q.png")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(query)
    support = str(tmp_path / "s.png")
    Image.fromarray(_support()["background"]).save(support)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "out"))
    demo = build_demo(session, cache_seconds=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = launch_demo(demo, port=port, block=False)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "client"))
        args = {f"support_{i}_image": None for i in range(2, 6)}
        args.update({f"support_{i}_mask": None for i in range(2, 6)})
        args.update(support_1_image={"background": handle_file(support), "layers": [],
                                     "composite": None},
                    support_1_mask=handle_file(mask_file), queries=[handle_file(query)],
                    folder="")
        for _ in range(2):
            client.predict(**args, api_name="/segment")
        cached = _files(cache)
        names = {os.path.basename(f) for f in cached}
        assert {"q.png", "s.png", "m.png", "masks.zip"} <= names, names  # uploads and outputs
        deadline = time.time() + 30
        while _files(cache) and time.time() < deadline:
            time.sleep(0.5)
        assert _files(cache) == []  # 0-byte tmp* files too: Gradio's gr.File leaked them
        assert len(demo_runs(str(tmp_path / "out"))) == 2  # the demo's own runs stay
    finally:
        demo.close()
