# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo on a shared machine (issue 21): server folders only under allowed roots, logins,
a support-set cache bounded by bytes, and uploads refused from their header (pixels) or size
before any decoding. Expected values are written from the rules, not from the code's helpers."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conftest import SIZE
from diffews import DiffewSPredictor
from diffews.modeling.support_set import SupportSet
from diffews.utils.errors import UsageError
from diffews.web_demo import (DemoInputError, FolderPolicy, InputLimits, SupportCache,
                              WebDemoSession, exposure_warning, folder_roots, is_loopback)
from diffews.web_demo.access import auth_warnings, parse_auth, read_auth_file
from diffews.web_demo.inputs import parse_support

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _png(path, size=(40, 30), value=128):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return str(path)


# ---- 1. server folders ----------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with imgs/a.png and a symlink to outside; rootx/ beside it (a name that
    starts like root); outside/ with a secret image."""
    root, rootx, outside = tmp_path / "root", tmp_path / "rootx", tmp_path / "outside"
    for d in (root / "imgs", rootx, outside):
        d.mkdir(parents=True)
    _png(root / "imgs" / "a.png")
    _png(rootx / "x.png")
    _png(outside / "secret.png")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "imgs" / "leak.png").symlink_to(outside / "secret.png")
    return tmp_path


def test_folders_only_under_allowed_roots(tree):
    policy = FolderPolicy([str(tree / "root")])
    found = policy.images(str(tree / "root" / "imgs"))
    # the symlink to a file outside the root is left out; the path read is the resolved one
    assert found == [("a.png", os.path.realpath(tree / "root" / "imgs" / "a.png"))]
    refused = [
        str(tree / "root" / "imgs" / ".." / ".." / "outside"),  # traversal
        str(tree / "root" / "escape"),                           # a symlink out of the root
        str(tree / "rootx"),                                     # same prefix, another folder
        str(tree / "outside"),
        "/",
    ]
    missing = [str(tree / "root" / "nothing"), str(tree / "outside" / "nothing")]
    for path in refused + missing:
        with pytest.raises(DemoInputError) as e:
            policy.images(path)
        # refused and missing read alike: the page does not tell which paths exist
        assert str(e.value) == f"{path}: not an allowed folder"
    with pytest.raises(UsageError, match="--allowed-root .*nowhere: no such folder"):
        FolderPolicy([str(tree / "nowhere")])
    assert not FolderPolicy([]).enabled
    with pytest.raises(DemoInputError, match="not an allowed folder"):
        FolderPolicy([]).images(str(tree / "root" / "imgs"))


def test_default_roots_and_loopback(tmp_path):
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "128.0.0.1"):
        assert not is_loopback(host), host
    cwd = str(tmp_path)
    assert folder_roots("127.0.0.1", [], share=False, cwd=cwd) == [cwd]
    assert folder_roots("0.0.0.0", [], share=False, cwd=cwd) == []  # the network: none
    assert folder_roots("0.0.0.0", ["/data"], share=False, cwd=cwd) == ["/data"]
    assert folder_roots("127.0.0.1", ["/data"], share=True, cwd=cwd) == []


# ---- 2. logins ----------------------------------------------------------------------------------
def test_auth_and_exposure_warning(tmp_path):
    assert parse_auth("alice:pa:ss") == ("alice", "pa:ss")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(UsageError, match="expected USER:PASS"):
            parse_auth(bad)
    f = tmp_path / "users.txt"
    f.write_text("# group\n\nalice:one\nbob:two\n")
    assert read_auth_file(str(f)) == [("alice", "one"), ("bob", "two")]
    f.write_text("alice:one\nbroken\n")
    with pytest.raises(UsageError, match="line 2"):
        read_auth_file(str(f))
    warning = exposure_warning("0.0.0.0", None)
    assert warning and "\n" not in warning and "without --auth" in warning
    assert "anyone" in warning and "--auth-file FILE" in warning
    assert exposure_warning("0.0.0.0", [("a", "b")]) is None
    assert exposure_warning("127.0.0.1", None) is None
    # issue 29 item 4: a public link on the default loopback host is exposed all the same
    shared = exposure_warning("127.0.0.1", None, share=True)
    assert shared and "\n" not in shared and "--share" in shared and "anyone" in shared
    assert "--auth-file" in shared
    assert exposure_warning("127.0.0.1", [("a", "b")], share=True) is None


def test_auth_on_the_command_line_and_readable_auth_file_warn(tmp_path):
    """Issue 29 item 4: --auth USER:PASS is visible in ps; a users file others can read too."""
    f = tmp_path / "users.txt"
    f.write_text("alice:one\n")
    os.chmod(f, 0o600)
    assert auth_warnings([], str(f)) == []
    assert auth_warnings([], None) == []
    (flag,) = auth_warnings(["alice:one"], str(f))
    assert "\n" not in flag and "--auth" in flag and "ps" in flag and "--auth-file" in flag
    os.chmod(f, 0o644)
    (loose,) = auth_warnings([], str(f))
    assert loose == (f"web demo: --auth-file {f} may be read by other users (mode 644); "
                     f"chmod 600 {f}")


def test_launch_warns_of_a_public_link_without_login(monkeypatch, caplog):
    import gradio as gr

    from diffews.web_demo import launch_demo

    with gr.Blocks() as demo:
        gr.Markdown("page")
    launched = {}
    monkeypatch.setattr(demo, "launch",
                        lambda **kw: launched.update(kw) or (None, "http://x", None))
    with caplog.at_level("WARNING", logger="diffews.web_demo"):
        launch_demo(demo, share=True, block=False)
    assert launched["share"] and launched["server_name"] == "127.0.0.1"  # no network call made
    assert any("--share without a login" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffews.web_demo"):
        launch_demo(demo, share=True, block=False, auth=[("alice", "one")])
    assert not caplog.records


# ---- 3. the cache, by bytes ----------------------------------------------------------------
def _set(k: int, tokens: int) -> SupportSet:
    """k supports; latents (k, 8, 4, 4) float32 and one layer of keys and values (k, 2, tokens,
    4) float16: k * (8*4*4*4 + 2 * 2*tokens*4*2) bytes."""
    kv = torch.zeros(k, 2, tokens, 4, dtype=torch.float16)
    return SupportSet(torch.zeros(k, 8, 4, 4), {"l": kv}, {"l": kv.clone()})


def test_cache_is_bounded_by_bytes():
    a, b, c = _set(1, 16), _set(1, 16), _set(2, 16)
    one = 8 * 4 * 4 * 4 + 2 * (2 * 16 * 4 * 2)  # 512 + 512 bytes
    assert a.nbytes == one and c.nbytes == 2 * one
    cache = SupportCache(3 * one)
    assert cache.put("a", a) == [] and cache.put("b", b) == []
    assert cache.get("a") is a  # a is now the most recently used
    assert cache.put("c", c) == ["b"]  # 1 + 1 + 2 > 3: the least recently used goes
    assert "b" not in cache and cache.was_evicted("b") and not cache.was_evicted("a")
    assert cache.nbytes == 3 * one and cache.get("b") is None
    assert cache.put("huge", _set(4, 16)) == ["huge"]  # larger than the cache: not kept
    assert "huge" not in cache and len(cache) == 2


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


def _support(value: int):
    image = np.full((48, 64, 3), value, np.uint8)
    image[10:30, 20:40] = 255 - value
    return {"background": image, "layers": [], "composite": None}


def test_session_evicts_and_re_encodes(predictor, tmp_path, monkeypatch):
    query = _png(tmp_path / "q.png", (50, 40), 90)
    mask = str(tmp_path / "m.png")
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 255
    Image.fromarray(m).save(mask)
    one = predictor.encode_supports([_support(30)["background"]], [m > 0]).nbytes
    session = WebDemoSession(predictor, cache_bytes=int(1.5 * one), output_dir=str(tmp_path / "o"))
    encoded = []
    real = predictor.encode_supports
    monkeypatch.setattr(predictor, "encode_supports",
                        lambda *a, **k: encoded.append(1) or real(*a, **k))

    def run(value):
        return session.run([_support(value)], [mask], [query])

    first = run(30)
    assert first.support_state == "encoded" and first.evicted == 0 and first.cached
    assert run(30).support_state == "reused"
    second = run(200)  # a second set does not fit beside the first
    assert second.evicted == 1 and "1 older set(s) evicted" in second.status()
    again = run(30)
    assert again.support_state == "re-encoded" and len(encoded) == 3
    assert "re-encoded" in again.status() and "evicted from the cache" in again.status()
    small = WebDemoSession(predictor, cache_bytes=one // 2, output_dir=str(tmp_path / "p"))
    out = small.run([_support(30)], [mask], [query])
    assert not out.cached and "Not cached" in out.status()


# ---- 4. bad uploads -----------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path, width: int, height: int, valid: bool = True) -> str:
    """A grey PNG of width x height pixels, all zero: a few hundred KB on disk. With
    ``valid=False`` its pixel data is cut short (decoding it would fail)."""
    raw = zlib.compressobj(1)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    data = b"".join(raw.compress(row) for _ in range(height if valid else 8))
    data = data + raw.flush() if valid else data[:100]
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                0, 0, 0))
           + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return str(path)


def test_pixel_and_size_limits_before_decoding(predictor, tmp_path, monkeypatch):
    bomb = _bomb(tmp_path / "bomb.png", 13000, 13000)  # 169 Mpx: below Pillow's own guard
    assert os.path.getsize(bomb) < 1_000_000
    cut = _bomb(tmp_path / "cut.png", 13000, 13000, valid=False)
    huge = _bomb(tmp_path / "huge.png", 14000, 14000, valid=False)  # above Pillow's guard
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or real_load(self))
    ok = _png(tmp_path / "ok.png", (64, 48))
    folder = tmp_path / "server"
    folder.mkdir()
    os.link(bomb, folder / "bomb.png")
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"),
                             allowed_roots=[str(tmp_path)])
    pixels = "13000x13000 is 169.0 megapixels; the limit is 40 megapixels (--max-pixels)"
    cases = [  # (call, message)
        (lambda: session.read_queries([bomb], ""), f"query bomb.png: {pixels}"),
        (lambda: session.read_queries([cut], ""), f"query cut.png: {pixels}"),
        (lambda: session.read_queries([ok], str(folder)), f"query {folder}/bomb.png: {pixels}"),
        (lambda: parse_support(2, _support(30), bomb, session.limits),
         f"support 2: mask file bomb.png: {pixels}"),
        (lambda: session.read_queries([huge], ""), "query huge.png: more pixels than Pillow's "
         "decompression-bomb guard allows; the limit is 40 megapixels (--max-pixels)"),
    ]
    for call, message in cases:
        with pytest.raises(DemoInputError) as e:
            call()
        assert str(e.value).startswith(message), str(e.value)
    assert decoded == []  # refused from the header: no pixel was decoded

    small = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "p"),
                           limits=InputLimits(max_pixels=1000, max_file_bytes=200))
    with pytest.raises(DemoInputError, match=r"^query ok\.png: 64x48 is 0\.0 megapixels; the "
                                             r"limit is 0\.001 megapixels"):
        small.read_queries([ok], "")
    big = tmp_path / "big.png"
    big.write_bytes(open(bomb, "rb").read())
    with pytest.raises(DemoInputError, match=r"^query big\.png: the file is 0\.\d+ MB; the limit "
                                             r"is 0\.000191 MB \(--max-file-mb\)"):
        small.read_queries([str(big)], "")


def test_support_editor_checks_before_gradio_decodes(tmp_path):
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from diffews.web_demo.app import SupportEditor

    editor = SupportEditor(type="numpy", image_mode="RGBA", elem_id="support_image_3")
    editor.limits = InputLimits(max_pixels=40_000_000)
    bomb = _bomb(tmp_path / "b.png", 13000, 13000, valid=False)
    payload = EditorData(background=FileData(path=bomb, orig_name="cat.png"), layers=[],
                         composite=None)
    with pytest.raises(gr.Error) as e:
        editor.preprocess(payload)
    assert e.value.message.startswith("support 3: cat.png: 13000x13000 is 169.0 megapixels")
    ok = _png(tmp_path / "ok.png")
    layer = FileData(path=bomb, orig_name="layer.png")
    with pytest.raises(gr.Error) as e:
        editor.preprocess(EditorData(background=FileData(path=ok, orig_name="ok.png"),
                                     layers=[layer], composite=None))
    assert e.value.message.startswith("support 3: layer.png (painted layer): 13000x13000")
    value = editor.preprocess(EditorData(background=FileData(path=ok, orig_name="ok.png"),
                                         layers=[], composite=None))
    assert value["background"].shape == (30, 40, 4)


# ---- issue 18: an absent query -------------------------------------------------------------
def test_absent_query_is_not_found_with_an_empty_mask(predictor, tmp_path, monkeypatch):
    import zipfile

    query = _png(tmp_path / "q.png", (50, 40), 90)
    mask = str(tmp_path / "m.png")
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 255
    Image.fromarray(m).save(mask)
    real = predictor.predict

    def absent(*args, **kwargs):  # the predictor's decision, forced: judged absent
        out = real(*args, **kwargs)
        for r in out:
            r.update(present=False, presence=0.1)
            assert r["mask"].any()  # a non-empty mask that the page must not show
        return out

    monkeypatch.setattr(predictor, "predict", absent)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"))
    out = session.run([_support(30)], [mask], [query])
    (r,) = out.results
    assert not r.present and r.presence == pytest.approx(0.1) and r.fraction == 0.0
    assert "Not found in 1 of them (empty masks)" in out.status()
    with zipfile.ZipFile(out.zip_path) as zf:
        shown = np.asarray(Image.open(zf.open("q_mask.png")))
    assert shown.shape == (40, 50) and not shown.any()


# ---- issue 28: no decision is not "found" ---------------------------------------------------
def test_undecided_query_keeps_its_mask_and_shows_a_dash(predictor, tmp_path):
    """Without a presence threshold the predictor decides nothing (present None): the mask is
    kept, the status counts no "not found", and the table's "found" column shows "—", not
    "yes"."""
    from diffews.web_demo.app import FOUND

    query = _png(tmp_path / "q.png", (50, 40), 90)
    mask = str(tmp_path / "m.png")
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 255
    Image.fromarray(m).save(mask)
    session = WebDemoSession(predictor, cache_bytes=2**30, output_dir=str(tmp_path / "o"))
    out = session.run([_support(30)], [mask], [query])
    (r,) = out.results
    assert r.present is None and r.fraction > 0.0
    assert "Not found" not in out.status()
    assert FOUND[r.present] == "—" and FOUND[True] == "yes" and FOUND[False] == "not found"
