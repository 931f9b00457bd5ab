# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""MODEL.DIFFEWS.BACKEND onnxruntime through the config: DiffewSPredictor and run_fss.py on the
tiny model, with torch's UNet and VAE forbidden while the backend runs (so the masks can only
come from the ONNX graphs), against the torch backend's masks (>= 99.9% agreement); the export
cached beside the weights; training and posterior sampling stay torch; missing onnxruntime and
an unknown backend stop before any model is built; tools/export_onnx.py."""

import glob
import json
import os
import sys

import numpy as np
import onnxruntime  # noqa: F401 (pinned in requirements.txt: these tests run, never skip)
import pytest
import torch
from diffusers import AutoencoderKL

from conftest import SIZE, make_cfg, make_episode
from tests._capture import capture_episodes
from diffews import DiffewSPredictor
from diffews.modeling import save_release_unet
from diffews.modeling.meta_arch.building_blocks import DiffewSBlocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import export_onnx  # noqa: E402
import run_fss  # noqa: E402

CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


@pytest.fixture(scope="module")
def weights(tiny_sd, tmp_path_factory):
    """A "fine-tuned" tiny UNet (every weight moved by 0.05 * randn) as a release folder."""
    from detectron2.modeling import build_model

    model = build_model(make_cfg(tiny_sd))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    folder = tmp_path_factory.mktemp("onnx_weights") / "release"
    save_release_unet(model.unet, str(folder / "unet"))
    return str(folder)


def forbid_torch_compute(monkeypatch):
    """Any torch UNet pass or VAE encode/decode raises: only the backend can compute."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch compute while the ONNX Runtime backend should run")

    monkeypatch.setattr(DiffewSBlocks, "_unet", refuse)
    monkeypatch.setattr(AutoencoderKL, "_encode", refuse)
    monkeypatch.setattr(AutoencoderKL, "decode", refuse)


def _agreement(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


@pytest.fixture(scope="module")
def predictors(tiny_sd, weights):
    torch_p = DiffewSPredictor.from_config(make_cfg(tiny_sd, "MODEL.WEIGHTS", weights))
    ort_p = DiffewSPredictor.from_config(make_cfg(tiny_sd, "MODEL.WEIGHTS", weights,
                                                  "MODEL.DIFFEWS.BACKEND", "onnxruntime"))
    return torch_p, ort_p


def _arrays(episode):
    images = [im.permute(1, 2, 0).numpy() for im in episode["support_images"]]
    return images, [m.numpy() for m in episode["support_masks"]]


def test_predictor_masks_agree_and_reuse_support_sets(predictors, weights, monkeypatch):
    torch_p, ort_p = predictors
    assert torch_p.model.inference_backend is None
    assert ort_p.model.inference_backend.sizes == [SIZE]
    # the export is kept beside the weights, under the size and the model's key
    (folder,) = glob.glob(os.path.join(weights, "onnx", f"{SIZE}px-*"))
    assert json.load(open(os.path.join(folder, "manifest.json")))["image_size"] == SIZE
    ep = make_episode(3, seed=21)
    images, masks = _arrays(ep)
    queries = [make_episode(1, seed=30 + i)["image"].permute(1, 2, 0).numpy() for i in range(4)]
    torch_set = torch_p.encode_supports(images, masks)
    expected = torch_p.predict(queries, torch_set, batch_size=2)

    forbid_torch_compute(monkeypatch)
    ort_set = ort_p.encode_supports(images, masks)
    backend = ort_p.model.inference_backend.get(ort_p.model, SIZE)
    calls = []
    monkeypatch.setattr(backend, "support_pass", lambda *a, **k: calls.append(a))
    # the supports are encoded once: predicting runs no support pass
    got = ort_p.predict(queries, ort_set, batch_size=2)
    crossed = ort_p.predict(queries, torch_set, batch_size=3)  # a torch set feeds the graph
    assert not calls
    for e, g, c in zip(expected, got, crossed):
        assert _agreement(g["mask"], e["mask"]) >= 0.999
        assert _agreement(c["mask"], e["mask"]) >= 0.999
        assert np.abs(g["pred_image"].astype(int) - e["pred_image"].astype(int)).max() <= 2
    many = ort_p.predict_many(queries[0], [ort_set, torch_set[0:1], ort_set[1:3]])
    assert _agreement(many[0]["mask"], expected[0]["mask"]) >= 0.999
    monkeypatch.undo()
    # the backend's set in the torch predictor
    back = torch_p.predict(queries[:2], ort_set)
    assert all(_agreement(b["mask"], e["mask"]) >= 0.999 for b, e in zip(back, expected))
    one = torch_p.predict_many(queries[0], [torch_set[0:1], torch_set[1:3]])
    assert _agreement(many[1]["mask"], one[0]["mask"]) >= 0.999
    assert _agreement(many[2]["mask"], one[1]["mask"]) >= 0.999


def _run_args(tiny_sd, weights, out, *extra):
    return run_fss.parse_args(["--config-file", CFG, "--benchmark", "synthetic", "--shot", "2",
                               "--num-episodes", "6", "--output", str(out),
                               "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights,
                               *extra])


def test_run_fss_onnxruntime_matches_torch(tiny_sd, weights, predictors, tmp_path, monkeypatch):
    seen_torch = capture_episodes(monkeypatch)
    summary_torch = run_fss.main(_run_args(tiny_sd, weights, tmp_path / "torch",
                                           "MODEL.DIFFEWS.BACKEND", "torch"))
    monkeypatch.undo()
    # the export made by the predictors' fixture is found (same weights and size), so nothing
    # is traced in this run and torch's UNet and VAE can be forbidden throughout
    (folder,) = glob.glob(os.path.join(weights, "onnx", f"{SIZE}px-*"))
    stamp = os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns
    seen = capture_episodes(monkeypatch)
    forbid_torch_compute(monkeypatch)
    summary = run_fss.main(_run_args(tiny_sd, weights, tmp_path / "ort",
                                     "MODEL.DIFFEWS.BACKEND", "onnxruntime"))
    # used, not rebuilt (onnx/auto/ holds BACKEND auto's per-host choices, not exports)
    assert glob.glob(os.path.join(weights, "onnx", "*px-*")) == [folder]
    assert os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns == stamp
    assert sorted(seen) == sorted(seen_torch) == list(range(6))
    for i in seen:
        assert _agreement(seen[i]["pred_mask"], seen_torch[i]["pred_mask"]) >= 0.999, i
    for key in ("mIoU", "FB-IoU"):  # x100
        assert summary["mean"][key] == pytest.approx(summary_torch["mean"][key], abs=0.05)


def test_missing_onnxruntime_stops_before_the_model(tiny_sd, weights, tmp_path, monkeypatch,
                                                    capsys):
    from diffews.predictor.diffews import DiffewSPredictor

    def no_model(cls, cfg):
        raise AssertionError("the model was built")

    monkeypatch.setattr(DiffewSPredictor, "from_config", classmethod(no_model))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    argv = ["--config-file", CFG, "--benchmark", "synthetic", "--output", str(tmp_path),
            "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights]
    assert run_fss.cli(argv + ["MODEL.DIFFEWS.BACKEND", "onnxruntime"]) == 1
    assert "pip install onnx onnxruntime" in _error_line(capsys)
    assert run_fss.cli(argv + ["MODEL.DIFFEWS.BACKEND", "tensorflow"]) == 2
    assert "MODEL.DIFFEWS.BACKEND" in _error_line(capsys)


def _error_line(capsys) -> str:
    """The one ``error:`` line on stderr (log lines of earlier runs' handlers may precede it)."""
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    return line


def test_training_and_sampling_stay_torch(tiny_sd, tmp_path):
    from detectron2.modeling import build_model

    from diffews.checkpoint import load_inference_weights

    cfg = make_cfg(tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True", "MODEL.DIFFEWS.BACKEND",
                   "onnxruntime", "MODEL.DIFFEWS.ONNX_CACHE_DIR", str(tmp_path))
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    assert not model.training  # the export left the model in eval mode
    backends, used = model.inference_backend, []
    get = backends.get
    backends.get = lambda m, size, part=None: used.append(size) or get(m, size, part)
    ep = make_episode(2, seed=5)
    model([ep])
    assert used  # inference asked the backend
    used.clear()
    x = model.normalize(ep["image"][None])
    torch.manual_seed(0)
    a = model.encode(x, sample=True)
    torch.manual_seed(0)
    assert torch.equal(a, model.encode(x, sample=True)) and not used  # sampling: torch
    model.train()
    loss = model([ep])["loss_mask_latent"]
    loss.backward()  # a torch graph through the UNet
    assert torch.isfinite(loss) and not used
    assert any(p.grad is not None for p in model.unet.parameters())


def test_export_tool_prints_the_check(tiny_sd, weights, tmp_path, capsys):
    out = tmp_path / "export"
    assert export_onnx.cli(["--config-file", CFG, "--output", str(out),
                            "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights,
                            "INPUT.IMAGE_SIZE", str(SIZE)]) == 0
    text = capsys.readouterr().out
    manifest = json.load(open(out / "manifest.json"))
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "vae_encoder.onnx",
                                              "vae_decoder.onnx", "support_pass.onnx",
                                              "query_pass.onnx"])
    for name, diff in manifest["check"].items():
        line = next(x for x in text.splitlines() if x.split() and x.split()[0] == name)
        assert float(line.split()[1]) == pytest.approx(diff, rel=0.01)
        assert diff < (1e-4 if "uint8" not in name else 1.5)
    # a bfloat16 model cannot be exported: one error line, exit 2, no graph written
    assert export_onnx.cli(["--config-file", CFG, "--output", str(tmp_path / "bf16"),
                            "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", weights,
                            "MODEL.DIFFEWS.INFERENCE_DTYPE", "bfloat16"]) == 2
    assert "float32" in _error_line(capsys)
    assert not glob.glob(str(tmp_path / "bf16" / "*.onnx"))
