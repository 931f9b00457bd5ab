# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/autolabel.py with a decompression bomb among the images (issue 29 item 8): a PNG of a few
hundred bytes whose header claims 200 megapixels is an unreadable image like any other: named in
skipped.json within --max-bad-fraction, named in the one error line beyond it."""

import json
import os
import struct
import sys
import zlib

from _autolabel_trees import write_autolabel_tree
from conftest import SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import autolabel  # noqa: E402

CFG = os.path.join(ROOT, "configs", "Base-DiffewS.yaml")


def _bomb_png(path: str, width: int, height: int) -> None:
    """A grey PNG header of width x height and a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bomb_is_a_bad_image_named_in_skipped_json(tiny_sd, tmp_path, capsys):
    tree = write_autolabel_tree(str(tmp_path / "tree"), classes=("apple",), shots=1,
                                per_class=2, corrupt=False)
    bomb = os.path.join(tree["images"], "zz_bomb.png")
    _bomb_png(bomb, 20_000, 10_000)
    assert os.path.getsize(bomb) < 300

    def run(out, max_bad):
        return autolabel.cli(["--config-file", CFG, "--supports", tree["supports"], "--images",
                              tree["images"], "--output", str(out), "--max-bad-fraction",
                              max_bad, "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE",
                              str(SIZE), "MODEL.DEVICE", "cpu", "MODEL.DIFFEWS.ALLOW_UNTRAINED",
                              "True", "DATALOADER.NUM_WORKERS", "0"])

    assert run(tmp_path / "out", "0.5") == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "skipped.json") as f:
        skipped = json.load(f)
    assert [s["file_name"] for s in skipped] == ["zz_bomb.png"]
    assert skipped[0]["reason"].startswith(f"{bomb}: more pixels than Pillow's decompression-bomb")
    with open(tmp_path / "out" / "annotations.json") as f:
        assert len(json.load(f)["images"]) == 2  # the two good images are labelled
    capsys.readouterr()
    assert run(tmp_path / "strict", "0") == 1
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and bomb in errors[0] and "--max-bad-fraction 0" in errors[0], errors
