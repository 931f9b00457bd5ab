# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""inference_fss/run_fss.py end to end with a tiny model: a known mIoU on a fixed setup (which a
wrong threshold or untrained weights change), the table, results.json, pictures, per-fold
weights, and an episode file from tools/make_episodes.py reused."""

import json
import os
import sys

import pytest
import torch
from detectron2.modeling import build_model

from conftest import make_cfg
from diffews.checkpoint import UntrainedModelError
from diffews.data.datasets.synthetic import make_synthetic_episodes
from diffews.data.episodes import save_episodes
from diffews.modeling import save_release_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
import run_fss  # noqa: E402

CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")

# mIoU and FB-IoU of the fixed setup below: the tiny SD folder of conftest (build_tiny_sd, seed 0),
# its UNet with conv_in_ref built from conv_in and every parameter moved by 0.05 * randn (torch
# seed 1, in named_parameters order), exported as a release; the synthetic benchmark's first 6
# test episodes, 2 shots, INPUT.IMAGE_SIZE 64, REL_THRESHOLD 0.25. Obtained once (2026-12-01,
# torch 2.14.1 CPU, diffusers 0.42.1) by calling run_fss.main with exactly these arguments and
# printing summary["mean"]; a pixel flipped anywhere moves mIoU by about 1e-4 relative. Recompute
# them the same way only for a deliberate change of the method. For comparison, REL_THRESHOLD 0.5
# gives mIoU 4.3459 and the untrained UNet (ALLOW_UNTRAINED, no weights) 6.1794.
KNOWN = {"mIoU": 6.213902542869153, "FB-IoU": 6.268697472025714}
REL = 1e-6


@pytest.fixture(scope="module")
def release(tiny_sd, tmp_path_factory):
    model = build_model(make_cfg(tiny_sd))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in model.unet.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("weights") / "release_fold0"
    save_release_unet(model.unet, str(folder / "unet"))
    return str(folder).replace("fold0", "fold{fold}")  # per-fold weights, as for COCO-20i


def _args(tiny_sd, weights, out, *extra, flags=()):
    return run_fss.parse_args(["--config-file", CFG, "--benchmark", "synthetic", "--shot", "2",
                               "--num-episodes", "6", "--output", str(out), *flags,
                               "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights,
                               *extra])


def test_run_fss_known_miou_table_json_pictures(tiny_sd, release, tmp_path):
    out = tmp_path / "out"
    summary = run_fss.main(_args(tiny_sd, release, out, flags=["--save-vis", "2"]))
    assert summary["shot"] == 2 and summary["folds"][0]["num_episodes"] == 6
    for key, value in KNOWN.items():
        assert summary["mean"][key] == pytest.approx(value, rel=REL), summary["mean"]
    saved = json.load(open(out / "results.json"))
    assert saved["mean"] == summary["mean"] and saved["folds"]["0"]["skipped_episodes"] == []
    per_episode = json.load(open(out / "synthetic_fss_test" / "fss_results.json"))["episodes"]
    assert len(per_episode) == 6
    pictures = sorted(os.listdir(out / "vis" / "synthetic_fss_test"))
    assert len(pictures) == 2 and pictures[0].startswith("episode_00000")

    # the same episodes written to a file and reused give the same score
    episodes = make_synthetic_episodes("test", shot=2, seed=0, num_episodes=6)
    for i, e in enumerate(episodes):
        e["episode_id"] = i
    save_episodes(episodes, str(tmp_path / "ep.json"))
    args = _args(tiny_sd, release, tmp_path / "o2", flags=["--episodes", str(tmp_path / "ep.json")])
    assert run_fss.main(args)["mean"] == summary["mean"]


@pytest.mark.parametrize("opts", [("MODEL.DIFFEWS.REL_THRESHOLD", "0.5"),
                                  ("MODEL.DIFFEWS.ABS_THRESHOLD", "0.5")])
def test_a_wrong_threshold_changes_the_known_miou(tiny_sd, release, tmp_path, opts):
    summary = run_fss.main(_args(tiny_sd, release, tmp_path, *opts))
    assert summary["mean"]["mIoU"] != pytest.approx(KNOWN["mIoU"], rel=1e-3)


def test_untrained_model_needs_explicit_permission(tiny_sd, tmp_path):
    with pytest.raises(UntrainedModelError, match="MODEL.DIFFEWS.ALLOW_UNTRAINED True"):
        run_fss.main(_args(tiny_sd, "", tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / "results.json")
    summary = run_fss.main(_args(tiny_sd, "", tmp_path / "b", "MODEL.DIFFEWS.ALLOW_UNTRAINED",
                                 "True"))
    # the plain Stable Diffusion UNet scores differently from the fixed weights above
    assert summary["mean"]["mIoU"] != pytest.approx(KNOWN["mIoU"], rel=1e-3)


def test_run_fss_on_a_custom_folder_layout(tiny_sd, tmp_path):
    """The datasets/README.md walkthrough's command: --layout folder on a class-folder tree;
    results.json names each class's IoU by its class name."""
    from tests._custom_trees import write_folder_tree

    write_folder_tree(str(tmp_path / "my_folder"), {"bolt": 3, "nut": 3, "screw": 2})
    release = tmp_path / "release"
    save_release_unet(build_model(make_cfg(tiny_sd)).unet, str(release / "unet"))
    out = tmp_path / "out"
    code = run_fss.cli(["--config-file", CFG, "--layout", "folder", "--dataset-root",
                        str(tmp_path / "my_folder"), "--shot", "1", "--output", str(out),
                        "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release),
                        "TEST.FSS.NUM_EPISODES", "6"])
    assert code == 0
    saved = json.load(open(out / "results.json"))
    assert saved["shot"] == 1 and saved["benchmark"].startswith("custom (folder")
    fold = saved["folds"]["0"]
    assert fold["num_episodes"] == 6
    assert set(fold["per_class_iou"]) == {"bolt", "nut", "screw"}
    assert saved["mean"]["mIoU"] == fold["mIoU"]
    # a layout argument that does not fit is a one-line usage error before anything loads
    with pytest.raises(SystemExit) as e:
        run_fss.parse_args(["--config-file", CFG, "--layout", "coco", "--dataset-root", "x"])
    assert e.value.code == 2
