# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny SINE models for the tests: configs, and the reference data of dev/sine_reference.py."""

import functools
import gzip
import io
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "data", "sine_reference.pt.gz")

# the tiny sizes of dev/sine_reference.py (TINY there): a 2-block ViT of width 32, 2 heads; a
# decoder of width 32 with 2 layers, 2 heads, FFN 64, 3 queries
TINY = {"embed_dim": 32, "depth": 2, "heads": 2, "feat": 32, "dec_depth": 2, "dec_heads": 2,
        "mlp": 64, "queries": 3, "fusion": 1}


def tiny_opts(tiny=None) -> list:
    """Config overrides of the tiny sizes (``TINY`` updated with ``tiny``)."""
    t = dict(TINY, **(tiny or {}))
    return [
        "MODEL.SINE.ENCODER.ARCH", "vit_small",
        "MODEL.SINE.ENCODER.EMBED_DIM", t["embed_dim"], "MODEL.SINE.ENCODER.DEPTH", t["depth"],
        "MODEL.SINE.ENCODER.NUM_HEADS", t["heads"], "MODEL.SINE.FEAT_CHANS", t["feat"],
        "MODEL.SINE.DECODER.DEPTH", t["dec_depth"], "MODEL.SINE.DECODER.NHEADS", t["dec_heads"],
        "MODEL.SINE.DECODER.MLP_DIM", t["mlp"], "MODEL.SINE.DECODER.MASK_DIM", t["feat"],
        "MODEL.SINE.DECODER.NUM_QUERIES", t["queries"],
        "MODEL.SINE.DECODER.FUSION_DEPTH", t["fusion"]]


def sine_cfg(*opts, tiny=None, config_file=None):
    """detectron2 config of a tiny SINE (``config_file``, default ``configs/sine/Base-SINE.yaml``,
    + tiny sizes + opts)."""
    from detectron2.config import get_cfg

    from diffews.config import add_diffews_config
    from diffews.sine_config import add_sine_config

    cfg = get_cfg()
    add_diffews_config(cfg)
    add_sine_config(cfg)
    cfg.merge_from_file(config_file or os.path.join(ROOT, "configs", "sine", "Base-SINE.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *tiny_opts(tiny), *opts])
    return cfg


def build_sine(*opts, tiny=None, seed: int = 0):
    """A tiny SINE in eval mode, built by detectron2's build_model (random weights of ``seed``)."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(sine_cfg(*opts, tiny=tiny)).eval()


@functools.lru_cache(maxsize=1)
def reference_data():
    """tests/data/sine_reference.pt.gz: the original's tiny model, inputs and outputs."""
    with open(REFERENCE, "rb") as f:
        return torch.load(io.BytesIO(gzip.decompress(f.read())), weights_only=True)
