# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""MODEL.DIFFEWS.BACKEND auto (per-part runtime chosen by measurement, cached per host) and the
static-shape ONNX Runtime sessions, on the tiny model."""

import glob
import json
import os

import pytest
import torch
from conftest import SIZE, make_cfg, make_episode

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffews.modeling.onnx import auto, cached_export  # noqa: E402
from diffews.modeling.onnx.attach import OnnxBackends  # noqa: E402
from diffews.utils.timing import interleaved_times  # noqa: E402


@pytest.fixture(scope="module")
def cache_root(tiny_model, tmp_path_factory):
    """A cache folder holding the tiny model's export at SIZE (made once, unchecked)."""
    root = str(tmp_path_factory.mktemp("auto_cache"))
    cached_export(tiny_model, root, SIZE, check=False)
    return root


def test_default_is_auto_and_tiny_parts_stay_torch(tiny_sd, tmp_path):
    from detectron2.modeling import build_model

    from diffews.checkpoint import load_inference_weights

    cfg = make_cfg(tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
                   "MODEL.DIFFEWS.ONNX_CACHE_DIR", str(tmp_path))
    assert cfg.MODEL.DIFFEWS.BACKEND == "auto"
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    # every part of the tiny model is under the FLOP gate: no export, nothing attached
    assert model.inference_backend is None
    assert not glob.glob(str(tmp_path / "onnx" / "*px-*"))
    (path,) = glob.glob(str(tmp_path / "onnx" / "auto" / f"{SIZE}px-*.json"))
    with open(path) as f:
        choice = json.load(f)
    assert choice["parts"] == {p: "torch" for p in auto.PARTS}
    assert all(0 < g < 1.0 for g in choice["gflop"].values()), choice["gflop"]
    assert choice["fingerprint"]["cores"] == os.cpu_count()


def _fake_times(winners):
    """interleaved_times stand-in: the named runtime of each part is 2x faster."""
    def fake(fns, reps, warmup=1, device=None):
        for fn in fns.values():
            fn()  # every variant still runs (so a broken graph fails the test)
        out = {}
        for name in fns:
            runtime, part = name.split(" ", 1)
            out[name] = [0.01 if winners[part] == runtime else 0.02] * reps
        return out
    return fake


def test_auto_choice_per_part_is_used_and_cached(tiny_model, cache_root, monkeypatch):
    winners = {"encode": "torch", "decode": "onnxruntime", "support_pass": "torch",
               "query_pass": "onnxruntime"}
    monkeypatch.setattr(auto, "interleaved_times", _fake_times(winners))
    backends = OnnxBackends(cache_root, auto=True, min_part_gflop=0.0)
    choice = backends.choose(tiny_model, SIZE)
    assert choice["parts"] == winners
    assert "2.00x" in choice["reason"]["decode"] and "0.50x" in choice["reason"]["encode"]
    assert backends.get(tiny_model, SIZE, "encode") is None
    assert backends.get(tiny_model, SIZE, "decode") is not None
    with pytest.raises(ValueError, match="unknown part"):
        backends.get(tiny_model, SIZE, "vae")

    # attached: masks of whole episodes agree with torch's (the mixed path crosses runtimes
    # twice: torch support set -> ORT query pass -> ORT decode)
    episodes = [make_episode(2, seed=40 + i) for i in range(2)]
    torch_masks = [r["pred_mask"] for r in tiny_model(episodes)]
    tiny_model.use_backend(backends)
    try:
        mixed = [r["pred_mask"] for r in tiny_model(episodes)]
    finally:
        tiny_model.use_backend(None)
    for a, b in zip(mixed, torch_masks):
        assert (a == b).float().mean() >= 0.999

    # another process on this host reads the cached choice instead of measuring
    def no_measure(*a, **k):
        raise AssertionError("measured again although the choice is cached")
    monkeypatch.setattr("diffews.modeling.onnx.attach.measure_choice", no_measure)
    assert OnnxBackends(cache_root, auto=True).choose(tiny_model, SIZE)["parts"] == winners
    # another host (here: another thread count in the fingerprint) measures again
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    with pytest.raises(AssertionError, match="measured again"):
        OnnxBackends(cache_root, auto=True).choose(tiny_model, SIZE)


def test_cached_choice_rejects_bad_files(tmp_path):
    path = tmp_path / "c.json"
    assert auto.cached_choice(str(path)) is None  # missing
    path.write_text("{not json")
    assert auto.cached_choice(str(path)) is None
    good = {"version": auto.CHOICE_VERSION, "parts": {p: "torch" for p in auto.PARTS}}
    path.write_text(json.dumps({**good, "parts": {"encode": "tensorflow"}}))
    assert auto.cached_choice(str(path)) is None
    path.write_text(json.dumps(good))
    assert auto.cached_choice(str(path))["parts"] == good["parts"]


def test_static_shape_sessions_fuse_and_agree(tiny_model, cache_root):
    from diffews.modeling.onnx.cache import export_folder
    from diffews.modeling.onnx.runtime import OnnxRuntimeBackend

    folder = export_folder(tiny_model, cache_root, SIZE)
    static = OnnxRuntimeBackend(folder)
    dynamic = OnnxRuntimeBackend(folder, static_shapes=False)
    dims = {"B": 1, "G": 1, "K": 2}
    # fixing the symbolic dims lets ORT's optimiser fold the shape arithmetic and fuse
    assert static.optimized_node_count("query_pass", dims) < \
        static.optimized_node_count("query_pass", None)
    ep = make_episode(2, seed=3)
    s = tiny_model.encode_supports(ep["support_images"], ep["support_masks"], use_cache=False)
    z = tiny_model.encode(tiny_model.normalize(ep["image"][None]), sample=False)
    torch.testing.assert_close(static.query_pass(z, s), dynamic.query_pass(z, s), atol=1e-5,
                               rtol=0)
    z2 = torch.cat([z, z.flip(-1)])
    static.query_pass(z2, s)  # another batch: its own session
    keys = [k for k in static._sessions if k[0] == "query_pass"]
    assert sorted(dict(k[1])["B"] for k in keys) == [1, 2]
    with pytest.raises(ValueError, match=r"query_latents: shape \(1, 4, 3, 3\), the export "
                                         r"expects \('B', 4, 8, 8\)"):
        static.query_pass(z[..., :3, :3], s)


def test_interleaved_times_rotate_the_order():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = interleaved_times(fns, reps=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())
