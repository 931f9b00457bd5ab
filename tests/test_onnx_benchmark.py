# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The ONNX Runtime backend in the benchmarks: tools/benchmark.py --compare's backend paths,
--accuracy's backend mode, the GPU suite's execution-provider rows (run with the CPU provider
here; CUDA and TensorRT say why they are not run), and the per-part timings."""

import onnxruntime  # noqa: F401 (pinned in requirements.txt: these tests run, never skip)
import pytest
import torch

from conftest import SIZE, make_cfg
from diffews.benchmark.episodes import random_episode
from diffews.benchmark.random_sd import build_random_diffews


def test_compare_paths_with_the_backend(tmp_path):
    from diffews.benchmark.inference_paths import compare_paths
    from diffews.modeling.onnx.attach import OnnxBackends

    torch.manual_seed(0)
    model = build_random_diffews("tiny")
    backends = OnnxBackends(str(tmp_path))
    episodes = [random_episode(2, SIZE, 200 + i) for i in range(5)]
    for e in episodes[1:]:
        e["support_images"], e["support_masks"] = (episodes[0]["support_images"],
                                                   episodes[0]["support_masks"])
    r = compare_paths(model, episodes, profile_reps=1, backend=backends)
    assert r["paths"] == ["plain", "default", "reuse", "onnxruntime", "onnxruntime reuse"]
    assert all(len(r["latency"][p]) == 5 and min(r["latency"][p]) > 0 for p in r["paths"])
    assert r["agreement"]["onnxruntime"] >= 0.999 and r["agreement"]["onnxruntime reuse"] >= 0.999
    assert set(r["support_set_s"]) == {"reuse", "onnxruntime reuse"}
    assert r["flops"]["onnxruntime"] == r["flops"]["default"] > r["flops"]["onnxruntime reuse"]
    prof = r["profile"]
    # the backend's graph runs are timed by stage; reuse runs no support pass
    for stage in ("vae encode", "unet support pass", "unet query pass", "vae decode"):
        assert prof["onnxruntime"][stage] > 0, stage
    assert prof["onnxruntime reuse"].get("unet support pass", 0.0) == 0.0
    assert prof["onnxruntime reuse"]["unet query pass"] > 0
    # the profiler's wrappers are gone and no backend is left attached to the model
    backend = backends.get(model, SIZE)
    assert "query_pass" not in vars(backend) and model.inference_backend is None


def test_gpu_suite_rows_for_the_execution_providers():
    from diffews.benchmark.suite import format_rows, run_suite

    rows = run_suite(torch.device("cpu"), "tiny", SIZE, reps=1, log=lambda *a: None,
                     dtypes=(), compile_modes=(), onnx_runtimes=("cpu", "cuda", "tensorrt"),
                     sine_dtypes=())
    ort = [r for r in rows if r.get("runtime")]
    assert [r["runtime"] for r in ort] == [
        f"onnxruntime {rt}{mode}" for rt in ("cpu", "cuda", "tensorrt") for mode in ("", " auto")
        for _ in range(4)]
    cpu = [r for r in ort if r["runtime"].startswith("onnxruntime cpu")]
    assert all(r["status"].startswith("ok") and r["ms_per_episode"] > 0 for r in cpu)
    assert {(r["shots"], r["batch"]) for r in cpu} == {(1, 1), (1, 8), (5, 1), (5, 8)}
    # the auto rows print the choice (the tiny model's parts are under the FLOP gate: torch)
    assert {r["status"] for r in cpu if r["runtime"].endswith("auto")} == {
        "ok; auto: encode torch, decode torch, support_pass torch, query_pass torch"}
    # this onnxruntime has no CUDA / TensorRT provider: the rows say so
    assert {r["status"] for r in ort if r["runtime"].startswith("onnxruntime cuda")} == {
        "not run (CUDAExecutionProvider not available in this onnxruntime)"}
    assert {r["status"] for r in ort if r["runtime"].startswith("onnxruntime tensorrt")} == {
        "not run (TensorrtExecutionProvider not available in this onnxruntime)"}
    assert [r["dtype"] for r in ort[-8:]] == ["float16 (TensorRT)"] * 8
    table = format_rows(rows)
    assert table.count("| inference, onnxruntime tensorrt | float16 (TensorRT) |") == 4
    assert table.count("| inference, onnxruntime tensorrt auto | float16 (TensorRT) |") == 4


def test_mode_accuracy_backend_row(tiny_sd, tmp_path, monkeypatch):
    from diffews.benchmark.modes import MODES, mode_accuracy, unavailable_modes

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # episode cache out of the tree
    cfg = make_cfg(tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True", "TEST.FSS.NUM_EPISODES", "6",
                   "TEST.FSS.SHOT", "2", "DATALOADER.NUM_WORKERS", "0",
                   "MODEL.DIFFEWS.ONNX_CACHE_DIR", str(tmp_path / "onnx"))
    backend = "BACKEND onnxruntime (CPU execution provider)"
    assert backend in MODES and unavailable_modes() == {}
    modes = ["fp32 eager, batch 1, BACKEND torch (reference setting)", backend]
    rows = mode_accuracy(cfg, "synthetic_fss_test", modes=modes, log=lambda *a: None)
    assert rows[backend]["agreement"] >= 0.999
    assert rows[backend]["mIoU"] == pytest.approx(rows[modes[0]]["mIoU"], abs=0.05)
    assert (tmp_path / "onnx" / "onnx").is_dir()  # the export went to ONNX_CACHE_DIR


def test_part_timings_rows_and_differences():
    from diffews.benchmark.onnx_parts import PARTS, format_parts, part_timings

    from diffews.benchmark.onnx_parts import format_nodes, node_counts

    rows = part_timings("tiny", SIZE, threads=1, repeats=1, log=lambda *a: None)
    folder = rows.pop("export")
    labels = list(rows)
    assert labels[:3] == ["torch t1", "torch bf16 t1", "ort all t1"]
    assert "ort basic t1" in labels and "ort all t1 free shapes" in labels
    for label, r in rows.items():
        assert all(r[p] > 0 for p in PARTS), label
        # every fp32 runtime computes the same; bf16 within its rounding
        bound = 0.5 if "bf16" in label else 1e-3
        assert r["max_diff"] < bound, (label, r["max_diff"])
    assert rows["torch bf16 t1"]["max_diff"] > 1e-4  # bf16 did run in bf16
    assert format_parts(rows, "title").count("\n| ") == len(rows) + 1
    counts = node_counts(folder, threads=1)
    q = counts["query_pass"]
    assert q["optimised, static shapes"] < q["optimised, free shapes"] <= q["exported"] * 2
    assert format_nodes(counts).count("\n| ") == len(counts)  # a row per graph under the header
