# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Resumable benchmark runners (issue 20, item 4; diffews/tasks/resume.py): run_fss.py killed with
SIGKILL mid-run and started again (in 2 processes) writes the results.json of an uninterrupted
run, byte for byte; a changed command is refused with one line (exit 2), --overwrite starts
again; run_fsod.py and run_vos.py interrupted after some images / sequences and run again give
the uninterrupted results while redoing only what was left (calls counted)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import SIZE, make_cfg
from tests._fsod_trees import write_fsod_tree
from tests._vos_trees import write_davis_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in ("inference_fss", "inference_fsod"):
    sys.path.insert(0, os.path.join(ROOT, folder))
import run_fsod  # noqa: E402
import run_fss  # noqa: E402

FSS_CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
FSOD_CFG = os.path.join(ROOT, "configs", "fsod", "coco", "diffews_sd21_fsod_coco_1shot.yaml")
EPISODES = 6


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _shards(out):
    folder = out / "journal" / "shards"
    return sorted(f for f in os.listdir(folder) if f.endswith(".json")) if folder.is_dir() else []


def _fss_argv(tiny_sd, out, *extra, flags=()):
    # one episode per chunk: 6 shards, so a kill lands between two of them
    return ["--config-file", FSS_CFG, "--benchmark", "synthetic", "--shot", "2",
            "--num-episodes", str(EPISODES), "--chunk-episodes", "1", "--output", str(out),
            *flags, "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
            "INPUT.IMAGE_SIZE", str(SIZE), *extra]


def _error(capsys):
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_run_fss_kill_9_then_resume_is_identical_and_changed_command_refused(tiny_sd, tmp_path,
                                                                              capsys):
    ref = tmp_path / "uninterrupted"
    assert run_fss.cli(_fss_argv(tiny_sd, ref)) == 0
    assert len(_shards(ref)) == EPISODES

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "inference_fss", "run_fss.py"),
                             *_fss_argv(tiny_sd, out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _shards(out):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_shards(out))
    print(f"\nrun_fss killed (SIGKILL) with {done} of {EPISODES} chunks journalled; results.json "
          f"present: {(out / 'results.json').exists()}")
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= done < EPISODES and not (out / "results.json").exists()

    # the same command, in 2 processes (detectron2 launch, gloo): only the chunks left
    assert run_fss.cli(_fss_argv(tiny_sd, out, flags=("--num-gpus", "2"))) == 0
    with open(out / "log.txt") as f:
        log = f.read()
    assert f"resuming, {done} of {EPISODES} chunks already done" in log
    for name in ("results.json", os.path.join("synthetic_fss_test", "fss_results.json")):
        assert _bytes(out / name) == _bytes(ref / name), name
    print(f"resumed in 2 processes: results.json and fss_results.json identical to the "
          f"uninterrupted run's ({json.loads(_bytes(out / 'results.json'))['mean']})")

    # another command on the folder: refused before any model, one line naming the difference
    before = _bytes(out / "results.json")
    assert run_fss.cli(_fss_argv(tiny_sd, out, "MODEL.DIFFEWS.REL_THRESHOLD", "0.5")) == 2
    line = _error(capsys)
    assert str(out) in line and "REL_THRESHOLD" in line and "--overwrite" in line
    argv = _fss_argv(tiny_sd, out)
    argv[argv.index("--shot") + 1] = "1"
    assert run_fss.cli(argv) == 2
    assert "SHOT" in _error(capsys)
    assert _bytes(out / "results.json") == before
    # --overwrite starts again: every chunk of the new command computed
    assert run_fss.cli(_fss_argv(tiny_sd, out, "MODEL.DIFFEWS.REL_THRESHOLD", "0.5",
                                 flags=("--overwrite",))) == 0
    assert len(_shards(out)) == EPISODES
    with open(out / "journal" / "journal.json") as f:
        header = json.load(f)
    assert header["fingerprint"]["config"]["MODEL"]["DIFFEWS"]["REL_THRESHOLD"] == 0.5


class Interrupt(RuntimeError):
    pass


@pytest.fixture
def count_images(monkeypatch):
    """Count the test images DiffewSPredictor encodes; raise after ``state["fail_after"]``."""
    from diffews.predictor import DiffewSPredictor

    state = {"images": 0, "fail_after": None}
    encode = DiffewSPredictor.encode_images

    def counted(self, images, *a, **k):
        if state["fail_after"] is not None and state["images"] >= state["fail_after"]:
            raise Interrupt("interrupted")
        state["images"] += len(images)
        return encode(self, images, *a, **k)

    monkeypatch.setattr(DiffewSPredictor, "encode_images", counted)
    return state


def test_run_fsod_interrupted_then_resumed_equals_uninterrupted(tiny_sd, tmp_path, count_images,
                                                                 capsys):
    root = tmp_path / "data"
    write_fsod_tree(str(root), shots=(1,), seeds=(0,))
    cache = str(tmp_path / "support_sets")  # the classes' sets, encoded by the first run

    def argv(out):
        return ["--config-file", FSOD_CFG, "--test", "coco", "--shot", "1", "--seed", "0",
                "--output", str(out), "--dataset-root", str(root),
                "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True",
                "INPUT.IMAGE_SIZE", str(SIZE), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS",
                "0", "TEST.FSOD.BATCH_SIZE", "20", "TEST.FSOD.SUPPORT_DIR", cache]

    ref = tmp_path / "uninterrupted"
    assert run_fsod.cli(argv(ref)) == 0
    total = count_images["images"]
    assert total >= 3 and len(_shards(ref)) == total  # < 100 images: one per shard

    out = tmp_path / "interrupted"
    count_images.update(images=0, fail_after=2)
    assert run_fsod.cli(argv(out)) == 1
    assert "interrupted" in _error(capsys)
    assert len(_shards(out)) == 2 and not (out / "results.json").exists()
    count_images.update(images=0, fail_after=None)
    assert run_fsod.cli(argv(out)) == 0
    assert count_images["images"] == total - 2  # only the images left
    for name in ("coco_instances_results.json", "results.json"):
        assert json.loads(_bytes(out / name)) == json.loads(_bytes(ref / name)), name


def test_run_vos_interrupted_then_resumed_equals_uninterrupted(tiny_sd, tiny_model, tmp_path,
                                                                monkeypatch):
    from diffews import DiffewSPredictor
    from diffews.tasks import vos
    from diffews.utils.journal import JournalMismatch

    def run_vos(cfg, dataset, output, **kwargs):
        return vos.run(cfg, vos.VOSJob(dataset, output, **kwargs))

    root = str(tmp_path / "data")
    write_davis_tree(root)
    predictor = DiffewSPredictor(tiny_model, SIZE)
    monkeypatch.setattr(DiffewSPredictor, "from_config", classmethod(lambda cls, cfg: predictor))
    calls = {"videos": [], "fail_at": None}
    segment = vos.VOSEngine.segment_video

    def counted(self, record):
        calls["videos"].append(record["video"])
        for i, out in enumerate(segment(self, record)):
            if len(calls["videos"]) == calls["fail_at"] and i == 2:  # mid-sequence
                raise Interrupt("interrupted")
            yield out

    monkeypatch.setattr(vos.VOSEngine, "segment_video", counted)
    cfg = make_cfg(tiny_sd, "TEST.VOS.MEM_SIZE", 2)
    videos = ["crossing", "thin"]  # 2 of the 3 sequences: enough to stop between them
    ref = run_vos(cfg, "davis17_val", str(tmp_path / "ref"), root=root, videos=videos,
                  progress=False)
    assert calls["videos"] == videos

    out = tmp_path / "out"
    calls.update(videos=[], fail_at=2)
    with pytest.raises(Interrupt):
        run_vos(cfg, "davis17_val", str(out), root=root, videos=videos, progress=False)
    assert len(_shards(out)) == 1
    calls.update(videos=[], fail_at=None)
    res = run_vos(cfg, "davis17_val", str(out), root=root, videos=videos, progress=False)
    assert calls["videos"] == videos[1:] and res["resumed"] == 1  # only the sequences left
    assert res["frames"] == ref["frames"] and res["memory_entries"] == ref["memory_entries"]
    assert res["scores"].global_ == ref["scores"].global_
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert _bytes(out / name) == _bytes(tmp_path / "ref" / name)
    for video in videos:
        for frame in sorted(os.listdir(tmp_path / "ref" / video)):
            assert _bytes(out / video / frame) == _bytes(tmp_path / "ref" / video / frame)
    # another memory size on the folder is refused before anything is computed
    calls["videos"] = []
    with pytest.raises(JournalMismatch, match="TEST.VOS.MEM_SIZE.*--overwrite"):
        run_vos(make_cfg(tiny_sd, "TEST.VOS.MEM_SIZE", 1), "davis17_val", str(out), root=root,
                progress=False)
    assert calls["videos"] == []
