# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Record what an entry point's model saw and returned, episode by episode, for tests that check
its numbers from the rules instead of against a snapshot."""

from typing import Dict

import numpy as np


def capture_episodes(monkeypatch) -> Dict:
    """Wrap ``DiffewSPredictor.from_config`` (what ``build_predictor`` calls) so that the model of
    every predictor it builds records, per ``episode_id``: {"class_id", "sem_seg" (S, S) uint8
    label, "pred_mask" (S, S) bool, "pred_image" (3, S, S) uint8, "input": the model input dict
    (image, supports, masks)}. Returns the dict, filled as the model runs."""
    from diffews.predictor import DiffewSPredictor

    seen: Dict = {}
    build = DiffewSPredictor.from_config.__func__

    def hook(model, args, outputs):
        for inp, out in zip(args[0], outputs):
            seen[int(inp["episode_id"])] = {
                "class_id": int(inp["class_id"]),
                "sem_seg": np.asarray(inp["sem_seg"]).copy(),
                "pred_mask": out["pred_mask"].cpu().numpy().copy(),
                "pred_image": out["pred_image"].cpu().numpy().copy(),
                "input": {k: inp[k].clone() for k in ("image", "support_images", "support_masks")},
            }

    def build_and_watch(cls, cfg):
        predictor = build(cls, cfg)
        predictor.model.register_forward_hook(hook)
        return predictor

    monkeypatch.setattr(DiffewSPredictor, "from_config", classmethod(build_and_watch))
    return seen


def hsnet_scores(episodes: Dict, class_ids) -> Dict[str, float]:
    """mIoU and FB-IoU (x100) from scratch, docs/PROTOCOLS.md section 2a: per class, foreground
    intersections and unions summed over the class's episodes, IoU = sum I / max(sum U, 1), mIoU
    the mean over the fold's classes; FB-IoU the mean over background and foreground of sum I /
    sum U over all episodes. Label 255 is ignored."""
    inter, union = {}, {}
    for e in episodes.values():
        valid = e["sem_seg"] != 255
        for b in (0, 1):
            p = (e["pred_mask"] == bool(b)) & valid
            g = (e["sem_seg"] == b) & valid
            key = (e["class_id"], b)
            inter[key] = inter.get(key, 0) + int((p & g).sum())
            union[key] = union.get(key, 0) + int((p | g).sum())
    miou = np.mean([inter.get((c, 1), 0) / max(union.get((c, 1), 0), 1) for c in class_ids])
    fb = np.mean([sum(inter.get((c, b), 0) for c in class_ids)
                  / max(sum(union.get((c, b), 0) for c in class_ids), 1) for b in (0, 1)])
    return {"mIoU": 100.0 * float(miou), "FB-IoU": 100.0 * float(fb)}


def threshold_rule_holds(pred_image: np.ndarray, mask: np.ndarray, rel: float, absolute: float = 0):
    """docs/METHOD.md section 3.2: with p = pred_image / 255, mask = mean over RGB of p > rel x
    max(p) (or > ``absolute`` when it is > 0). Checked on every pixel but exact ties, where float
    rounding may go either way."""
    s = pred_image.astype(np.float64).sum(axis=0)  # 3 x the mean, in [0, 255] units
    bound = 3 * 255 * absolute if absolute > 0 else 3 * rel * float(pred_image.max())
    clear = np.abs(s - bound) > 1e-9
    return bool(np.array_equal(mask[clear], (s > bound)[clear]))
