# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
import glob
import os

import pytest
from detectron2.config import get_cfg

from diffews import add_diffews_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_defaults_are_the_paper_setting():
    cfg = get_cfg()
    add_diffews_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "DiffewS"
    assert cfg.INPUT.IMAGE_SIZE == 512 and cfg.MODEL.DIFFEWS.TIMESTEP == 1
    assert cfg.MODEL.DIFFEWS.REL_THRESHOLD == 0.25 and cfg.TEST.FSS.SEED == 0


@pytest.mark.parametrize("path", YAMLS, ids=[os.path.relpath(p, ROOT) for p in YAMLS])
def test_every_yaml_merges(path):
    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_file(path)  # raises on an unknown key
    depth, base = 0, path
    while True:  # _BASE_ chains are at most 3 files deep
        with open(base) as f:
            line = next((ln for ln in f if ln.startswith("_BASE_")), None)
        if line is None:
            break
        base = os.path.join(os.path.dirname(base), line.split(":", 1)[1].strip().strip("\"'"))
        depth += 1
    assert depth <= 2
    assert "!!python" not in open(path).read()
