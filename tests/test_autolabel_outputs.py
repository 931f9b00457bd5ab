# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/autolabel.py loses nothing (issue 29 items 5, 6, 7, 10, 11): the presence flag over the
config, foreign output folders, images replaced after they were labelled, classes without a
foreground pixel, label PNG names. A tiny labelling job (tests/_autolabel_trees.py), tiny model."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from _autolabel_trees import write_autolabel_tree
from conftest import SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import autolabel  # noqa: E402

CFG = os.path.join(ROOT, "configs", "Base-DiffewS.yaml")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_autolabel_tree(str(tmp_path_factory.mktemp("tree")), classes=("apple", "bird"),
                                shots=1, per_class=1, corrupt=False)


@pytest.fixture(scope="module")
def opts(tiny_sd):
    return ["MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE", str(SIZE), "MODEL.DEVICE",
            "cpu", "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True", "DATALOADER.NUM_WORKERS", "0"]


def label(tree, opts, out, *extra, images=None, supports=None, config=()) -> int:
    return autolabel.cli(["--config-file", CFG, "--supports", supports or tree["supports"],
                          "--images", images or tree["images"], "--output", str(out), *extra,
                          *opts, *config])


def _load(path):
    with open(path) as f:
        return json.load(f)


def _error(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def plain(tree, opts, tmp_path_factory):
    """A run with the config's default threshold (-1: every class kept)."""
    out = tmp_path_factory.mktemp("plain") / "out"
    assert label(tree, opts, out, "--save-masks") == 0
    return out


def test_presence_flag_minus_one_keeps_every_class_over_the_config(tree, opts, plain, tmp_path):
    """Item 5: ``--presence-threshold -1`` ("keep every class") wins over a threshold set in the
    config, which alone judges every class absent."""
    anns = _load(plain / "annotations.json")["annotations"]
    assert len(anns) > 0
    high = ["MODEL.DIFFEWS.PRESENCE_THRESHOLD", "1e9"]
    assert label(tree, opts, tmp_path / "config", config=high) == 0
    assert _load(tmp_path / "config" / "annotations.json")["annotations"] == []
    assert label(tree, opts, tmp_path / "flag", "--presence-threshold", "-1", config=high) == 0
    assert _load(tmp_path / "flag" / "annotations.json")["annotations"] == anns


def _snapshot(folder) -> dict:
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(base, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_foreign_output_folder_refused_with_or_without_overwrite(tree, opts, tmp_path, capsys):
    """Item 6: a folder without an autolabel journal that holds a user's annotations.json and
    masks/ is refused with one line, and --overwrite deletes nothing in it."""
    out = tmp_path / "mine"
    os.makedirs(out / "masks")
    (out / "annotations.json").write_text('{"my": "own labels"}')
    (out / "masks" / "apple_0.png").write_bytes(b"my own mask")
    before = _snapshot(out)
    for extra in ((), ("--overwrite",)):
        assert label(tree, opts, out, "--save-masks", *extra) == 2
        line = _error(capsys)
        assert f"--output {out}: holds annotations.json, masks but no autolabel journal" in line
        after = _snapshot(out)
        assert {k: after.get(k) for k in before} == before, extra
        assert set(after) - set(before) <= {"log.txt", ".diffews.lock"}  # nothing of a run
    # the journal of another kind of run is not an autolabel output either
    from diffews.utils.journal import Journal

    Journal(str(tmp_path / "fss" / "journal"), {"config": {}, "episodes": "e"})
    assert label(tree, opts, tmp_path / "fss", "--overwrite") == 2
    assert "is the journal of another kind of run" in _error(capsys)


def test_overwrite_deletes_only_what_the_run_wrote(tree, opts, plain, tmp_path):
    """Item 6: --overwrite in an autolabel output deletes the earlier run's files (its label PNGs
    and a temporary of a killed write included) and nothing of the user's beside them."""
    out = tmp_path / "out"
    shutil.copytree(plain, out)
    ours = sorted(os.listdir(out / "masks"))
    assert ours and sorted(os.listdir(out / "support_sets")) == ["apple.pt", "bird.pt"]
    mine = {"masks/notes.txt": b"mine", "masks/sub/mine.png": b"mine too",
            "support_sets/README.txt": b"my notes", "my_file.txt": b"kept"}
    for rel, data in mine.items():
        os.makedirs(os.path.dirname(out / rel), exist_ok=True)
        (out / rel).write_bytes(data)
    (out / "masks" / f".{ours[0]}.x1y2z3.tmp.png").write_bytes(b"killed mid-write")
    # another command (no --save-masks, another MIN_AREA) over it
    assert label(tree, opts, out, "--overwrite", config=["TEST.FSOD.MIN_AREA", "3"]) == 0
    after = _snapshot(out)
    assert {k: after.get(k) for k in mine} == mine
    assert sorted(os.listdir(out / "masks")) == ["notes.txt", "sub"]
    assert sorted(os.listdir(out / "support_sets")) == ["README.txt", "apple.pt", "bird.pt"]
    assert len(_load(out / "annotations.json")["images"]) == 2


def _noise(path, w: int, h: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 255, (h, w, 3)).astype(np.uint8)).save(path)


def test_label_pngs_of_x_jpg_and_x_png_are_two_files(tree, opts, tmp_path, capsys):
    """Item 11: with --save-masks, x.jpg and x.png each get their own label PNG (the extension
    is kept in the name); two names that would still meet are refused before any model."""
    images = tmp_path / "images"
    os.makedirs(images / "sub")
    _noise(images / "x.jpg", 24, 20, 0)
    _noise(images / "x.png", 30, 16, 1)
    _noise(images / "sub" / "x.jpg", 12, 10, 2)
    out = tmp_path / "out"
    assert label(tree, opts, out, "--save-masks", images=str(images)) == 0
    sizes = {}
    for base, _, names in os.walk(out / "masks"):
        for n in names:
            with Image.open(os.path.join(base, n)) as img:
                sizes[os.path.relpath(os.path.join(base, n), out / "masks")] = img.size
    assert sizes == {"x.jpg.png": (24, 20), "x.png.png": (30, 16), "sub/x.jpg.png": (12, 10)}
    clash = tmp_path / "clash"
    os.makedirs(clash)
    _noise(clash / "a..b.jpg", 8, 8, 3)
    _noise(clash / "a__b.jpg", 8, 8, 4)
    assert label(tree, opts, tmp_path / "out2", "--save-masks", images=str(clash)) == 1
    line = _error(capsys)
    assert "a..b.jpg and a__b.jpg would both be labelled in" in line and "a__b.jpg.png" in line


def test_mask_path_rules(tmp_path):
    """Item 11's names, and the older name (without the extension) by which --overwrite finds the
    label PNGs of a journal written before (its fingerprint's save_masks is true)."""
    from diffews.tasks.autolabel import mask_path

    out = str(tmp_path)
    assert mask_path(out, "a/x.jpg") == os.path.join(out, "masks", "a", "x.jpg.png")
    assert mask_path(out, "a/x.jpg", legacy=True) == os.path.join(out, "masks", "a", "x.png")
    assert mask_path(out, "/abs/../up/x.png") == os.path.join(out, "masks", "up", "x.png.png")
    assert mask_path(out, "../x.jpg") == os.path.join(out, "masks", "__", "x.jpg.png")


def _labelled_now(out) -> str:
    with open(out / "log.txt") as f:
        lines = [x for x in f if "labelled now" in x]
    return lines[-1].split(" INFO: ", 1)[-1].strip() if lines else ""


def _anns_of(data, file_name):
    (image_id,) = [i["id"] for i in data["images"] if i["file_name"] == file_name]
    return [{k: v for k, v in a.items() if k not in ("id", "image_id")}
            for a in data["annotations"] if a["image_id"] == image_id]


def test_image_replaced_after_labelling_is_labelled_again(tree, opts, tmp_path):
    """Item 7: a shard records the file it was computed from; on resume an image replaced since
    (another size) is labelled again, one only touched (same bytes) is not, and one replaced by
    an unreadable file is skipped, its old shard and label PNG gone."""
    images = tmp_path / "images"
    shutil.copytree(tree["images"], images)
    names = sorted(os.listdir(images))
    out = tmp_path / "out"
    assert label(tree, opts, out, "--save-masks", images=str(images)) == 0
    first = _load(out / "annotations.json")
    assert [(i["width"], i["height"]) for i in first["images"]] == [(24, 20), (24, 20)]
    _noise(images / names[0], 70, 50, 7)  # the same name, another picture
    os.utime(images / names[1], ns=(1, 10 ** 18))  # touched: same bytes, another time
    assert label(tree, opts, out, "--save-masks", images=str(images)) == 0
    second = _load(out / "annotations.json")
    assert [(i["width"], i["height"]) for i in second["images"]] == [(70, 50), (24, 20)]
    assert _labelled_now(out).startswith("2 images (1 labelled now)")
    with Image.open(out / "masks" / f"{names[0]}.png") as img:
        assert img.size == (70, 50)
    assert _anns_of(second, names[1]) == _anns_of(first, names[1])
    (images / names[0]).write_bytes(b"not an image any more")
    assert label(tree, opts, out, "--save-masks", "--max-bad-fraction", "0.5",
                 images=str(images)) == 0
    third = _load(out / "annotations.json")
    assert [i["file_name"] for i in third["images"]] == [names[1]]
    assert [s["file_name"] for s in _load(out / "skipped.json")] == [names[0]]
    assert not (out / "masks" / f"{names[0]}.png").exists()


@pytest.fixture
def caplog_at():
    """``with caplog_at(level) as records``: the records of the block at ``level`` or above
    logged under ``diffews`` (which tools' setup_logger stops from propagating to pytest's)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def at(level):
        records = []
        handler = logging.Handler(level)
        handler.emit = records.append
        logger = logging.getLogger("diffews")
        logger.addHandler(handler)
        try:
            yield records
        finally:
            logger.removeHandler(handler)
    return at


def test_class_without_a_foreground_pixel_is_refused(tree, opts, tmp_path, capsys, caplog_at):
    """Item 10: a class whose every support mask is empty is refused before any model, naming
    the class and its mask files (as a class folder, as a COCO json, as a saved set); a class
    with one empty mask among others is used, the empty one named in a warning."""
    supports = tmp_path / "supports"
    shutil.copytree(tree["supports"], supports)
    masks = sorted(str(p) for p in (supports / "bird").glob("*.png"))
    for m in masks:
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(m)
    out = tmp_path / "out"
    assert label(tree, opts, out, supports=str(supports)) == 1
    line = _error(capsys)
    assert "class 'bird': every support mask is empty" in line and masks[0] in line, line
    assert not out.exists() or not (out / "journal").exists()
    # a COCO json whose only instance of a category has an empty segmentation
    coco = _load(tree["supports_json"])
    for a in coco["annotations"]:
        if a["category_id"] == 20:
            a["segmentation"] = [[0, 0, 0, 0, 0, 0]]  # a polygon of no area
    path = tmp_path / "supports.json"
    path.write_text(json.dumps(coco))
    assert label(tree, opts, out, "--supports-images", tree["supports_flat"],
                 supports=str(path)) == 1
    line = _error(capsys)
    assert "class 'bird': every support mask is empty" in line and "bird_0.jpg" in line, line
    # one empty mask among a class's others: used, named with its class in a warning
    import logging

    from diffews.tasks.autolabel import read_supports

    shutil.copy(supports / "apple" / "0.jpg", supports / "apple" / "1.jpg")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(supports / "apple" / "1.png")
    shutil.rmtree(supports / "bird")
    with caplog_at(logging.WARNING) as records:
        source = read_supports(str(supports))
    assert [len(r) for r in source.records] == [2]
    said = [r.getMessage() for r in records if "empty" in r.getMessage()]
    assert len(said) == 1 and "class 'apple'" in said[0] and "1.png" in said[0], said


def test_saved_set_without_a_foreground_pixel_is_refused(tree, opts, plain, tmp_path, capsys):
    """Item 10 for saved support sets: a set whose every support was encoded from an empty mask
    (its recorded mask fractions are all 0) is refused, naming the class and the file."""
    from diffews.modeling.support_set import SupportSet

    sets = tmp_path / "sets"
    shutil.copytree(plain / "support_sets", sets)
    bird = SupportSet.load(str(sets / "bird.pt"))
    for info in bird.info:
        info["mask_fraction"] = 0.0
    bird.save(str(sets / "bird.pt"))
    assert label(tree, opts, tmp_path / "out", supports=str(sets)) == 1
    line = _error(capsys)
    assert "class 'bird'" in line and str(sets / "bird.pt") in line and "empty" in line, line

