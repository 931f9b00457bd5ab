# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""inference_fss/run_fss.py end to end with a tiny model: mIoU / FB-IoU recomputed from scratch
from the masks the model returned (docs/PROTOCOLS.md section 2a), masks that follow the configured
threshold rule (docs/METHOD.md section 3.2) and come from the weights given, the table,
results.json, pictures, per-fold weights, and an episode file from tools/make_episodes.py reused."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from conftest import make_cfg
from tests._capture import capture_episodes, hsnet_scores, threshold_rule_holds
from diffews.checkpoint import UntrainedModelError
from diffews.data.datasets.synthetic import make_synthetic_episodes
from diffews.data.episodes import save_episodes
from diffews.modeling import save_release_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
import run_fss  # noqa: E402

CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")

@pytest.fixture(scope="module")
def tuned(tiny_sd, tmp_path_factory):
    """A "fine-tuned" tiny model (every UNet weight moved by 0.05 * randn, seed 1), in memory and
    exported as per-fold release weights (the path with ``{fold}``, as for COCO-20i)."""
    model = build_model(make_cfg(tiny_sd))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in model.unet.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("weights") / "release_fold0"
    save_release_unet(model.unet, str(folder / "unet"))
    return model.eval(), str(folder).replace("fold0", "fold{fold}")


@pytest.fixture(scope="module")
def release(tuned):
    return tuned[1]


def _check_scores(summary, seen, rel=0.25, absolute=0.0):
    """The summary's mIoU / FB-IoU are the from-scratch ones of the masks the model returned,
    and every mask follows the threshold rule on its decoded prediction."""
    class_ids = MetadataCatalog.get("synthetic_fss_test").class_ids
    expected = hsnet_scores(seen, class_ids)
    for key, value in expected.items():
        assert summary["mean"][key] == pytest.approx(value, rel=1e-9), (key, summary["mean"])
    for i, e in seen.items():
        assert threshold_rule_holds(e["pred_image"], e["pred_mask"], rel, absolute), i


def _same_predictions(model, seen, episodes=(0, 1)):
    """The run's decoded predictions are those of ``model`` on the same inputs."""
    for i in episodes:
        (out,) = model([dict(seen[i]["input"])])
        diff = np.abs(out["pred_image"].numpy().astype(int) - seen[i]["pred_image"].astype(int))
        if diff.max() > 1:
            return False
    return True


def _args(tiny_sd, weights, out, *extra, flags=()):
    return run_fss.parse_args(["--config-file", CFG, "--benchmark", "synthetic", "--shot", "2",
                               "--num-episodes", "6", "--output", str(out), *flags,
                               "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights,
                               *extra])


def test_run_fss_scores_table_json_pictures(tiny_sd, tuned, release, tmp_path, monkeypatch):
    seen = capture_episodes(monkeypatch)
    out = tmp_path / "out"
    summary = run_fss.main(_args(tiny_sd, release, out, flags=["--save-vis", "2"]))
    assert summary["shot"] == 2 and summary["folds"][0]["num_episodes"] == 6
    assert sorted(seen) == list(range(6))
    _check_scores(summary, seen)
    assert _same_predictions(tuned[0], seen)  # the fine-tuned weights were loaded
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


@pytest.mark.parametrize("opts,rule", [(("MODEL.DIFFEWS.REL_THRESHOLD", "0.5"), (0.5, 0.0)),
                                       (("MODEL.DIFFEWS.ABS_THRESHOLD", "0.5"), (0.25, 0.5))])
def test_a_threshold_setting_changes_the_masks_by_its_rule(tiny_sd, release, tmp_path, opts,
                                                           rule, monkeypatch):
    seen = capture_episodes(monkeypatch)
    summary = run_fss.main(_args(tiny_sd, release, tmp_path, *opts))
    _check_scores(summary, seen, *rule)
    # the masks are not those of the default rule (relative, 0.25): the setting took effect
    assert not all(threshold_rule_holds(e["pred_image"], e["pred_mask"], 0.25)
                   for e in seen.values())


def test_untrained_model_needs_explicit_permission(tiny_sd, tiny_model, tuned, tmp_path,
                                                   monkeypatch):
    with pytest.raises(UntrainedModelError, match="MODEL.DIFFEWS.ALLOW_UNTRAINED True"):
        run_fss.main(_args(tiny_sd, "", tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / "results.json")
    seen = capture_episodes(monkeypatch)
    summary = run_fss.main(_args(tiny_sd, "", tmp_path / "b", "MODEL.DIFFEWS.ALLOW_UNTRAINED",
                                 "True"))
    _check_scores(summary, seen)
    # the plain Stable Diffusion UNet's predictions, not the fine-tuned ones
    assert _same_predictions(tiny_model, seen) and not _same_predictions(tuned[0], seen)


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
