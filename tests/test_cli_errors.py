# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Bad inputs through the REAL command lines (issue 8, items 4 and 5): each case runs
``python tools/<tool>.py ...`` or ``python inference_fss/run_fss.py ...`` in a subprocess and checks
the exit status (2: command line or config, 1: files or data) and that stderr holds exactly one
``error:`` line naming the key or file, and no traceback.

Every subprocess imports torch, detectron2 and diffusers (several seconds), so the cases run
concurrently, once, in a module fixture; most of them fail before the model is built.
"""

import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from detectron2.modeling import build_model

from _fss_trees import write_fss_tree
from conftest import make_cfg
from diffews.modeling import save_release_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
TRAIN, RUN_FSS = "tools/train_net.py", "inference_fss/run_fss.py"
# a progress bar (tqdm: model loading, the evaluation loop) may share stderr with the error line
PROGRESS = re.compile(r"\d+%\|")


@pytest.fixture(scope="module")
def world(tiny_sd, tmp_path_factory):
    """Files the cases point at: good and broken weights, a half-written SD folder, dataset trees
    with corrupt images, a regular file to put output folders under."""
    d = tmp_path_factory.mktemp("cli")
    w = {"sd": tiny_sd, "d": str(d)}
    model = build_model(make_cfg(tiny_sd))
    save_release_unet(model.unet, str(d / "release" / "unet"))
    w["release"] = str(d / "release")
    shutil.copytree(d / "release", d / "truncated")
    weights = d / "truncated" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a partial download
    w["truncated"] = str(d / "truncated")
    torch.save({"model": model.state_dict()}, d / "model.pth")
    (d / "corrupt.pth").write_bytes((d / "model.pth").read_bytes()[:5000])
    w["corrupt_pth"] = str(d / "corrupt.pth")
    shutil.copytree(tiny_sd, d / "half_sd")
    os.remove(d / "half_sd" / "vae" / "config.json")
    w["half_sd"] = str(d / "half_sd")
    (d / "a_file").write_text("not a folder")
    w["file"] = str(d / "a_file")
    (d / "empty_root").mkdir()
    w["empty"] = str(d / "empty_root")
    write_fss_tree(str(d / "fss"))  # FSS-1000 with the first test image (episode 0) corrupt
    (d / "fss" / "FSS-1000" / "data" / "apple" / "1.jpg").write_bytes(b"not a jpeg")
    w["fss"] = str(d / "fss")
    write_fss_tree(str(d / "fss_trn"))  # every training image corrupt
    for cat in ("cat", "ant"):
        for i in range(1, 11):
            (d / "fss_trn" / "FSS-1000" / "data" / cat / f"{i}.jpg").write_bytes(b"")
    w["fss_trn"] = str(d / "fss_trn")
    (d / "bad.yaml").write_text(f'_BASE_: "{CFG}"\nMODEL:\n  DIFFEWS:\n    TRESHOLD: 0.3\n')
    w["bad_yaml"] = str(d / "bad.yaml")
    with open(d / "not_episodes.json", "wb") as f:
        pickle.dump({"x": 1}, f)
    w["not_episodes"] = str(d / "not_episodes.json")
    return w


def _fss(w, root, *extra):
    """run_fss on the FSS-1000 tree at ``root`` (its own split lists), 2 episodes; each command
    its own output folder (the cases run three at a time, and an output folder is one run's)."""
    tag = hashlib.sha1(repr(extra).encode()).hexdigest()[:8]
    return ([RUN_FSS, "--config-file", CFG, "--benchmark", "fss", "--num-episodes", "2",
             "--output", os.path.join(w["d"], f"out_{os.path.basename(root)}_{tag}"), *_sd(w),
             "MODEL.WEIGHTS", w["release"], *extra],
            {"DETECTRON2_DATASETS": root, "DIFFEWS_SPLITS": "tree"})


def _sd(w, sd=None):
    return ["MODEL.DIFFEWS.PRETRAINED", sd or w["sd"]]


def _train(w, *extra, out="out_train", flags=()):
    return [TRAIN, *flags, "--config-file", CFG, *_sd(w), "OUTPUT_DIR", os.path.join(w["d"], out),
            "VIS_PERIOD", "0", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1", *extra]


_TRAIN_FSS = ("DATASETS.TRAIN", "('fss1000_train',)", "DATASETS.TEST", "()")

# id: (argv/env builder, exit status, regex the error line must match)
CASES = {
    # ---- item 4: tools/train_net.py ----
    "train_missing_config": (lambda w: [TRAIN, "--config-file", "nope.yaml"], 2,
                             r"nope\.yaml: no such config file"),
    "train_unknown_key": (lambda w: _train(w, "MODEL.DIFFEWS.PRETRAIND", "x"), 2,
                          r"unknown config key MODEL\.DIFFEWS\.PRETRAIND; did you mean "
                          r"MODEL\.DIFFEWS\.PRETRAINED\?"),
    "train_unknown_key_in_yaml": (lambda w: [TRAIN, "--config-file", w["bad_yaml"]], 2,
                                  r"bad\.yaml: unknown config key MODEL\.DIFFEWS\.TRESHOLD; did "
                                  r"you mean MODEL\.DIFFEWS\.\w+_THRESHOLD\?"),
    "train_eval_without_weights": (lambda w: _train(w, out="out_eval", flags=["--eval-only"]), 2,
                                   r"MODEL\.WEIGHTS is empty.*ALLOW_UNTRAINED True"),
    "train_half_written_pretrained": (lambda w: _train(w, *_sd(w, w["half_sd"])), 1,
                                      r"half_sd/vae: no config\.json .*half-written"),
    "train_image_size_not_multiple": (lambda w: _train(w, "INPUT.IMAGE_SIZE", "60"), 2,
                                      r"INPUT\.IMAGE_SIZE 60 is not a multiple of the model's "
                                      r"stride 16 .*use e\.g\. 48 or 64"),
    "train_output_unwritable": (lambda w: _train(w, "OUTPUT_DIR", os.path.join(w["file"], "o")),
                                1, r"a_file/o: cannot create the output folder.*OUTPUT_DIR"),
    "train_missing_dataset_tree": (
        lambda w: (_train(w, "DATASETS.TRAIN", "('coco20i_fold0_train',)"),
                   {"DETECTRON2_DATASETS": w["empty"]}),
        1, r"empty_root/COCO2014/\S+: .*not found .*datasets/README\.md \(section \"COCO-20i\"\)"),
    # ---- item 4: inference_fss/run_fss.py ----
    "fss_fold_out_of_range": (lambda w: [RUN_FSS, "--config-file", CFG, "--benchmark", "coco",
                                         "--fold", "5"], 2, r"--fold 5: coco has folds 0\.\.3"),
    "fss_shot_zero": (lambda w: [RUN_FSS, "--config-file", CFG, "--benchmark", "pascal",
                                 "--shot", "0"], 2, r"--shot must be >= 1, got 0"),
    "fss_missing_dataset_tree": (lambda w: _fss(w, w["empty"]), 1,
                                 r"empty_root/FSS-1000/splits/test\.txt: .*not found.*"
                                 r"datasets/README\.md \(section \"FSS-1000\"\)"),
    "fss_missing_pretrained": (lambda w: _fss(w, w["fss"], *_sd(w, "/nonexistent/sd21")), 1,
                               r"/nonexistent/sd21: MODEL\.DIFFEWS\.PRETRAINED folder not found"),
    "fss_missing_weights": (lambda w: _fss(w, w["fss"], "MODEL.WEIGHTS", "/nonexistent/w{fold}"),
                            1, r"MODEL\.WEIGHTS: /nonexistent/w0 does not exist"),
    "fss_truncated_safetensors": (lambda w: _fss(w, w["fss"], "MODEL.WEIGHTS", w["truncated"]), 1,
                                  r"truncated/unet/diffusion_pytorch_model\.safetensors: not a "
                                  r"readable safetensors weights file"),
    "fss_corrupt_pth": (lambda w: _fss(w, w["fss"], "MODEL.WEIGHTS", w["corrupt_pth"]), 1,
                        r"corrupt\.pth: not a readable checkpoint \(a zip archive without its "
                        r"directory\).*truncated or corrupt"),
    "fss_output_unwritable": (lambda w: [RUN_FSS, "--config-file", CFG, "--benchmark", "fss",
                                         "--output", os.path.join(w["file"], "out")], 1,
                              r"a_file/out: cannot create the output folder.*--output"),
    # ---- item 5: bad data through run_fss and train_net ----
    "fss_corrupt_image_stops": (lambda w: _fss(w, w["fss"]), 1,
                                r"FSS-1000/data/apple/1\.jpg: not a readable image .*episode 0 of "
                                r"fss1000_test.*DATALOADER\.SKIP_BAD_SAMPLES True"),
    "fss_too_many_bad_episodes": (
        lambda w: _fss(w, w["fss"], "DATALOADER.SKIP_BAD_SAMPLES", "True",
                       "DATALOADER.MAX_BAD_FRACTION", "0.1"),
        1, r"fss1000_test: 1 of 2 episodes have a bad image or label, more than "
           r"DATALOADER\.MAX_BAD_FRACTION 0\.1 allows; first: .*apple/1\.jpg"),
    "train_corrupt_image_stops": (lambda w: (_train(w, *_TRAIN_FSS, out="out_bad"),
                                             {"DETECTRON2_DATASETS": w["fss_trn"],
                                              "DIFFEWS_SPLITS": "tree"}), 1,
                                  r"FSS-1000/data/(cat|ant)/\d+\.jpg: not a readable image.*"
                                  r"DATALOADER\.SKIP_BAD_SAMPLES True"),
    "train_too_many_bad_images": (
        lambda w: (_train(w, *_TRAIN_FSS, "DATALOADER.SKIP_BAD_SAMPLES", "True", out="out_bad2"),
                   {"DETECTRON2_DATASETS": w["fss_trn"], "DIFFEWS_SPLITS": "tree"}),
        1, r"1 of 20 training images are bad, more than DATALOADER\.MAX_BAD_FRACTION 0\.01 "
           r"allows.*FSS-1000/data/(cat|ant)/\d+\.jpg"),
    # ---- item 4: the other tools ----
    "make_episodes_missing_lvis": (lambda w: ["tools/make_episodes.py", "--benchmark", "lvis",
                                              "--dataset-root", w["empty"], "--output",
                                              os.path.join(w["d"], "lvis.json")], 1,
                                   r"empty_root/LVIS/lvis_val\.pkl: LVIS-92i annotation pickle "
                                   r"not found.*\(section \"LVIS-92i\"\)"),
    "check_datasets_missing_root": (lambda w: ["tools/check_datasets.py", "--dataset-root",
                                               os.path.join(w["d"], "no_root")], 1,
                                    r"no_root: the datasets root does not exist"),
    "export_unknown_key_with_opts": (lambda w: ["tools/export_unet.py", "--config-file", CFG,
                                                "--weights", "x.pth", "--output", w["d"],
                                                "--opts", "MODEL.DIFFEWS.TIMESTEPS", "1"], 2,
                                     r"unknown config key MODEL\.DIFFEWS\.TIMESTEPS; did you mean "
                                     r"MODEL\.DIFFEWS\.TIMESTEP\?"),
}


def _run(w, builder):
    spec = builder(w)
    argv, extra = spec if isinstance(spec, tuple) else (spec, {})
    env = {k: v for k, v in os.environ.items()
           if k not in ("DETECTRON2_DATASETS", "DIFFEWS_SPLITS")}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def results(world, request):
    """Run the selected cases (all, unless -k deselects some) three at a time."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_one_line_error_and_exit_status"}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run, world, CASES[name][0]) for name in sorted(selected)}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_one_line_error_and_exit_status(results, name):
    _, status, pattern = CASES[name]
    proc = results[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    context = f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, context
    assert len(errors) == 1, context
    others = [line for line in lines if not line.startswith("error:")]
    assert all(PROGRESS.search(line) for line in others), context  # only progress bars besides
    assert proc.returncode == status, context
    assert re.search(pattern, errors[0]), f"{errors[0]!r} does not match {pattern!r}"


# ---- the same machinery in-process (cheap): cases that need no subprocess of their own ----
def _entry_point(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_" + os.path.basename(path)[:-3],
                                                  os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# every entry point that reads a config, with the least it needs to get that far
CONFIG_READERS = {
    TRAIN: ["--config-file", CFG], RUN_FSS: ["--config-file", CFG, "--benchmark", "synthetic"],
    "inference_fss/run_incontext.py": ["--config-file", CFG, "--benchmarks", "synthetic"],
    "inference_fsod/run_fsod.py": ["--config-file", CFG],
    "inference_vos/run_vos.py": ["--config-file", CFG],
    "tools/demo.py": ["--config-file", CFG, "--support", "s.jpg", "s.png", "--query", "q.jpg"],
    "tools/export_unet.py": ["--config-file", CFG, "--weights", "w.pth"],
    "tools/benchmark.py": ["--config-file", CFG], "tools/quickstart.py": [],
}


@pytest.mark.parametrize("path", sorted(CONFIG_READERS))
def test_every_config_reader_names_a_misspelt_override(path, tmp_path, capsys, monkeypatch):
    """Each entry point, given a misspelt trailing key, returns 2 with one line naming the key
    and the closest valid one, before anything is built or written."""
    module = _entry_point(path)
    if hasattr(module, "setup_logger"):  # its handlers would outlive this test's capture
        monkeypatch.setattr(module, "setup_logger", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)  # default output folders land here, if anything is written
    status = module.cli(CONFIG_READERS[path] + ["MODEL.DIFFEWS.PRETRAIND", "/x"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and err == ["error: config override: unknown config key "
                                   "MODEL.DIFFEWS.PRETRAIND; did you mean "
                                   "MODEL.DIFFEWS.PRETRAINED? (every DiffewS key is listed in "
                                   "diffews/config.py)"], err
    assert os.listdir(tmp_path) == []



def test_debug_shows_the_traceback(capsys):
    from diffews.cli import UsageError, run_cli

    def fail():
        raise UsageError("x.yaml: no such config file")

    assert run_cli(fail, debug=False) == 2
    assert capsys.readouterr().err == "error: x.yaml: no such config file\n"
    assert run_cli(fail, debug=True) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("error: x.yaml: no such "
                                                                        "config file\n")


def test_config_override_errors(tiny_sd):
    from diffews.cli import UsageError, load_config_checked

    cfg = load_config_checked(CFG, ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.DIFFEWS.PRETRAINED == tiny_sd
    with pytest.raises(UsageError, match="KEY VALUE pairs; got 1 items ending with 'SOLVER"):
        load_config_checked(CFG, ["SOLVER.BASE_LR"])
    with pytest.raises(UsageError, match="option --resume comes after the config overrides"):
        load_config_checked(CFG, ["SOLVER.BASE_LR", "0.1", "--resume", "x"])
    with pytest.raises(UsageError, match="did you mean SOLVER.MAX_ITER"):
        load_config_checked(CFG, ["SOLVER.MAXITER", "3"])
    with pytest.raises(UsageError, match="config override: .*SOLVER.MAX_ITER"):
        load_config_checked(CFG, ["SOLVER.MAX_ITER", "many"])


def test_opts_flag_and_trailing_pairs_are_one_style(capsys):
    from diffews.cli import OneLineArgumentParser, add_common_arguments, config_overrides

    parser = add_common_arguments(OneLineArgumentParser(prog="t"), opts_flag=True)
    trailing = parser.parse_args(["A", "1", "B", "2"])
    flag = parser.parse_args(["--opts", "A", "1", "B", "2"])
    assert config_overrides(trailing) == config_overrides(flag) == ["A", "1", "B", "2"]
    assert capsys.readouterr().out == ""  # --opts is a plain equivalent: no note, no warning
    assert "same as trailing KEY VALUE pairs" in parser.format_help()


def test_argparse_errors_are_one_line(capsys):
    sys.path.insert(0, os.path.join(ROOT, "inference_fss"))
    import run_fss

    with pytest.raises(SystemExit) as e:
        run_fss.parse_args(["--config-file", CFG, "--benchmark", "coco", "--fold", "first"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --fold must be a fold index or 'all'")


def test_make_episodes_refuses_to_overwrite_a_foreign_file(world, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_episodes

    assert make_episodes.main(["--benchmark", "coco", "--output", world["not_episodes"]]) == 2
    assert "exists and is not an episode file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_episodes.main(["--benchmark", "coco", "--shot", "0", "--output", "x.json"])
    assert capsys.readouterr().err.startswith("error: --shot must be >= 1, got 0")


def test_format_error_unwraps_worker_exceptions():
    from diffews.cli import format_error

    wrapped = ValueError("Caught BadSampleError in DataLoader worker process 0.\nOriginal "
                         "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                         "diffews.data.records.BadSampleError: /d/COCO2014/a.jpg: no such file\n")
    assert format_error(wrapped) == "/d/COCO2014/a.jpg: no such file"
    assert format_error(KeyError("missing key 'x'")) == "missing key 'x'"
    assert format_error(ZeroDivisionError("boom")).startswith("ZeroDivisionError: boom")
