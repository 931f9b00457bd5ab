# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/calibrate_presence.py on the tiny model: training classes only, seeded, one-line errors,
and a config fragment that loads and holds the reported signal and threshold."""

import json
import os
import sys

import pytest

from diffews.data.datasets.synthetic import SYNTHETIC_TRAIN_CLASSES
from diffews.tasks.presence import draw_presence_episodes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")

import calibrate_presence  # noqa: E402


def test_episodes_seeded_and_from_the_given_classes():
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get("synthetic_fss_train")
    a = draw_presence_episodes(records, SYNTHETIC_TRAIN_CLASSES, 6, 2, seed=0)
    assert a == draw_presence_episodes(records, SYNTHETIC_TRAIN_CLASSES, 6, 2, seed=0)
    for e in a:
        c = e["class_id"]
        assert c in SYNTHETIC_TRAIN_CLASSES and len(e["supports"]) == 2
        assert all(r["classes"] == [c] for r in e["supports"] + [e["positive"]])
        assert e["positive"] not in e["supports"]
        neg = e["negative"]
        assert c not in neg["classes"] and neg["synthetic"]["distractor"] != c


def test_calibration_writes_a_config_fragment(tiny_sd, tmp_path, capsys):
    out = tmp_path / "cal"
    rc = calibrate_presence.cli(["--config-file", CONFIG, "--output", str(out), "--episodes", "3",
                                 "--held-out", "synthetic_fss_test",
                                 "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", "64",
                                 "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "presence_calibration.json").read_text())
    assert report["dataset"] == "synthetic_fss_train"
    assert report["positives"] == 3 and report["negatives"] == 3
    assert set(report["signals"]) == {"score", "peak", "attention"}
    best = max(report["signals"].values(), key=lambda r: r["AUROC"])
    assert report["signals"][report["chosen"]] is not None
    assert report["signals"][report["chosen"]]["AUROC"] == best["AUROC"]
    from diffews.config import build_config

    cfg = build_config(CONFIG)
    cfg.merge_from_file(str(out / "presence.yaml"))
    assert cfg.MODEL.DIFFEWS.PRESENCE_SIGNAL == report["chosen"]
    assert cfg.MODEL.DIFFEWS.PRESENCE_THRESHOLD == pytest.approx(
        report["signals"][report["chosen"]]["threshold"], rel=1e-5)
    printed = capsys.readouterr().out
    assert "chosen: " + report["chosen"] in printed and "held-out AUROC" in printed


@pytest.mark.parametrize("extra, message", [
    (["--precision", "1.5", "MODEL.DIFFEWS.PRETRAINED"], "--precision must be in (0, 1]"),
    (["DATASETS.TRAIN", "()", "MODEL.DIFFEWS.PRETRAINED"], "DATASETS.TRAIN is empty"),
])
def test_usage_errors_are_one_line_exit_2(tiny_sd, tmp_path, capsys, extra, message):
    rc = calibrate_presence.cli(["--config-file", CONFIG, "--output", str(tmp_path / "o"),
                                 *extra, tiny_sd])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
