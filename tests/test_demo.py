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

from diffews.cli import run_cli  # noqa: E402


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


def _overrides(tiny_sd, d, weights=True):
    return (["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu"]
            + (["MODEL.WEIGHTS", str(d / "release")] if weights else []))


def _args(tiny_sd, d, supports, queries, out, *opts, weights=True):
    argv = ["--config-file", os.path.join(ROOT, "configs", "Base-DiffewS.yaml")]
    for s in supports:
        argv += ["--support", *s]
    argv += ["--query", *queries, "--output", str(out), *_overrides(tiny_sd, d, weights), *opts]
    return demo.get_parser().parse_args(argv)


@pytest.fixture(scope="module")
def predictor(tiny_sd, files):
    """The same model as the demo's, built apart: the reference for the written masks."""
    from diffews.cli import load_config_checked
    from diffews.predictor import DiffewSPredictor

    cfg = load_config_checked(os.path.join(ROOT, "configs", "Base-DiffewS.yaml"),
                              _overrides(tiny_sd, files[0]))
    return DiffewSPredictor.from_config(cfg)


@pytest.fixture(autouse=True)
def _plain_logging(monkeypatch):
    """detectron2's setup_logger binds a handler to the first test's captured stdout (and stops
    propagation); keep pytest's own capture instead."""
    monkeypatch.setattr(demo, "setup_logger", lambda **kwargs: None)


def _run(args):
    return run_cli(lambda: demo.main(args))


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_demo_writes_three_files_per_query(tiny_sd, files, predictor, tmp_path, capsys, shots):
    d, p = files
    queries = [p[0][0], p[5][0]]
    supports = [p[i] for i in range(1, shots + 1)]
    assert _run(_args(tiny_sd, d, supports, queries, tmp_path)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "foreground, score" in ln]
    assert len(lines) == 2 and lines[0].startswith(p[0][0])
    # the reference: the predictor given all K supports and one query at a time (the demo batches
    # its queries), its boolean mask at the query's size written as 0/255
    support_set = predictor.encode_supports([i for i, _ in supports], [m for _, m in supports])
    for q, (h, w) in ((p[0][0], (48, 64)), (p[5][0], (64, 48))):
        stem = os.path.splitext(os.path.basename(q))[0]
        mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        expected = predictor.predict([q], support_set, batch_size=1)[0]["mask"]
        assert 0 < expected.mean() < 1  # both classes present: the comparison can tell
        assert np.array_equal(mask, np.where(expected, 255, 0)), \
            f"{stem}: {(mask != np.where(expected, 255, 0)).sum()} pixels differ"
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
        assert _run(_args(tiny_sd, d, supports, queries, tmp_path)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    # no weights: an error saying what to set (exit 2), unless asked for on purpose
    assert _run(_args(tiny_sd, d, [p[1]], [p[0][0]], tmp_path, weights=False)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MODEL.WEIGHTS is empty" in err[0] and "ALLOW_UNTRAINED" in err[0]
    args = _args(tiny_sd, d, [p[1]], [p[0][0]], tmp_path, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
                 weights=False)
    assert _run(args) == 0


def test_demo_takes_a_query_folder_and_encodes_supports_once(tiny_sd, files, tmp_path, monkeypatch):
    d, p = files
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in (0, 3, 4):
        os.link(p[i][0], folder / os.path.basename(p[i][0]))
    from diffews.predictor import DiffewSPredictor

    calls = []
    original = DiffewSPredictor.encode_supports
    monkeypatch.setattr(DiffewSPredictor, "encode_supports",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    out = tmp_path / "out"
    assert _run(_args(tiny_sd, d, [p[1], p[2]], [str(folder)], out)) == 0
    assert calls == [1]
    assert sorted(f for f in os.listdir(out) if f.endswith("_mask.png")) == [
        "img0_mask.png", "img3_mask.png", "img4_mask.png"]


def test_empty_support_mask_warns_and_runs(tiny_sd, files, tmp_path, caplog):
    d, p = files
    assert _run(_args(tiny_sd, d, [(p[0][0], str(d / "empty.png"))], [p[1][0]], tmp_path)) == 0
    assert "empty support mask" in caplog.text and "empty.png" in caplog.text
    assert (tmp_path / "img1_mask.png").exists()


@pytest.mark.slow
def test_demo_cli_subprocess(tiny_sd, files, tmp_path):
    d, p = files
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "demo.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "Base-DiffewS.yaml"),
        "--support",
        *p[1],
        "--query",
        p[0][0],
        "--output",
        str(tmp_path),
        "--opts",
        "MODEL.DIFFEWS.PRETRAINED",
        tiny_sd,
        "INPUT.IMAGE_SIZE",
        "64",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        str(d / "release"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "foreground" in res.stdout and (tmp_path / "img0_overlay.jpg").exists()
    # no warning (--opts is one of the two equal spellings; fvcore's FutureWarning is filtered)
    assert "warning" not in res.stderr.lower(), res.stderr
    res = subprocess.run(cmd[:-2] + ["MODEL.WEIGTHS", "x"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: config override: unknown config key MODEL.WEIGTHS; did "
                                  "you mean MODEL.WEIGHTS? (every DiffewS key is listed in "
                                  "diffews/config.py)")
    help_text = subprocess.run(
        [sys.executable, cmd[1], "--help"], capture_output=True, text=True
    ).stdout
    assert "empty support mask is a warning" in help_text.replace("\n", " ")
