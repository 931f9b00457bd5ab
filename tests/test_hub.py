# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Hub ids (hf://, modelscope://) in MODEL.WEIGHTS, MODEL.DIFFEWS.PRETRAINED and from_pretrained,
against a Hugging Face cache written here in the layout huggingface_hub reads
(``models--ORG--NAME/{blobs,refs,snapshots}``), with HF_HUB_OFFLINE=1: no network."""

import hashlib
import os
import sys
import types

import pytest
import torch

from conftest import SIZE, perturbed_model

from diffews.utils.hub import HubError, HubIdError, HubLibraryError, resolve_hub_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(ROOT, "configs", "Base-DiffewS.yaml")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def write_hf_snapshot(cache, repo_id, files, commit=COMMIT, refs=("main",)):
    """Put ``files`` ({relative path: bytes}) in the cache as huggingface_hub does: each content
    once under blobs/<sha256>, the snapshot's files as relative symlinks to it, and refs/<name>
    holding the commit. Returns the snapshot folder."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    for rel, data in files.items():
        blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        link = os.path.join(snapshot, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)
    return snapshot


def folder_files(folder, prefix=""):
    """{prefix/relative path: bytes} of every file under ``folder``."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            with open(path, "rb") as f:
                out[f"{prefix}{rel}"] = f.read()
    return out


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = str(tmp_path / "hf_home" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_id_resolves_to_the_snapshot_folder(hf_cache):
    write_hf_snapshot(hf_cache, "org/name", {"config.json": b"{}"})
    expected = os.path.join(hf_cache, "models--org--name", "snapshots", COMMIT)
    got = resolve_hub_path("hf://org/name", "MODEL.WEIGHTS")
    assert os.path.realpath(got) == os.path.realpath(expected)
    with open(os.path.join(got, "config.json"), "rb") as f:
        assert f.read() == b"{}"


def test_subfolder_and_revision_are_honoured(hf_cache):
    write_hf_snapshot(hf_cache, "zzzmmz/Diffews", {"weight/coco_fold0/unet/config.json": b"fold0",
                                                   "weight/coco_fold1/unet/config.json": b"fold1"})
    write_hf_snapshot(hf_cache, "zzzmmz/Diffews", {"weight/coco_fold0/unet/config.json": b"v1"},
                      commit=OTHER_COMMIT, refs=("v1",))
    snapshots = os.path.join(hf_cache, "models--zzzmmz--Diffews", "snapshots")
    cases = {"hf://zzzmmz/Diffews/weight/coco_fold1": (COMMIT, "coco_fold1", b"fold1"),
             "hf://zzzmmz/Diffews/weight/coco_fold0/": (COMMIT, "coco_fold0", b"fold0"),
             "hf://zzzmmz/Diffews/weight/coco_fold0@v1": (OTHER_COMMIT, "coco_fold0", b"v1"),
             f"hf://zzzmmz/Diffews/weight/coco_fold0@{OTHER_COMMIT}": (OTHER_COMMIT, "coco_fold0",
                                                                     b"v1")}
    for hub_id, (commit, fold, content) in cases.items():
        got = resolve_hub_path(hub_id)
        assert got == os.path.join(snapshots, commit, "weight", fold), hub_id
        with open(os.path.join(got, "unet", "config.json"), "rb") as f:
            assert f.read() == content, hub_id


@pytest.mark.parametrize("hub_id,what", [
    ("hf://org/missing", "repository not cached"),
    ("hf://org/name/weight/coco_fold9", "subfolder not in the snapshot"),
    ("hf://org/name@v2", "revision not cached"),
])
def test_missing_id_is_one_line_naming_id_and_cache(hf_cache, hub_id, what):
    write_hf_snapshot(hf_cache, "org/name", {"weight/coco_fold0/config.json": b"{}"})
    with pytest.raises(HubError) as info:
        resolve_hub_path(hub_id, "MODEL.WEIGHTS")
    message = str(info.value)
    assert isinstance(info.value, OSError), what  # the CLI's exit status 1 (files)
    assert "\n" not in message, what
    assert message.startswith("MODEL.WEIGHTS: "), what
    assert hub_id in message and hf_cache in message, (what, message)


def test_missing_id_through_the_cli_exits_1_with_one_line(hf_cache, capsys):
    from diffews.cli import load_config_checked, run_cli

    status = run_cli(lambda: load_config_checked(
        BASE_CONFIG, ["MODEL.DIFFEWS.PRETRAINED", "hf://org/absent-sd"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("error: MODEL.DIFFEWS.PRETRAINED: ")
    assert "hf://org/absent-sd" in err[0] and hf_cache in err[0]


def test_local_path_is_never_treated_as_an_id(hf_cache, tmp_path, monkeypatch):
    # nothing for these ids is in the cache: any hub look-up would raise HubError
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.join("hf:", "org", "local"))  # "hf://org/local" names this folder
    assert resolve_hub_path("hf://org/local") == "hf://org/local"
    for plain in ("weight/coco_fold0", "zzzmmz/Diffews", "", "models/stable-diffusion-2-1"):
        assert resolve_hub_path(plain) == plain  # plain paths, existing or not, pass unchanged
    assert resolve_hub_path(None) is None


@pytest.mark.parametrize("bad", ["hf://onlyorg", "hf://org/na me", "hf://org/name/../x",
                                 "modelscope://org", "hf://org/name@"])
def test_malformed_id_is_a_config_error(hf_cache, bad):
    with pytest.raises(HubIdError, match="MODEL.WEIGHTS: ") as info:
        resolve_hub_path(bad, "MODEL.WEIGHTS")
    assert isinstance(info.value, ValueError) and bad in str(info.value)


def test_modelscope_without_its_library_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import modelscope -> ImportError
    with pytest.raises(HubLibraryError) as info:
        resolve_hub_path("modelscope://zzzmmz/Diffews/weight/coco_fold0", "MODEL.WEIGHTS")
    message = str(info.value)
    assert "\n" not in message and "pip install modelscope" in message
    assert "modelscope://zzzmmz/Diffews/weight/coco_fold0" in message


def _fake_modelscope(monkeypatch, snapshot, calls, error=None):
    def snapshot_download(model_id, revision=None, cache_dir=None, allow_patterns=None,
                          local_files_only=False):
        calls.append({"model_id": model_id, "revision": revision,
                      "allow_patterns": allow_patterns})
        if error:
            raise error
        return snapshot

    mods = {name: types.ModuleType(name) for name in
            ("modelscope", "modelscope.hub", "modelscope.hub.snapshot_download")}
    mods["modelscope.hub.snapshot_download"].snapshot_download = snapshot_download
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def test_modelscope_id_goes_through_its_library(tmp_path, monkeypatch):
    snapshot = tmp_path / "ms_cache" / "zzzmmz" / "Diffews"
    (snapshot / "weight" / "incontext" / "unet").mkdir(parents=True)
    calls = []
    _fake_modelscope(monkeypatch, str(snapshot), calls)
    got = resolve_hub_path("modelscope://zzzmmz/Diffews/weight/incontext", "MODEL.WEIGHTS")
    assert got == str(snapshot / "weight" / "incontext")
    assert calls == [{"model_id": "zzzmmz/Diffews", "revision": None,
                      "allow_patterns": ["weight/incontext/*"]}]

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms_cache"))
    _fake_modelscope(monkeypatch, None, calls, error=ConnectionError("no route to host"))
    with pytest.raises(HubError) as info:
        resolve_hub_path("modelscope://zzzmmz/Diffews/weight/incontext", "MODEL.WEIGHTS")
    message = str(info.value)
    assert "modelscope://zzzmmz/Diffews/weight/incontext" in message
    assert str(tmp_path / "ms_cache") in message and "no route to host" in message


# -- end to end: the tiny SD and two "released" folds in the fake cache ------------------------

@pytest.fixture(scope="module")
def folds(tiny_sd):
    """Two tiny DiffewS models with different UNets (``coco_fold0``, ``coco_fold1``)."""
    return [perturbed_model(tiny_sd, seed=s, episode_seed=3)[0] for s in (11, 12)]


@pytest.fixture
def filled_cache(hf_cache, tiny_sd, folds, tmp_path):
    from diffews.modeling import save_release_unet

    write_hf_snapshot(hf_cache, "org/tiny-sd", folder_files(tiny_sd))
    files = {}
    for k, model in enumerate(folds):
        folder = tmp_path / f"release_fold{k}"
        save_release_unet(model.unet, str(folder / "unet"))
        files.update(folder_files(str(folder), prefix=f"weight/coco_fold{k}/"))
    write_hf_snapshot(hf_cache, "org/diffews", files)
    return hf_cache


def _unet_equal(model, reference):
    ref = reference.unet.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in model.unet.state_dict().items())


def test_load_config_resolves_both_keys_and_the_model_loads_from_the_cache(filled_cache, folds):
    from diffews.config import build_config
    from diffews.predictor import DiffewSPredictor

    cfg = build_config(BASE_CONFIG, ["MODEL.DIFFEWS.PRETRAINED", "hf://org/tiny-sd",
                                    "MODEL.WEIGHTS", "hf://org/diffews/weight/coco_fold1",
                                    "INPUT.IMAGE_SIZE", SIZE, "MODEL.DEVICE", "cpu"])
    snapshots = os.path.join(filled_cache, "models--org--{}", "snapshots", COMMIT)
    assert cfg.MODEL.DIFFEWS.PRETRAINED == snapshots.format("tiny-sd")
    assert cfg.MODEL.WEIGHTS == os.path.join(snapshots.format("diffews"), "weight", "coco_fold1")
    predictor = DiffewSPredictor.from_config(cfg)
    assert _unet_equal(predictor.model, folds[1]) and not _unet_equal(predictor.model, folds[0])


def test_from_pretrained_takes_hub_ids(filled_cache, folds):
    from diffews.predictor import DiffewSPredictor

    predictor = DiffewSPredictor.from_pretrained("hf://org/tiny-sd",
                                                 "hf://org/diffews/weight/coco_fold0",
                                                 device="cpu", image_size=SIZE)
    assert _unet_equal(predictor.model, folds[0]) and not _unet_equal(predictor.model, folds[1])


def test_fold_template_resolves_per_fold_at_check_and_load(filled_cache, folds):
    """run_fss.py makes each fold's weights with ``fold_weights`` ({fold} substituted, the hub id
    resolved to the snapshot's folder, once), then checks (preflight) and loads that folder."""
    from detectron2.modeling import build_model

    from diffews.checkpoint import load_inference_weights
    from diffews.cli.preflight import check_weights
    from diffews.config import build_config, fold_weights

    template = "hf://org/diffews/weight/coco_fold{fold}"
    cfg = build_config(BASE_CONFIG, ["MODEL.DIFFEWS.PRETRAINED", "hf://org/tiny-sd",
                                    "MODEL.WEIGHTS", template, "INPUT.IMAGE_SIZE", SIZE,
                                    "MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.WEIGHTS == template  # left for its fold
    model = build_model(cfg).eval()
    for fold in (1, 0):
        weights = fold_weights(cfg, fold)
        assert os.path.isdir(weights) and weights.endswith("coco_fold%d" % fold)
        check_weights(weights, allow_untrained=False)
        fold_cfg = cfg.clone()
        fold_cfg.MODEL.WEIGHTS = weights
        load_inference_weights(model, fold_cfg)
        assert _unet_equal(model, folds[fold]) and not _unet_equal(model, folds[1 - fold])
    with pytest.raises(HubError, match="coco_fold7"):
        fold_weights(cfg, 7)


def test_run_fss_takes_a_per_fold_hub_id(filled_cache, tmp_path):
    """The command line end to end: MODEL.WEIGHTS with {fold} as a hub id gives the scores of
    the same weights given as a local folder; a fold missing from the snapshot exits 1."""
    import json

    sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
    import run_fss

    config = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
    local = os.path.join(filled_cache, "models--org--diffews", "snapshots", COMMIT, "weight",
                         "coco_fold0")

    def run(out, weights):
        return run_fss.cli(["--config-file", config, "--benchmark", "synthetic", "--shot", "1",
                            "--num-episodes", "3", "--output", str(tmp_path / out),
                            "MODEL.DIFFEWS.PRETRAINED", "hf://org/tiny-sd", "INPUT.IMAGE_SIZE",
                            str(SIZE), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights])

    def mean(out):
        with open(tmp_path / out / "results.json") as f:
            return json.load(f)["mean"]

    assert run("hub", "hf://org/diffews/weight/coco_fold{fold}") == 0  # synthetic: fold 0
    assert run("local", local) == 0
    assert mean("hub") == mean("local")
    assert run("missing", "hf://org/diffews/weight/fold{fold}") == 1
