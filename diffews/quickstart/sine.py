# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The quick start's SINE part (``tools/quickstart.py --model sine``): a tiny SINE trained on the
synthetic benchmark by the same trainer and recipe as real runs
(``configs/quick_schedules/sine_tiny_synthetic_cpu.yaml``: a random ViT, frozen as in the
method; in-context samples cut from the synthetic training classes), then scored on the
DiffewS quick start's held-out episodes.

The synthetic images are 64 px; SINE's patch is 14 px, so it works at 112 px (an 8 x 8 grid)
and ``SINEAtEpisodeSize`` resizes each 64 px episode to 112 as SINE's FSS rule does (PIL
bilinear images, legacy-nearest masks) and its semantic map back to 64 px (bilinear, then
``> SCORE_THRESHOLD``: the model's own rule for a mask at the original size, docs/SINE.md
section 5), so that all methods are scored on the same episodes at the same resolution.
"""

import contextlib
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import engine
from ..cli import load_config_checked
from ..cli.preflight import check_datasets, check_output_dir

logger = logging.getLogger(__name__)

__all__ = ["SINE_CONFIG", "SINEAtEpisodeSize", "train_sine", "one_thread"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SINE_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "sine_tiny_synthetic_cpu.yaml")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: for a model this small, two threads' synchronisation costs more
    than it gains (measured on the 2 shared cores: 1.2 s per update with one, 5-17 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SINEAtEpisodeSize(nn.Module):
    """A SINE scored on episodes of another size (module docstring).

    Args:
        model: a ``SINE`` in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        from ..modeling.sine import preprocess as P

        s = self.model.image_size
        out = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]

            def image(t):
                return torch.from_numpy(P.fss_image(t.permute(1, 2, 0).numpy(), s)).permute(2, 0, 1)

            episode = {"image": image(x["image"]),
                       "support_images": torch.stack([image(t) for t in x["support_images"]]),
                       "support_masks": torch.stack([P.fss_mask(m.numpy(), s)
                                                     for m in x["support_masks"]])}
            y = self.model([episode])[0]
            sem = F.interpolate(y["sem_seg"][None, None], size=(h, w), mode="bilinear",
                                align_corners=False)[0, 0]
            out.append({"pred_mask": sem > self.model.score_threshold, "sem_seg": sem,
                        "score": y["score"]})
        return out


def train_sine(output: str, fresh: bool = False, opts: Sequence[str] = (),
               device: Optional[str] = None):
    """Train (or resume) the tiny SINE in ``<output>/sine``; returns (config, the trained model in
    eval mode, loaded from ``model_final.pth`` through the inference loader)."""
    from detectron2.modeling import build_model

    from ..checkpoint import load_inference_weights

    flags = ["OUTPUT_DIR", os.path.join(output, "sine")] + (
        ["MODEL.DEVICE", device] if device else [])
    cfg = load_config_checked(SINE_CONFIG, list(opts) + flags)
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    cfg.freeze()
    for name in ("diffews", "detectron2", "fvcore"):  # engine.setup adds its own handlers
        for handler in list(logging.getLogger(name).handlers):
            logging.getLogger(name).removeHandler(handler)
    engine.setup(cfg)
    with one_thread():
        engine.train(cfg, resume=not fresh)
    final = cfg.clone()
    final.defrost()
    final.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    model = build_model(final).eval()
    load_inference_weights(model, final)  # the encoder from the checkpoint's record
    return cfg, model

