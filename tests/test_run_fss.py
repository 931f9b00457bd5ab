# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""inference_fss/run_fss.py end to end with a tiny model: table, results.json, pictures, and an
episode file from tools/make_episodes.py reused."""

import json
import os
import sys

from detectron2.modeling import build_model

from conftest import make_cfg
from diffews.data.datasets.synthetic import make_synthetic_episodes
from diffews.data.episodes import save_episodes
from diffews.modeling import save_release_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
import run_fss  # noqa: E402

CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def test_run_fss_on_synthetic_benchmark(tiny_sd, tmp_path):
    release = tmp_path / "release"
    save_release_unet(build_model(make_cfg(tiny_sd)).unet, str(release / "unet"))
    out = tmp_path / "out"
    args = run_fss.parse_args(["--config-file", CFG, "--benchmark", "synthetic", "--shot", "2",
                               "--num-episodes", "6", "--save-vis", "2", "--output", str(out),
                               "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release)])
    summary = run_fss.main(args)
    assert summary["shot"] == 2 and summary["folds"][0]["num_episodes"] == 6
    assert 0 <= summary["mean"]["mIoU"] <= 100
    saved = json.load(open(out / "results.json"))
    assert saved["mean"]["mIoU"] == summary["mean"]["mIoU"]
    pictures = sorted(os.listdir(out / "vis" / "synthetic_fss_test"))
    assert len(pictures) == 2 and pictures[0].startswith("episode_00000")

    # the same episodes written to a file and reused give the same score
    episodes = make_synthetic_episodes("test", shot=2, seed=0, num_episodes=6)
    for i, e in enumerate(episodes):
        e["episode_id"] = i
    save_episodes(episodes, str(tmp_path / "ep.json"))
    args = run_fss.parse_args(["--config-file", CFG, "--benchmark", "synthetic", "--shot", "2",
                               "--episodes", str(tmp_path / "ep.json"), "--output", str(tmp_path / "o2"),
                               "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release)])
    assert run_fss.main(args)["mean"] == summary["mean"]
