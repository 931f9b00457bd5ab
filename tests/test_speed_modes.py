# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Opt-in inference speed modes: half precision, torch.compile, batched evaluation episodes.
Each must run and stay close to the fp32 eager batch-1 result (the recorded accuracy effect on
the trained quick-start model is in tools/BENCHMARKS.md)."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import SIZE, make_cfg, make_episode
from diffews.modeling import save_release_unet
from diffews.benchmark.random_sd import build_random_diffews

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
import run_fss  # noqa: E402


def _agreement(model, reference, shots=2, n=3):
    """The lowest per-episode fraction of equal mask pixels over n episodes."""
    out = []
    for i in range(n):
        ep = make_episode(shots, seed=40 + i)
        a, b = model([ep])[0], reference([ep])[0]
        out.append((a["pred_mask"] == b["pred_mask"]).float().mean().item())
    return min(out)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inference(tiny_sd, tiny_model, dtype):
    model = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.INFERENCE_DTYPE", dtype)).eval()
    assert model.unet.dtype == model.vae.dtype == getattr(torch, dtype)
    ep = make_episode(1, seed=1)
    s = model.encode_supports(ep["support_images"], ep["support_masks"])
    assert s.dtype == getattr(torch, dtype) and s.latents.dtype == getattr(torch, dtype)
    out = model([ep])[0]
    assert out["pred_image"].dtype == torch.uint8 and out["pred_mask"].dtype == torch.bool
    # the tiny random model's masks stay close to fp32 (bfloat16 keeps 8 mantissa bits only)
    assert _agreement(model, tiny_model) >= (0.99 if dtype == "float16" else 0.9)
    with pytest.raises(ValueError, match="inference settings"):
        model.train()


def test_bfloat16_vae_only(tiny_sd, tiny_model):
    """INFERENCE_DTYPE bfloat16_vae: the VAE in bf16, the UNet (keys, values, latents it reads)
    in fp32; masks close to fp32; an inference setting only."""
    model = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.INFERENCE_DTYPE", "bfloat16_vae")).eval()
    assert model.vae.dtype == torch.bfloat16 and model.unet.dtype == torch.float32
    ep = make_episode(2, seed=2)
    s = model.encode_supports(ep["support_images"], ep["support_masks"])
    assert s.dtype == torch.float32 and s.latents.dtype == torch.float32
    assert _agreement(model, tiny_model) >= 0.9
    with pytest.raises(ValueError, match="inference settings"):
        model.train()


def test_compiled_inference_matches_eager():
    eager = build_random_diffews("tiny")
    compiled = build_random_diffews("tiny", compile=True)
    assert compiled.compiled and not eager.compiled
    assert _agreement(compiled, eager, n=2) >= 0.999
    with pytest.raises(ValueError, match="inference settings"):
        compiled.train()


def test_batched_evaluation_episodes_equal_batch_one(tiny_sd, tmp_path, monkeypatch):
    """TEST.FSS.BATCH_SIZE 4 against 1 on the same episodes: each episode's mask agrees on
    >= 99.9% of its pixels (diffews/config.py: equal up to float rounding), and the scores are
    those of the masks."""
    from tests._capture import capture_episodes

    seen = capture_episodes(monkeypatch)
    masks = {}
    release = tmp_path / "release"
    save_release_unet(build_model(make_cfg(tiny_sd)).unet, str(release / "unet"))
    cfg_file = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
    results = {}
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        code = run_fss.cli(["--config-file", cfg_file, "--benchmark", "synthetic", "--shot", "2",
                            "--num-episodes", "8", "--output", str(out),
                            "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.WEIGHTS", str(release),
                            "INPUT.IMAGE_SIZE", str(SIZE), "TEST.FSS.BATCH_SIZE", str(batch)])
        assert code == 0
        results[batch] = json.load(open(out / "results.json"))["mean"]
        masks[batch] = {i: e["pred_mask"] for i, e in seen.items()}
        seen.clear()
    assert sorted(masks[4]) == sorted(masks[1]) == list(range(8))
    for i, mask in masks[1].items():
        assert (masks[4][i] == mask).mean() >= 0.999, (i, (masks[4][i] == mask).mean())
    if all(np.array_equal(masks[4][i], m) for i, m in masks[1].items()):
        assert results[4] == results[1]  # equal masks: equal scores


def test_default_fast_paths_keep_the_masks(tiny_sd, tiny_model):
    """The on-by-default fast paths that change float rounding (channels-last VAE, supports
    batched in one support pass) against the plain path: masks agree >= 99.9%."""
    plain = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.VAE_CHANNELS_LAST", "False",
                                 "MODEL.DIFFEWS.SUPPORT_PASS_BATCH", "1")).eval()
    assert tiny_model.support_pass_batch == 8
    assert tiny_model.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.vae.encoder.conv_in.weight.is_contiguous()
    assert _agreement(tiny_model, plain, shots=5, n=3) >= 0.999


def test_gpu_suite_dry_run_on_cpu(tmp_path):
    """tools/benchmark.py --suite gpu's code on the CPU with the tiny model: every row is timed
    or says why not, and the rows land in the benchmarks file."""
    from diffews.benchmark.suite import append_to_benchmarks, format_rows, run_suite

    rows = run_suite(torch.device("cpu"), "tiny", SIZE, reps=1, log=lambda *a: None,
                     dtypes=("float32",), compile_modes=(False,), onnx_runtimes=(),
                     sine_dtypes=())
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert {(r["shots"], r["batch"]) for r in rows if r["what"] == "inference"} == {
        (1, 1), (1, 8), (5, 1), (5, 8)}
    assert all(r["ms_per_episode"] > 0 for r in rows if r["what"] == "inference")
    assert [r["checkpointing"] for r in rows if r["what"] == "training step"] == [False, True]
    late = run_suite(torch.device("cpu"), "tiny", SIZE, reps=1, budget_s=0, log=lambda *a: None,
                     dtypes=("float32",), compile_modes=(False,), onnx_runtimes=(),
                     sine_dtypes=())
    assert {r["status"] for r in late} == {"not run (time budget)"}
    path = tmp_path / "BENCHMARKS.md"
    append_to_benchmarks(str(path), rows, "CPU (dry run)", "python tools/benchmark.py --suite gpu")
    text = path.read_text()
    assert "CPU (dry run): GPU suite" in text and text.count("| inference |") == 4
    assert format_rows(late).count("not run") == 6


def test_compare_paths_on_the_tiny_model():
    """tools/benchmark.py --compare's three paths: the same masks, the reuse path skips the
    support pass and its FLOPs, and the stage profile accounts for each path's VAE calls
    (the reference path's own contiguous VAE included)."""
    from diffews.benchmark.inference_paths import compare_paths
    from diffews.benchmark.episodes import random_episode

    torch.manual_seed(0)
    model = build_random_diffews("tiny")
    episodes = [random_episode(2, SIZE, 100 + i) for i in range(3)]
    for e in episodes[1:]:
        e["support_images"], e["support_masks"] = (episodes[0]["support_images"],
                                                   episodes[0]["support_masks"])
    r = compare_paths(model, episodes, profile_reps=1)
    assert set(r["latency"]) == {"plain", "default", "reuse"}
    assert all(len(v) == 3 and min(v) > 0 for v in r["latency"].values())
    assert r["agreement"]["plain"] == 1.0
    assert r["agreement"]["default"] >= 0.999 and r["agreement"]["reuse"] >= 0.999
    # reuse: one VAE encode, no support pass; the others: 2K + 1 encodes and a support pass
    assert r["flops"]["reuse"] < r["flops"]["default"] <= r["flops"]["plain"]
    assert r["support_set_flops"] > 0
    prof = r["profile"]
    assert prof["reuse"].get("unet support pass", 0.0) == 0.0
    for path in ("plain", "default"):
        assert prof[path]["vae encode"] > 0 and prof[path]["unet support pass"] > 0
        assert prof[path]["vae decode"] > 0 and prof[path]["unet query pass"] > 0
    assert all(p["total"] >= sum(v for k, v in p.items() if k not in ("total", "other")) - 1e-9
               for p in prof.values())


def test_mode_accuracy_reports_agreement_and_first_batch(tiny_sd, tmp_path, monkeypatch):
    """tools/benchmark.py --accuracy's table on the synthetic benchmark: the reference row agrees
    100% with itself, K/V storage in fp16 and batched episodes stay >= 99.9%, every row has a
    first-batch time (the compile time, with COMPILE) apart from its per-episode time."""
    from diffews.benchmark.modes import mode_accuracy

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # episode cache out of the tree
    cfg = make_cfg(tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True", "TEST.FSS.NUM_EPISODES", "6",
                   "TEST.FSS.SHOT", "1", "DATALOADER.NUM_WORKERS", "0")
    modes = ["fp32 eager, batch 1, BACKEND torch (reference setting)",
             "fp16 K/V storage (SupportSet.to(dtype=float16))", "TEST.FSS.BATCH_SIZE 8"]
    rows = mode_accuracy(cfg, "synthetic_fss_test", modes=modes, log=lambda *a: None)
    assert list(rows) == modes
    assert rows[modes[0]]["agreement"] == 1.0
    assert all(r["agreement"] >= 0.999 for r in rows.values())
    assert rows[modes[2]]["mIoU"] == pytest.approx(rows[modes[0]]["mIoU"], abs=0.5)
    assert all(r["first_batch_s"] > 0 and r["s_per_episode"] > 0 for r in rows.values())


def test_gpu_suite_sine_rows_dry_run_on_cpu():
    """The suite's SINE rows with a tiny SINE on the CPU: fp32 and bf16 autocast timed, fp16
    autocast says it needs a GPU; training iterations in fp32 and bf16 autocast, batch 1 and 2."""
    from diffews.benchmark.suite import format_rows, run_suite

    rows = run_suite(torch.device("cpu"), "tiny", SIZE, reps=1, log=lambda *a: None,
                     dtypes=(), compile_modes=(), onnx_runtimes=())
    sine = [r for r in rows if r["what"] == "SINE inference"]
    assert [(r["dtype"], r["shots"]) for r in sine] == [
        (d, k) for d in ("float32", "bfloat16", "float16") for k in (1, 5)]
    assert all(r["status"] == "ok" and r["ms_per_episode"] > 0 for r in sine[:4])
    assert {r["status"] for r in sine[4:]} == {"not run (fp16 autocast needs a GPU)"}
    assert format_rows(rows).count("| SINE inference |") == 6
    train = [r for r in rows if r["what"] == "SINE training iteration"]
    assert [(r["dtype"], r["batch"]) for r in train] == [
        (d, b) for d in ("float32", "bfloat16") for b in (1, 2)]
    assert all(r["status"] == "ok" and r["s_per_step"] > 0 for r in train)
    assert format_rows(rows).count("| SINE training iteration |") == 4


def test_bf16_on_a_cpu_without_bf16_kernels_warns(tmp_path, caplog):
    """bf16 is emulated (many times slower) on a CPU whose flags list no avx512_bf16 / amx_bf16:
    the model says so when built for such a CPU, and stays quiet with the kernels, on a GPU or
    in float32."""
    from diffews.modeling.speed import cpu_has_bf16_kernels, warn_if_bf16_emulated

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    bf16 = tmp_path / "bf16"
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16_kernels(str(avx2)) is False and cpu_has_bf16_kernels(str(bf16)) is True
    assert cpu_has_bf16_kernels(str(tmp_path / "missing")) is None
    with caplog.at_level("WARNING", logger="diffews.modeling.speed"):
        assert warn_if_bf16_emulated("bfloat16_vae", "cpu", str(avx2))
        assert "without bf16 kernels" in caplog.text
        assert not warn_if_bf16_emulated("bfloat16", "cpu", str(bf16))
        assert not warn_if_bf16_emulated("bfloat16", "cuda", str(avx2))
        assert not warn_if_bf16_emulated("float32", "cpu", str(avx2))
