# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The identity of the weights in a resumable run's fingerprint (issue 29 item 12,
``diffews.utils.journal.stat_files``): size and a hash of every byte, the hash cached by
(path, size, modification time) so that a multi-GB checkpoint is read once."""

import json
import os

import pytest

from diffews.utils import journal
from diffews.utils.journal import hash_cache_dir, stat_files

MIB = 1 << 20


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DIFFEWS_CACHE", str(folder))
    return folder


def _weights(path, size: int = 5 * MIB) -> str:
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * (size // 256))
    return str(path)


def _flip_middle(path) -> None:
    """One byte in the middle changed, the size and the modification time kept."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new file: another time


def test_a_byte_in_the_middle_changes_the_identity(tmp_path, cache):
    """A checkpoint fine-tuned in place keeps its size, first and last MiB: the identity still
    changes (the first/last MiB rule gave the same one)."""
    w = _weights(tmp_path / "model_final.pth")
    before = stat_files([w])
    _flip_middle(w)
    assert stat_files([w]) != before
    # a copy elsewhere under the same name, same bytes: the same identity (a time is no part)
    copy = tmp_path / "copy"
    copy.mkdir()
    with open(w, "rb") as f:
        (copy / "model_final.pth").write_bytes(f.read())
    assert stat_files([str(copy / "model_final.pth")]) == stat_files([w])
    # folders: every file, in name order
    folder = tmp_path / "unet"
    folder.mkdir()
    _weights(folder / "a.bin", MIB)
    _weights(folder / "b.bin", MIB)
    ident = stat_files([str(folder)])
    _flip_middle(folder / "b.bin")
    assert stat_files([str(folder)]) != ident


def test_the_hash_is_read_from_the_cache_until_size_or_time_changes(tmp_path, cache,
                                                                    monkeypatch):
    w = _weights(tmp_path / "w.pth", 3 * MIB)
    reads = []
    real = journal._sha256_file
    monkeypatch.setattr(journal, "_sha256_file", lambda p: reads.append(p) or real(p))
    first = stat_files([w])
    assert stat_files([w]) == first and len(reads) == 1  # the second from the cache
    assert hash_cache_dir() == str(cache / "file_hashes")
    (entry,) = [os.path.join(d, n) for d, _, ns in os.walk(cache) for n in ns]
    with open(entry) as f:
        data = json.load(f)
    assert data["path"] == os.path.realpath(w) and data["size"] == 3 * MIB
    _flip_middle(w)  # another modification time: hashed again
    assert stat_files([w]) != first and len(reads) == 2
    # a cache folder that cannot be written: hashed every time, never an error
    monkeypatch.setenv("DIFFEWS_CACHE", str(tmp_path / "w.pth" / "not-a-folder"))
    assert stat_files([w]) == stat_files([w]) and len(reads) == 4
