# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
import glob
import os

import pytest
from detectron2.config import get_cfg

from diffews import add_diffews_config
from diffews.sine_config import add_sine_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_defaults_are_the_paper_setting():
    cfg = get_cfg()
    add_diffews_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "DiffewS"
    assert cfg.INPUT.IMAGE_SIZE == 512 and cfg.MODEL.DIFFEWS.TIMESTEP == 1
    assert cfg.MODEL.DIFFEWS.REL_THRESHOLD == 0.25 and cfg.TEST.FSS.SEED == 0


def test_sine_defaults_are_the_released_model():
    """MODEL.SINE defaults and configs/sine/Base-SINE.yaml: the released DINOv2-L model's values
    (aim-uofa/SINE tools/eval_fss.py l.146-167)."""
    for base in (False, True):
        cfg = get_cfg()
        add_diffews_config(cfg)
        add_sine_config(cfg)
        if base:
            cfg.merge_from_file(os.path.join(ROOT, "configs", "sine", "Base-SINE.yaml"))
            assert cfg.MODEL.META_ARCHITECTURE == "SINE" and cfg.INPUT.IMAGE_SIZE == 518
        s = cfg.MODEL.SINE
        assert (s.ENCODER.ARCH, s.FEAT_CHANS, s.ENCODER_USE_FC) == ("vit_large", 256, False)
        assert (s.DECODER.DEPTH, s.DECODER.NHEADS, s.DECODER.MLP_DIM, s.DECODER.MASK_DIM,
                s.DECODER.NUM_QUERIES, s.DECODER.FUSION_DEPTH, s.DECODER.PRE_NORM) == \
            (6, 8, 2048, 256, 200, 1, True)
        assert (s.IMAGE_SIZE, s.PAD_SIZE, s.SCORE_THRESHOLD) == (518, 896, 0.7)
        assert cfg.TEST.VOS.FRAME_SIZE == 518


@pytest.mark.parametrize("path", YAMLS, ids=[os.path.relpath(p, ROOT) for p in YAMLS])
def test_every_yaml_merges(path):
    cfg = get_cfg()
    add_diffews_config(cfg)
    add_sine_config(cfg)  # configs/sine/ set MODEL.SINE.*
    cfg.merge_from_file(path)  # raises on an unknown key
    depth, base = 0, path
    while True:  # _BASE_ chains are at most 4 files deep (a variant of a fold or recipe config)
        with open(base) as f:
            line = next((ln for ln in f if ln.startswith("_BASE_")), None)
        if line is None:
            break
        base = os.path.join(os.path.dirname(base), line.split(":", 1)[1].strip().strip("\"'"))
        depth += 1
    assert depth <= 3
    assert "!!python" not in open(path).read()
