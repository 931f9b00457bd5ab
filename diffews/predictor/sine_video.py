# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's rules for semi-supervised video object segmentation: tools/eval_vos.py's loop
(aim-uofa/SINE at 9ff576c, l.343-453; docs/SINE.md section 7), driven frame by frame by the VOS
task (``diffews.tasks.vos``).

Per frame:

1. the frame is resized to a shorter side of ``TEST.VOS.FRAME_SIZE`` (bilinear), then its longer
   side to ``MODEL.SINE.IMAGE_SIZE`` for the model, normalised and zero-padded, and encoded once;
2. objects whose mask is given on this frame for the first time get a memory
   (``modeling.sine.SINEMemory``: the given frame kept for good, score 1, plus the
   ``mem_size - 1`` past frames of best linearly decayed score); a given mask of an object that
   already has a memory is not used, as the original's ``MaskMapper`` passes on new objects only;
3. every object with a memory is predicted on the frame (the given frame included), in one
   decoder call: each object's ID query is pooled over all its references, objects in the order
   they appeared (the original's contiguous ids); each object's mask (ID mask logit > 0) and
   score (ID probability x mean sigmoid inside the mask) enter its memory;
4. the masks, nearest-resized to the frame's size, make the label map: where masks overlap the
   object that appeared last wins (``argmax(id * mask)`` over the contiguous ids).
"""

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.sine import SINEMemory
from ..modeling.sine import preprocess as P
from ..modeling.sine.inference import vos_objects

__all__ = ["SINEVideoTracker"]


class SINEVideoTracker:
    """One video's objects and memories (module docstring).

    Args:
        predictor: the ``SINEPredictor``.
        mem_size: references per object, the first given frame included (``TEST.VOS.MEM_SIZE``).
        decay_ratio: linear decay ratio of the references' scores (``TEST.VOS.DECAY_RATIO``).
    """

    def __init__(self, predictor, mem_size: int, decay_ratio: float):
        self.predictor, self.model = predictor, predictor.model
        self.mem_size, self.decay_ratio = int(mem_size), float(decay_ratio)
        self.memories: Dict[int, SINEMemory] = {}  # contiguous id -> memory
        self.order: Dict[int, int] = {}  # object id -> contiguous id (order of appearance)

    def _model_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(h, w) mask at the frame size -> (1, P, P) at the model input size, padded."""
        m = P.vos_model_resize(mask[None, None].float(), self.model.image_size, "nearest")[0]
        return self.model.pad_masks(m)

    @torch.no_grad()
    def frame(self, t: int, image: np.ndarray, name: str, ann: Optional[np.ndarray]) -> Dict:
        """Segment frame ``t`` and update the memories; the VOS task's per-frame dict without
        its index, name and image (``diffews.tasks.vos.VOSEngine.segment_video``)."""
        model, size = self.model, image.shape[:2]
        unit = P.vos_frame(image, self.predictor.frame_size).to(model.device)
        model_in = P.vos_model_resize(unit[None], model.image_size)[0]
        features = model.encode(model.prepare([model_in]))
        given = sorted(int(o) for o in np.unique(ann) if o != 0) if ann is not None else []
        entered = []
        for o in given:
            if o in self.order:
                continue  # only objects seen for the first time take their given mask
            k = self.order[o] = len(self.order) + 1
            gt = torch.from_numpy(ann == o).float()[None]
            m = P.vos_frame_mask(gt, self.predictor.frame_size)[0].to(model.device)
            self.memories[k] = SINEMemory(self.mem_size, self.decay_ratio, fix_first_frame=True)
            self.memories[k].offer(t, 1.0, (features, self._model_mask(m)))
            entered.append(o)
        label = np.zeros(size, np.int64)
        out = {"given": given, "scores": {}, "shots": {}, "present": {}, "presence": {},
               "entered": entered}
        if self.memories:
            refs = [(k, ref) for k, memory in self.memories.items()
                    for ref in memory.references()]
            support = model.encode_support_set(
                "vos", [f[0] for _, (f, _) in refs], [m for _, (_, m) in refs],
                labels=[k for k, _ in refs], signature=False)
            decoded = model.decode(features, support, use_id_query=True)
            objs = vos_objects(decoded, (model.pad_size, model.pad_size),
                               tuple(model_in.shape[-2:]), tuple(unit.shape[-2:]),
                               support.id_labels, self.predictor.threshold)
            masks = objs["masks"].reshape(-1, *objs["masks"].shape[-2:])
            full = F.interpolate(masks[None].float(), size, mode="nearest")[0] > 0 \
                if len(masks) else masks
            ids = {k: o for o, k in self.order.items()}
            winner = np.zeros(size, np.int64)
            for j, k in enumerate(objs["ids"].tolist()):
                score = float(objs["scores"][j])
                self.memories[k].offer(t, score, (features, self._model_mask(objs["masks"][j])))
                winner = np.maximum(winner, full[j].cpu().numpy().astype(np.int64) * k)
                o = ids[k]
                out["scores"][o], out["present"][o], out["presence"][o] = score, True, score
                out["shots"][o] = sum(1 for kk, _ in refs if kk == k)
                if o not in entered:
                    entered.append(o)
            lut = np.zeros(len(self.order) + 1, np.int64)  # contiguous id -> object id
            for k, o in ids.items():
                lut[k] = o
            label = lut[winner]
        out["label_map"] = label
        out["memory"] = {o: self.memories[k].frames() for o, k in self.order.items()}
        return out
