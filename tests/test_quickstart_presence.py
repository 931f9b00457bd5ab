# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start's presence steps on a tiny model: the calibration written into the checkpoint
(read back by the predictor, kept on a second run), the held-out loader with absent-target
episodes, and the table's presence columns."""

import os

import torch

from conftest import make_cfg
from diffews import DiffewSPredictor
from diffews.checkpoint import DiffewSCheckpointer
from diffews.quickstart.baselines import format_table
from diffews.quickstart.presence import CALIBRATION_SEED, calibrate_weights, presence_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
# the quick start's presence overrides (its config's comment)
PRESENCE_OPTS = ["MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED", True,
                 "MODEL.DIFFEWS.PRESENCE_HEAD.LOSS_WEIGHT", 0.2,
                 "INPUT.FEW_SHOT.NEGATIVE_RATIO", 0.3]


def test_calibration_goes_into_the_checkpoint(tiny_sd, tmp_path, caplog):
    from detectron2.modeling import build_model

    from diffews.config import build_config

    cfg = build_config(CONFIG, ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "TEST.FSS.NUM_EPISODES", 3,
                                *PRESENCE_OPTS])
    assert not build_config(CONFIG).MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED  # opt-in
    model = build_model(cfg).eval()
    weights = str(tmp_path / "model_final.pth")
    DiffewSCheckpointer(model, save_dir=str(tmp_path)).save("model_final", iteration=1)
    entry = calibrate_weights(model, cfg, weights, episodes=4)
    assert entry["dataset"] == "synthetic_fss_train" and entry["seed"] == CALIBRATION_SEED
    assert torch.load(weights, weights_only=False)["presence"] == entry
    assert model.presence_signal == entry["signal"]
    assert model.default_presence_threshold() == entry["threshold"]
    with caplog.at_level("INFO"):
        assert calibrate_weights(model, cfg, weights, episodes=4) == entry
    assert "already carries its presence calibration" in caplog.text
    predictor = DiffewSPredictor.from_pretrained(tiny_sd, weights, device="cpu", image_size=64)
    assert predictor.model.presence_calibration == entry
    loader, evaluator = presence_loader(cfg.clone(), "synthetic_fss_test", model)
    episodes = [e for batch in loader() for e in batch]
    assert len(episodes) == 6 and sum(bool(e.get("negative")) for e in episodes) == 3
    assert evaluator()._presence_threshold == entry["threshold"]
    plain = build_model(make_cfg(tiny_sd)).eval()
    assert presence_loader(cfg, "synthetic_fss_test", plain) is None


def test_table_shows_presence_beside_miou():
    table = format_table({"DiffewS (tiny)": {"mIoU": 46.04, "FB-IoU": 70.0, "presence-AUROC": 93.2,
                                             "absent-empty-at-threshold": 85.0,
                                             "present-empty-at-threshold": 6.0},
                          "all foreground": {"mIoU": 7.3, "FB-IoU": 3.6}})
    lines = table.splitlines()
    assert "presence AUROC" in lines[0] and "absent: empty %" in lines[0]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["DiffewS (tiny)", "46.0", "70.0",
                                                             "93.2", "85.0", "6.0"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]][3:] == ["-", "-", "-"]
    assert "presence" not in format_table({"a": {"mIoU": 1.0, "FB-IoU": 2.0}})
