# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One run at a time per output folder in every journalled entry point (issue 29 item 9): while
another run holds the folder's lock, tools/autolabel.py, run_fss.py, run_incontext.py,
run_fsod.py and run_vos.py are refused with one line naming it (pid, host, command), and
``--overwrite`` deletes nothing; with --num-gpus 2 the refusal comes before any process is
spawned. The holder is this test process (``flock`` locks an open file, not a process: a second
open of the same file is refused as another process's would be)."""

import importlib.util
import os
import socket
import time

import pytest

from _autolabel_trees import write_autolabel_tree
from conftest import SIZE
from diffews.utils.lock import LOCK_FILE, OutputLock
from tests._vos_trees import write_davis_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = "python tools/autolabel.py --output first-run"


def _script(rel: str):
    """An entry point as a module (the same file the command runs)."""
    spec = importlib.util.spec_from_file_location(
        "lock_" + os.path.basename(rel)[:-3], os.path.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(tiny_sd):
    return ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", str(SIZE), "MODEL.DEVICE",
            "cpu", "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True", "DATALOADER.NUM_WORKERS", "0"]


def _earlier_run(out) -> dict:
    """An output folder with an earlier run's files: {relative path: bytes}."""
    files = {"journal/journal.json": b'{"format": "diffews.journal"}',
             "journal/shards/a.json": b'{"key": "a", "value": 1}',
             "results.json": b'{"mIoU": 1}', "annotations.json": b"{}",
             "masks/x.jpg.png": b"png", "support_sets/apple.pt": b"pt"}
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        with open(os.path.join(out, rel), "wb") as f:
            f.write(data)
    return files


def _files(out) -> dict:
    found = {}
    for base, _, names in os.walk(out):
        for n in names:
            with open(os.path.join(base, n), "rb") as f:
                found[os.path.relpath(os.path.join(base, n), out)] = f.read()
    return found


def _commands(tiny_sd, tmp):
    tree = write_autolabel_tree(os.path.join(tmp, "label_tree"), classes=("apple",), shots=1,
                                per_class=1, corrupt=False)
    vos_root = os.path.join(tmp, "vos_tree")
    write_davis_tree(vos_root)
    base = os.path.join(ROOT, "configs")
    return {
        "autolabel": ("tools/autolabel.py", [
            "--config-file", os.path.join(base, "Base-DiffewS.yaml"), "--supports",
            tree["supports"], "--images", tree["images"]]),
        "run_fss": ("inference_fss/run_fss.py", [
            "--config-file", os.path.join(base, "Base-DiffewS.yaml"), "--benchmark", "coco",
            "--fold", "0"]),
        "run_incontext": ("inference_fss/run_incontext.py", [
            "--config-file", os.path.join(base, "incontext", "diffews_sd21_incontext.yaml")]),
        "run_fsod": ("inference_fsod/run_fsod.py", [
            "--config-file",
            os.path.join(base, "fsod", "coco", "diffews_sd21_fsod_coco_1shot.yaml")]),
        "run_vos": ("inference_vos/run_vos.py", [
            "--config-file", os.path.join(base, "vos", "Base-DAVIS17.yaml"), "--dataset-root",
            vos_root, "--dataset", "davis17_val"]),
    }


@pytest.fixture(scope="module")
def commands(tiny_sd, tmp_path_factory):
    return _commands(tiny_sd, str(tmp_path_factory.mktemp("lock_runs")))


@pytest.mark.parametrize("name", ["autolabel", "run_fss", "run_incontext", "run_fsod",
                                  "run_vos"])
def test_second_run_refused_and_overwrite_deletes_nothing(name, commands, tiny_sd, tmp_path,
                                                          capsys):
    script, args = commands[name]
    module = _script(script)
    out = str(tmp_path / "out")
    files = _earlier_run(out)
    overwrite = [] if name == "run_incontext" else ["--overwrite"]  # it has no such flag
    with OutputLock(out, what=f"--output {out}", command=HOLDER) as lock:
        held = _files(out)
        assert module.cli([*args, "--output", out, *overwrite, *_tiny(tiny_sd)]) == 2
        assert lock.held
        after = _files(out)
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: --output {out}: in use by pid {os.getpid()} on "
                                f"{socket.gethostname()}, started "), errors[0]
    assert errors[0].endswith(f": {HOLDER}; wait for it to end or choose another output folder")
    assert after == held and {k: after[k] for k in files} == files  # nothing deleted or written
    assert LOCK_FILE in after


@pytest.mark.slow
def test_refused_before_any_process_is_spawned(commands, tiny_sd, tmp_path, capsys):
    """--num-gpus 2: the parent checks, then is refused; no rank is left waiting for it."""
    script, args = commands["autolabel"]
    module = _script(script)
    out = str(tmp_path / "out")
    os.makedirs(out)
    start = time.time()
    with OutputLock(out, command=HOLDER):
        assert module.cli([*args, "--output", out, "--overwrite", "--num-gpus", "2",
                           *_tiny(tiny_sd)]) == 2
    assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == [LOCK_FILE]  # no journal, log or support set
    print(f"\n--num-gpus 2 refused in {time.time() - start:.1f} s")
