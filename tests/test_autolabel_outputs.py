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
