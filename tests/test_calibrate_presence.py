# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/calibrate_presence.py on the tiny model: training classes only, seeded, chosen on one
half and reported on the other (and on a held-out dataset), an unreachable precision target said
in one line, one-line errors, and a config fragment that loads and holds the reported signal and
threshold."""

import json
import os
import sys

import numpy as np
import pytest

from diffews.data.datasets.synthetic import SYNTHETIC_TRAIN_CLASSES
from diffews.tasks.presence import calibrate, draw_presence_episodes, split_halves

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
    rc = calibrate_presence.cli(["--config-file", CONFIG, "--output", str(out), "--episodes", "4",
                                 "--held-out", "synthetic_fss_test", "--precision", "0.99",
                                 "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", "64",
                                 "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
                                 "MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", "True"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "presence_calibration.json").read_text())
    assert report["dataset"] == "synthetic_fss_train"
    assert report["positives"] == 4 and report["negatives"] == 4
    assert report["choice_queries"] == 4 and report["report_queries"] == 4
    # a model with a presence head (untrained here): its signal is measured too
    assert set(report["signals"]) == {"score", "peak", "attention", "head"}
    best = max(report["signals"], key=lambda n: report["signals"][n]["choice"]["AUROC"])
    assert report["chosen"] == best
    # 2 choice positives can never give the 10 true positives a precision target needs
    assert report["unreached"].startswith("precision 0.99 cannot be reached")
    from diffews.config import build_config

    cfg = build_config(CONFIG)
    cfg.merge_from_file(str(out / "presence.yaml"))
    assert cfg.MODEL.DIFFEWS.PRESENCE_SIGNAL == report["chosen"]
    assert cfg.MODEL.DIFFEWS.PRESENCE_THRESHOLD == pytest.approx(
        report["signals"][report["chosen"]]["threshold"], rel=1e-5)
    printed = capsys.readouterr().out
    assert "chosen: " + report["chosen"] in printed and report["unreached"] in printed
    # the held-out numbers: 4 present and 4 absent queries of the held-out classes, at the
    # threshold chosen on the training classes, printed as the json has them
    for name, row in report["signals"].items():
        held = row["held_out"]
        assert held["queries"] == 8 and 0.0 <= held["AUROC"] <= 1.0
        line = next(x for x in printed.splitlines() if x.startswith(name + " "))
        assert line.split("|")[-1].split() == [
            f"{held['AUROC']:.3f}", f"{held['precision']:.3f}", f"{held['recall']:.3f}",
            f"{held['absent-empty']:.1f}%", f"{held['present-empty']:.1f}%"]


def test_calibration_chooses_on_one_half_and_reports_on_the_other():
    """Episodes whose signal "a" separates perfectly in one half and is reversed in the other:
    the threshold comes from the choice half alone, the report half shows the reversal."""
    n = 8  # episodes: (positive, negative) query pairs
    choice, report_half = split_halves({"labels": np.arange(2 * n) % 2 == 0,
                                        "episode": np.repeat(np.arange(n), 2)}, seed=3)
    chosen_eps = set(choice["episode"][::2].tolist())
    assert len(chosen_eps) == n // 2 and not chosen_eps & set(report_half["episode"].tolist())
    labels = np.arange(2 * n) % 2 == 0
    a = np.where(labels, 0.9, 0.1)
    flip = np.isin(np.repeat(np.arange(n), 2), sorted(set(range(n)) - chosen_eps))
    a[flip] = np.where(labels[flip], 0.1, 0.9)
    samples = {"labels": labels, "score": a, "peak": np.full(2 * n, 0.5),
               "attention": np.linspace(0, 1, 2 * n)}
    report = calibrate(samples, seed=3)
    row = report["signals"]["score"]
    assert report["chosen"] == "score" and row["choice"]["AUROC"] == 1.0
    assert row["threshold"] == 0.9 and row["report"]["AUROC"] == 0.0
    assert row["report"]["present-empty"] == 100.0 and row["report"]["absent-empty"] == 0.0
    assert report["unreached"] == ""


@pytest.mark.parametrize("extra, message", [
    (["--precision", "1.5", "MODEL.DIFFEWS.PRETRAINED"], "--precision must be in (0, 1]"),
    (["DATASETS.TRAIN", "()", "MODEL.DIFFEWS.PRETRAINED"], "DATASETS.TRAIN is empty"),
])
def test_usage_errors_are_one_line_exit_2(tiny_sd, tmp_path, capsys, extra, message):
    rc = calibrate_presence.cli(["--config-file", CONFIG, "--output", str(tmp_path / "o"),
                                 *extra, tiny_sd])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
