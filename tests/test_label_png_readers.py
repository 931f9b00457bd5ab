# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The label PNG readers of video object segmentation (the dataset's annotations,
``data/datasets/vos.py``; the results scored by ``evaluation/davis_metrics.py``) read through
``utils/image.py`` (issue 29): a decompression bomb, a truncated or foreign file is their one-line
error naming the file, and a palette PNG keeps its indices (an object id per pixel)."""

import ast
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffews.data.datasets import vos
from diffews.evaluation.davis_metrics import VOSEvaluationError, read_label_png
from tests._vos_trees import palette_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the readers themselves, and the web demo's reader of uploaded bytes (its own errors)
READERS = {"diffews/utils/image.py", "diffews/web_demo/inputs.py"}


def _bomb_png(path, width: int, height: int) -> None:
    """A grey PNG header of width x height and a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _record(path):
    return {"video": "v", "frames": ["00000"], "annotation_files": [str(path)],
            "merge_objects": False}


def _bad_files(tmp_path):
    """{kind: path} of files no reader may decode."""
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb, 20_000, 10_000)
    good = tmp_path / "good.png"
    palette_png(str(good), np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 5)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    foreign = tmp_path / "foreign.png"
    foreign.write_bytes(b"not a png")
    return {"bomb": bomb, "truncated": truncated, "foreign": foreign}


@pytest.mark.parametrize("kind", ["bomb", "truncated", "foreign"])
def test_bad_label_png_is_one_line_naming_the_file(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ValueError) as e:
        vos.read_annotation(_record(path), 0)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value), e.value
    with pytest.raises(VOSEvaluationError) as e:
        read_label_png(str(path))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value), e.value


def test_palette_indices_kept_and_colour_refused(tmp_path):
    label = np.zeros((6, 7), np.uint8)
    label[1:3, 2:5] = 1
    label[4, :] = 3
    label[0, 0] = 255  # DAVIS void: background for the loader, kept by the scorer's reader
    palette_png(str(tmp_path / "p.png"), label)
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P"
    expected = label.astype(np.int64)
    np.testing.assert_array_equal(read_label_png(str(tmp_path / "p.png")), expected)
    expected[0, 0] = 0
    np.testing.assert_array_equal(vos.read_annotation(_record(tmp_path / "p.png"), 0), expected)
    Image.fromarray(label, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_label_png(str(tmp_path / "grey.png")), label)
    Image.new("RGB", (7, 6)).save(tmp_path / "rgb.png")
    with pytest.raises(VOSEvaluationError, match="labels must be indexed"):
        read_label_png(str(tmp_path / "rgb.png"))
    with pytest.raises(ValueError, match="annotations must be indexed"):
        vos.read_annotation(_record(tmp_path / "rgb.png"), 0)


def test_no_image_is_opened_outside_the_readers():
    """Every other module reads images through ``utils/image.py`` (its one-line errors)."""
    found = []
    for base, _, names in os.walk(os.path.join(ROOT, "diffews")):
        for n in names:
            path = os.path.join(base, n)
            rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
            if not n.endswith(".py") or rel in READERS:
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr == "open"
                        and isinstance(node.value, ast.Name) and node.value.id == "Image"):
                    found.append(f"{rel}:{node.lineno}")
    assert not found, "Image.open outside the readers: " + ", ".join(found)
