# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Atomic writes (issue 17 item 4): a writer that fails or is killed half-way leaves the previous
file exactly as it was and, when it fails inside the process, no temporary file. A plain
``open(path, "w")`` fails each test: it truncates the previous file before the first byte is
written."""

import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffews.data.datasets import vos_results
from diffews.data.datasets.split_files import save_json
from diffews.data.episodes import save_episodes
from diffews.evaluation.davis_report import DAVISScores, write_davis_csvs
from diffews.modeling.support_set import SupportSet
from diffews.utils.atomic import atomic_open, atomic_path, atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(BaseException):
    """Stands for a signal arriving mid-write (not an Exception, as KeyboardInterrupt)."""


def _write(f, data):
    """Write to a path or a file object (a writer may be handed either)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(data)
    else:
        f.write(data)


def _previous(tmp_path, content=b"previous complete file\n"):
    path = tmp_path / "out.bin"
    path.write_bytes(content)
    return path, content


def test_open_fails_midway_previous_intact_no_temp(tmp_path):
    path, before = _previous(tmp_path)
    with pytest.raises(Killed):
        with atomic_open(str(path), "wb") as f:
            f.write(b"half of the new")
            f.flush()
            assert path.read_bytes() == before  # readers see the old file during the write
            raise Killed
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.bin"]


def test_path_writer_fails_midway(tmp_path):
    """A writer that takes a path (torch.save, zipfile) writes half and raises."""
    path, before = _previous(tmp_path)
    with pytest.raises(OSError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise OSError("No space left on device")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.bin"]


def test_success_replaces_with_an_ordinary_file(tmp_path):
    path, _ = _previous(tmp_path)
    atomic_write(str(path), "new\n")
    atomic_write(str(tmp_path / "sub" / "b.bin"), b"\x00\x01", "wb")  # the folder is created
    assert path.read_text() == "new\n" and (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert os.stat(path).st_mode & 0o777 == 0o644
    with atomic_path(str(path), suffix=".png") as tmp:  # for writers that pick the format by name
        assert tmp.endswith(".tmp.png") and os.path.dirname(tmp) == str(tmp_path)
        Image.new("L", (3, 2)).save(tmp)
    assert Image.open(path).size == (3, 2) and sorted(os.listdir(tmp_path)) == ["out.bin", "sub"]
    with pytest.raises(ValueError, match="writes"):
        with atomic_open(str(path), "r"):
            pass


@pytest.mark.slow
def test_killed_process_leaves_previous_file(tmp_path):
    """SIGKILL mid-write: no cleanup runs, yet the target still holds the previous content (at
    most a hidden ``.out.bin.*.tmp`` is left beside it)."""
    path, before = _previous(tmp_path)
    module = os.path.join(ROOT, "diffews", "utils", "atomic.py")  # stdlib only: loads in ms
    script = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('atomic', {module!r})\n"
        "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
        f"with atomic.atomic_open({str(path)!r}, 'wb') as f:\n"
        "    f.write(b'x' * 100000); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    left = sorted(set(os.listdir(tmp_path)) - {"out.bin"})
    assert len(left) == 1 and left[0].startswith(".out.bin.") and left[0].endswith(".tmp")


# --- the writers that use the helper -------------------------------------------------------------

def test_support_set_save(tmp_path, monkeypatch):
    kv = {"l": torch.ones(1, 2, 4, 3)}
    s = SupportSet(torch.ones(1, 8, 2, 2), kv, dict(kv))
    path = tmp_path / "set.pt"
    s.save(str(path))
    before = path.read_bytes()

    def killed(obj, f, *args, **kwargs):  # the process dies half-way through the write
        _write(f, b"partial")
        raise Killed

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(Killed):
        SupportSet(torch.zeros(1, 8, 2, 2), {}, {}).save(str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["set.pt"]
    monkeypatch.undo()
    assert torch.equal(SupportSet.load(str(path)).latents, torch.ones(1, 8, 2, 2))


class _HalfWriter:
    """A file whose writes stop half-way with ``Killed`` (the disk fills, a signal arrives)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])  # str or bytes
        self._f.flush()
        raise Killed

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _die_on_write(monkeypatch, folder):
    """Every file opened for writing in ``folder`` dies half-way through its first write."""
    real_open = open

    def dying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        inside = os.path.dirname(os.path.abspath(str(file))) == str(folder)
        return _HalfWriter(f) if inside and "w" in mode else f

    monkeypatch.setattr("builtins.open", dying_open)


def _davis_csvs(folder, value):
    scores = DAVISScores([("bear_1", value, 1.0, 0.0, value, 1.0, 0.0)], 1)
    write_davis_csvs(scores, str(folder), "val")


WRITERS = {  # name -> (file names it writes, write(folder, version))
    "json.gz": (["s.json.gz"], lambda d, v: save_json({"v": [v] * 500}, str(d / "s.json.gz"))),
    "json": (["s.json"], lambda d, v: save_json({"v": [v] * 500}, str(d / "s.json"))),
    "davis_csvs": (["global_results-val.csv", "per-sequence_results-val.csv"], _davis_csvs),
    "episodes": (["ep.json"], lambda d, v: save_episodes(
        [{"episode_id": 0, "class_id": 1, "query": f"q{v}", "supports": ["s"]}],
        str(d / "ep.json"))),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_file_writers(tmp_path, monkeypatch, writer):
    names, write = WRITERS[writer]
    write(tmp_path, 0.25)
    before = {n: (tmp_path / n).read_bytes() for n in names}
    _die_on_write(monkeypatch, tmp_path)
    with pytest.raises(Killed):
        write(tmp_path, 0.5)
    monkeypatch.undo()
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_vos_result_png_and_submission_zip(tmp_path, monkeypatch):
    png = tmp_path / "Annotations" / "v" / "00000.png"
    vos_results.save_label_png(np.array([[0, 1], [2, 1]]), str(png))
    before = png.read_bytes()

    def half_png(self, fp, *args, **kwargs):
        _write(fp, b"\x89PNG half")
        raise Killed

    monkeypatch.setattr(Image.Image, "save", half_png)
    with pytest.raises(Killed):
        vos_results.save_label_png(np.zeros((2, 2), int), str(png))
    monkeypatch.undo()
    assert png.read_bytes() == before and os.listdir(png.parent) == ["00000.png"]
    assert np.array(Image.open(png)).tolist() == [[0, 1], [2, 1]]

    vos_results.save_label_png(np.ones((2, 2), int), str(png.parent / "00005.png"))
    zip_path = vos_results.zip_ytvos_submission(str(tmp_path))
    before = open(zip_path, "rb").read()
    real = zipfile.ZipFile.write
    calls = []

    def dies_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", dies_on_second)
    with pytest.raises(Killed):
        vos_results.zip_ytvos_submission(str(tmp_path))
    monkeypatch.undo()
    assert open(zip_path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["Annotations", "submission.zip"]
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["Annotations/v/00000.png", "Annotations/v/00005.png"]
