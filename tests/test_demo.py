# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/demo.py end to end on a tiny model and a fake release, and its error cases."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import make_cfg
from detectron2.modeling import build_model
from diffews.modeling import save_release_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import demo  # noqa: E402


@pytest.fixture(scope="module")
def files(tiny_sd, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(0)
    paths = {}
    for i, (h, w) in enumerate([(48, 64), (40, 56), (64, 64), (50, 70), (30, 30), (64, 48)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.jpg")
        m = np.zeros((h, w), np.uint8)
        m[h // 4: h // 2, w // 4: w // 2] = 255
        Image.fromarray(m).save(d / f"img{i}.png")
        paths[i] = (str(d / f"img{i}.jpg"), str(d / f"img{i}.png"))
    save_release_unet(build_model(make_cfg(tiny_sd)).unet, str(d / "release" / "unet"))
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(d / "empty.png")
    (d / "broken.jpg").write_bytes(b"not an image at all")
    return d, paths


def _args(tiny_sd, d, supports, queries, out):
    argv = ["--config-file", os.path.join(ROOT, "configs", "Base-DiffewS.yaml")]
    for s in supports:
        argv += ["--support", *s]
    argv += ["--query", *queries, "--output", str(out), "--opts", "MODEL.DIFFEWS.PRETRAINED", tiny_sd,
             "MODEL.WEIGHTS", str(d / "release"), "INPUT.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu"]
    return demo.get_parser().parse_args(argv)


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_demo_writes_three_files_per_query(tiny_sd, files, tmp_path, capsys, shots):
    d, p = files
    queries = [p[0][0], p[5][0]]
    assert demo.main(_args(tiny_sd, d, [p[i] for i in range(1, shots + 1)], queries, tmp_path)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "foreground ->" in ln]
    assert len(lines) == 2 and lines[0].startswith(p[0][0])
    for q, (h, w) in ((p[0][0], (48, 64)), (p[5][0], (64, 48))):
        stem = os.path.splitext(os.path.basename(q))[0]
        mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        pred = Image.open(tmp_path / f"{stem}_pred.png")
        assert pred.size == (64, 64) and pred.mode == "RGB"
        assert Image.open(tmp_path / f"{stem}_overlay.jpg").width > w  # query plus supports


def test_demo_errors_name_the_file(tiny_sd, files, tmp_path, capsys):
    d, p = files
    cases = [
        ([(str(d / "absent.jpg"), p[1][1])], [p[0][0]], "absent.jpg: no such file"),
        ([p[1]], [str(d / "broken.jpg")], "broken.jpg: not a readable image"),
        ([(p[1][0], p[2][1])], [p[0][0]], "img2.png: mask is 64x64 but its image"),
    ]
    for supports, queries, message in cases:
        assert demo.main(_args(tiny_sd, d, supports, queries, tmp_path)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_empty_support_mask_warns_and_runs(tiny_sd, files, tmp_path, caplog):
    d, p = files
    assert demo.main(_args(tiny_sd, d, [(p[0][0], str(d / "empty.png"))], [p[1][0]], tmp_path)) == 0
    assert "empty support mask" in caplog.text and "empty.png" in caplog.text
    assert (tmp_path / "img1_mask.png").exists()


def test_demo_cli_subprocess(tiny_sd, files, tmp_path):
    d, p = files
    cmd = [sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--config-file",
           os.path.join(ROOT, "configs", "Base-DiffewS.yaml"), "--support", *p[1], "--query", p[0][0],
           "--output", str(tmp_path), "--opts", "MODEL.DIFFEWS.PRETRAINED", tiny_sd,
           "INPUT.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "foreground" in res.stdout and (tmp_path / "img0_overlay.jpg").exists()
    help_text = subprocess.run([sys.executable, cmd[1], "--help"], capture_output=True, text=True).stdout
    assert "empty support mask is a warning" in help_text.replace("\n", " ")
