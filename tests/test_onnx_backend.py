# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The ONNX export and the ONNX Runtime backend on the tiny model, against the torch model."""

import json
import logging
import os
import shutil
import sys

import pytest
import torch
from conftest import SIZE, make_cfg, make_episode

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffews.modeling.onnx import (OnnxExportError, OnnxRuntimeBackend,  # noqa: E402
                                   cached_export, export_model)
from diffews.modeling.onnx.cache import export_folder, stale_reason  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tiny_model, tmp_path_factory):
    return cached_export(tiny_model, str(tmp_path_factory.mktemp("weights")), SIZE)


@pytest.fixture(scope="module")
def backend(tiny_model, export_dir):
    return OnnxRuntimeBackend(export_dir, model=tiny_model, image_size=SIZE)


def _fresh_model(tiny_sd):
    from detectron2.modeling import build_model

    return build_model(make_cfg(tiny_sd)).eval()


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_export_check_and_manifest(export_dir, tiny_model):
    with open(os.path.join(export_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["opset"] == 17 and manifest["image_size"] == SIZE
    assert manifest["signature"] == tiny_model.support_signature()
    assert manifest["layers"] == list(tiny_model.fused_layers)
    assert set(manifest["versions"]) == {"torch", "diffusers", "onnx", "onnxruntime"}
    # every graph agrees with the torch model's own methods on random inputs
    for name, diff in manifest["check"].items():
        assert diff < (1e-4 if name != "vae_decoder_uint8" else 1.5), (name, diff)


def _torch_episodes(model, episodes):
    return torch.stack([r["pred_image"] for r in model.inference(episodes)])


def _ort_episodes(model, backend, episodes):
    sets = [backend.encode_supports(e["support_images"], e["support_masks"]) for e in episodes]
    query = torch.stack([e["image"] for e in episodes])
    pred = backend.query_pass(backend.encode(model.normalize(query)), sets)
    return backend.decode(-pred)


@pytest.mark.parametrize("shots", [1, 3])
def test_masks_agree_with_torch(tiny_model, backend, shots):
    episodes = [make_episode(shots, seed=10 * shots + i) for i in range(2)]  # batch 2
    torch_images = _torch_episodes(tiny_model, episodes)
    ort_images = _ort_episodes(tiny_model, backend, episodes)
    assert ort_images.shape == torch_images.shape and ort_images.dtype == torch.uint8
    agree = (tiny_model.threshold(ort_images) == tiny_model.threshold(torch_images)).float().mean()
    assert agree >= 0.999, float(agree)


def test_support_sets_cross_backends(tiny_model, backend):
    ep = make_episode(3, seed=7)
    sig = tiny_model.support_signature()
    torch_set = tiny_model.encode_supports(ep["support_images"], ep["support_masks"],
                                           signature=sig, use_cache=False)
    ort_set = backend.encode_supports(ep["support_images"], ep["support_masks"],
                                      signature=backend.signature)
    ort_set.check_compatible(sig)  # the ORT set carries the torch model's signature
    assert ort_set.layers == torch_set.layers
    torch.testing.assert_close(ort_set.latents, torch_set.latents, atol=1e-5, rtol=0)
    for name in torch_set.layers:
        torch.testing.assert_close(ort_set.keys[name], torch_set.keys[name], atol=1e-4, rtol=0)
    z = tiny_model.encode(tiny_model.normalize(torch.stack([ep["image"], ep["image"].flip(-1)])),
                          sample=False)
    prompt = tiny_model.prompt_embeds_test
    reference = tiny_model.query_pass(z, torch_set, prompt)
    # a torch set feeds the ORT query graph, an ORT set the torch query pass; shared by batch 2
    torch.testing.assert_close(backend.query_pass(z, torch_set), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(tiny_model.query_pass(z, ort_set, prompt), reference,
                               atol=1e-4, rtol=0)
    # one set per query, with different supports
    rows = [torch_set[[0, 1]], ort_set[[2, 0]]]
    torch.testing.assert_close(backend.query_pass(z, rows), tiny_model.query_pass(z, rows, prompt),
                               atol=1e-4, rtol=0)
    # a list holds one set per query, in both backends
    for run in (lambda: tiny_model.query_pass(z, rows[:1], prompt),
                lambda: backend.query_pass(z, rows[:1])):
        with pytest.raises(ValueError, match="1 SupportSets for a batch of 2"):
            run()


def test_support_graph_is_pruned(tiny_model, export_dir, tmp_path):
    import onnx

    class FullSupportPass(torch.nn.Module):
        # the support pass through the whole UNet (stop_early=False), exported for comparison
        def __init__(self):
            super().__init__()
            self.model = tiny_model

        def forward(self, latents):
            return self.model.support_pass(latents, self.model.prompt_embeds_test)[1]

    latents = torch.randn(2, 8, SIZE // 8, SIZE // 8)
    full = str(tmp_path / "full.onnx")
    with torch.no_grad():
        # the same dynamic batch as the export, so that both hold the same shape arithmetic
        torch.onnx.export(FullSupportPass(), (latents,), full, opset_version=17, dynamo=False,
                          input_names=["latents"], dynamic_axes={"latents": {0: "N"}})
    full_nodes = onnx.load(full).graph.node
    pruned_nodes = onnx.load(os.path.join(export_dir, "support_pass.onnx")).graph.node
    assert len(pruned_nodes) < len(full_nodes)

    def compute(nodes):
        return sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in nodes)

    assert compute(pruned_nodes) < compute(full_nodes)
    # nothing after the last fused self-attention: its cross-attention, the rest of the last
    # up block and the output conv are absent
    last = "/" + tiny_model.fused_layers[-1].replace(".", "/")
    late = [n.name for n in pruned_nodes
            if "conv_out" in n.name or (last.rsplit("/", 1)[0] + "/attn2") in n.name]
    assert not late, late[:5]
    assert any("conv_out" in n.name for n in full_nodes)


def test_stale_export_is_rebuilt(tiny_sd, export_dir, tmp_path, caplog):
    model = _fresh_model(tiny_sd)
    root = tmp_path / "weights"
    # the module's export, copied where this model's cache looks (same signature and size)
    folder = export_folder(model, str(root), SIZE)
    shutil.copytree(export_dir, folder)
    assert cached_export(model, str(root), SIZE, check=False) == folder  # up to date: used
    # weights the signature's fingerprint does not cover (the VAE decoder) change
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.add_(0.5)
    with pytest.raises(OnnxExportError) as err:
        OnnxRuntimeBackend(folder, model=model)
    assert "weights_digest" in _one_line(err)
    caplog.set_level(logging.WARNING, logger="diffews.modeling.onnx.cache")
    assert cached_export(model, str(root), SIZE, check=False) == folder
    assert any("stale" in r.getMessage() for r in caplog.records)
    z = torch.randn(1, 4, SIZE // 8, SIZE // 8)
    rebuilt = OnnxRuntimeBackend(folder, model=model)
    torch.testing.assert_close(rebuilt.decode_float(z),
                               model.vae.decode(z / model.latent_scale).sample, atol=1e-4, rtol=0)
    # another size: an export found under the 128 px key but made for 64 px is stale (the
    # rebuild itself is the path exercised above)
    big = export_folder(model, str(root), 2 * SIZE)
    assert big != folder
    shutil.copytree(folder, big)
    assert "64 px" in stale_reason(big, model, 2 * SIZE)
    assert stale_reason(folder, model, SIZE) == ""

def test_other_model_refused(tiny_sd, export_dir):
    model = _fresh_model(tiny_sd)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.01)
    with pytest.raises(OnnxExportError) as err:
        OnnxRuntimeBackend(export_dir, model=model)
    assert "weights" in _one_line(err)
    with pytest.raises(OnnxExportError) as err:
        OnnxRuntimeBackend(export_dir, image_size=2 * SIZE)
    assert "128" in _one_line(err)


def test_missing_export_file(export_dir, tmp_path):
    folder = str(tmp_path / "export")
    shutil.copytree(export_dir, folder)
    os.remove(os.path.join(folder, "query_pass.onnx"))
    with pytest.raises(OnnxExportError) as err:
        OnnxRuntimeBackend(folder)
    assert "query_pass.onnx" in _one_line(err) and "missing" in str(err.value)
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(OnnxExportError) as err:
        OnnxRuntimeBackend(folder)
    assert "manifest.json" in _one_line(err)


def test_missing_onnxruntime(export_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError) as err:
        OnnxRuntimeBackend(export_dir)
    assert "pip install" in _one_line(err) and "onnxruntime" in str(err.value)


def test_export_refuses_non_float32(tiny_sd, tmp_path):
    from diffews.modeling.speed import set_inference_dtype

    model = _fresh_model(tiny_sd)
    set_inference_dtype(model, "bfloat16")
    with pytest.raises(OnnxExportError, match="float32"):
        export_model(model, str(tmp_path / "x"), SIZE, check=False)
