# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised VOS scores J, F and J&F, exactly as davis2017-evaluation computes them.

Rules (davisvideochallenge/davis2017-evaluation; reimplemented from the reading, not copied):

* Frames (``evaluation.py`` ``DAVISEvaluation.evaluate``): the ground-truth PNGs of a sequence,
  sorted by name; the first and the last frame are not scored (``[:, 1:-1]``).
* Objects (``davis.py`` ``get_all_masks``): 255 is set to 0 in the ground truth, i.e. a void pixel
  counts as background (the semi-supervised task passes no void mask to the metrics). The object
  count K is the largest id of the *first* frame; object k is ``label == k``, k = 1..K (ids above
  K in later frames belong to no object).
* Results (``results.py`` ``Results.read_masks``): ``<results>/<seq>/<frame>.png`` read as stored
  (palette indices); the result's object count is its largest id over the scored frames; more
  than K is rejected (the official code prints a message and exits), fewer is padded with empty
  masks.
* J (``metrics.py`` ``db_eval_iou``): ``|P & G| / |P | G|``, 1 when the union is empty.
* F (``metrics.py`` ``f_measure``): boundary maps ``seg2bmap`` of P and G; tolerance
  ``ceil(0.008 * sqrt(H^2 + W^2))`` px; each map dilated (cv2) by a disk of that radius;
  precision = share of P's boundary pixels inside G's dilated boundary, recall the converse;
  P = 1, R = 0 if P has no boundary and G has one, P = 0, R = 1 the other way round, both 1 if
  neither has one; F = 2PR / (P + R), 0 if P + R = 0.
* Per object over its scored frames (``utils.py`` ``db_statistics``): Mean = nanmean, Recall =
  nanmean(value > 0.5), Decay = nanmean(bin 0) - nanmean(bin 3) with the 4 overlapping bins
  ``v[i_b : i_{b+1} + 1]``, ``i = round(linspace(1, N, 5) + 1e-10) - 1``.
* Global (``evaluation_method.py``): every column is the mean over all objects of all sequences;
  J&F-Mean = (J-Mean + F-Mean) / 2 (``DAVISScores``; the CSVs and tables: ``davis_report.py``).
* DAVIS 2016 (no upstream mode; the patch of davis2017-evaluation issue #4 that SINE vendors):
  the sequences of ``ImageSets/2016/<set>.txt`` with all objects merged into one (label > 0);
  we merge the result's ids the same way (the patch leaves the result reader unchanged, which
  rejects any result id above 1).

Our deviations are errors where the official code exits with status 0, crashes, or returns NaN:
too many objects, a missing result file or folder, frames of different sizes, fewer than 3 frames.
"""

import itertools
import logging
import os
from collections import OrderedDict
from glob import glob
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tqdm import tqdm

from .davis_metrics import (
    VOSEvaluationError, db_eval_iou, db_statistics, f_measure, read_label_png,
)
from .davis_report import (
    DAVISScores, write_davis_csvs,
)

logger = logging.getLogger(__name__)

__all__ = ["VOSEvaluator", "evaluate_davis"]

VOID_LABEL = 255
README = "datasets/README.md"


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class VOSEvaluator(DatasetEvaluator):
    """J&F of streamed per-frame label maps, with the davis2017-evaluation rules (module docs).

    Each input describes one frame: ``"video"`` (str), ``"frame_index"`` (int, 0-based),
    ``"num_frames"`` (int) and the ground truth as ``"gt"`` ((H, W) label array) or ``"gt_file"``
    (its PNG); optional ``"frame"`` (name, for messages). Each output holds ``"label_map"`` ((H, W)
    object ids), needed on every frame but the first and the last. A video's frames may arrive in
    any order but must all be processed on one process (its first frame fixes the object count).
    """

    def __init__(self, dataset_name: Optional[str] = None, *, single_object: Optional[bool] = None,
                 distributed: bool = True, output_dir: Optional[str] = None,
                 split: Optional[str] = None, video_order: Optional[Sequence[str]] = None):
        """
        Args:
            dataset_name: a registered VOS dataset; its metadata gives ``single_object``
                (DAVIS 2016) and ``split`` and must have full ground truth.
            single_object: merge all ids into one object (DAVIS 2016 protocol).
            distributed: gather videos from all processes before scoring.
            output_dir: if set, the main process writes the two official CSVs there.
            split: the ``<set>`` of the CSV names (default "val").
            video_order: order of the CSV rows (default: sorted names).
        """
        meta = MetadataCatalog.get(dataset_name) if dataset_name else None
        if meta is not None and meta.get("has_full_gt") is False:
            raise VOSEvaluationError(
                f"{dataset_name} has no public ground truth for its frames; write the results with "
                "diffews.data.datasets.vos and score them on the evaluation server")
        if single_object is None:
            single_object = bool(meta.get("single_object", False)) if meta is not None else False
        self.single_object = single_object
        self.split = split or (meta.get("split", "val") if meta is not None else "val")
        self._distributed, self._output_dir = distributed, output_dir
        self._video_order = list(video_order) if video_order is not None else None
        self.reset()

    def reset(self):
        # video -> {"K": int | None, "T": int, "scores": {t: (J (K,), F (K,))}, "pending": [...]}
        self._videos: Dict[str, Dict] = {}

    def process(self, inputs: List[Dict], outputs: List[Dict]):
        if len(inputs) != len(outputs):
            raise VOSEvaluationError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            for key in ("video", "frame_index", "num_frames"):
                if key not in inp:
                    raise KeyError(f"VOSEvaluator needs inputs[{key!r}]; got keys {sorted(inp)}")
            video, t, T = str(inp["video"]), int(inp["frame_index"]), int(inp["num_frames"])
            frame = inp.get("frame", t)
            if T < 3:
                raise VOSEvaluationError(f"{video}: {T} frames; the semi-supervised protocol "
                                         "scores frames 1..T-2 and needs at least 3")
            if not 0 <= t < T:
                raise VOSEvaluationError(f"{video}: frame_index {t} outside 0..{T - 1}")
            state = self._videos.setdefault(video, {"K": None, "T": T, "scores": {},
                                                    "pending": []})
            if state["T"] != T:
                raise VOSEvaluationError(f"{video}: num_frames {T} differs from {state['T']} given "
                                         "with an earlier frame")
            if t == T - 1:
                continue  # the last frame is not scored and fixes nothing
            gt = self._gt(inp, video, frame)
            if t == 0:
                state["K"] = 1 if self.single_object else int(gt.max(initial=0))
                for args in state.pop("pending"):
                    self._score(video, state, *args)
                state["pending"] = []
                continue
            if "label_map" not in out or out["label_map"] is None:
                raise KeyError(f"{video} frame {frame}: VOSEvaluator needs outputs['label_map']")
            args = (t, frame, gt, _to_numpy(out["label_map"]).astype(np.int64))
            if state["K"] is None:
                state["pending"].append(args)
            else:
                self._score(video, state, *args)

    @staticmethod
    def _gt(inp: Dict, video: str, frame) -> np.ndarray:
        if "gt" in inp and inp["gt"] is not None:
            gt = _to_numpy(inp["gt"]).astype(np.int64)
        elif "gt_file" in inp:
            gt = read_label_png(inp["gt_file"])
        else:
            raise KeyError(f"{video} frame {frame}: VOSEvaluator needs inputs['gt'] or "
                           "inputs['gt_file']")
        gt[gt == VOID_LABEL] = 0  # void counts as background in the semi-supervised task
        return gt

    def _score(self, video: str, state: Dict, t: int, frame, gt: np.ndarray, pred: np.ndarray):
        if pred.shape != gt.shape:
            raise VOSEvaluationError(f"{video} frame {frame}: result {pred.shape} and ground truth "
                                     f"{gt.shape} differ in size")
        K = state["K"]
        if self.single_object:
            gt_m, pred_m = (gt > 0)[None], (pred > 0)[None]
        else:
            top = int(pred.max(initial=0))
            if top > K:
                raise VOSEvaluationError(
                    f"{video}: the result for frame {frame} has object id {top} but the ground "
                    f"truth's first frame has {K} object(s); results may not hold more objects")
            ids = np.arange(1, K + 1)[:, None, None]
            gt_m, pred_m = gt[None] == ids, pred[None] == ids  # (K, H, W)
        j = np.asarray(db_eval_iou(gt_m, pred_m), dtype=np.float64).reshape(-1)
        f = np.array([f_measure(pred_m[k], gt_m[k]) for k in range(len(gt_m))], np.float64)
        state["scores"][t] = (j, f)

    def summarize(self, videos: Optional[Dict[str, Dict]] = None) -> DAVISScores:
        """Per-object statistics and global means of the processed videos (this process)."""
        videos = self._videos if videos is None else videos
        order = self._video_order if self._video_order is not None else sorted(videos)
        missing = sorted(set(videos) - set(order))
        if missing:
            raise VOSEvaluationError(f"videos {missing[:5]} were processed but are not in the "
                                     "video order")
        rows = []
        for video in order:
            state = videos.get(video)
            if state is None:
                raise VOSEvaluationError(f"{video}: no frame of this video was processed")
            if state["K"] is None:
                raise VOSEvaluationError(f"{video}: its first frame (object count) was never "
                                         "processed on the process that got its other frames")
            todo = sorted(set(range(1, state["T"] - 1)) - set(state["scores"]))
            if todo:
                raise VOSEvaluationError(f"{video}: frames {todo[:10]} of 1..{state['T'] - 2} "
                                         "were not scored")
            scored = [state["scores"][t] for t in range(1, state["T"] - 1)]
            j_all = np.stack([s[0] for s in scored], axis=1)  # (K, T - 2)
            f_all = np.stack([s[1] for s in scored], axis=1)
            for k in range(state["K"]):
                rows.append((f"{video}_{k + 1}", *db_statistics(j_all[k]),
                             *db_statistics(f_all[k])))
        return DAVISScores(rows, len(order))

    def evaluate(self):
        """Returns ``{"vos": {"J&F", "J", "F", "J-Recall", "J-Decay", "F-Recall", "F-Decay",
        "num_objects", "num_videos"}}`` (x100) on the main process, None elsewhere."""
        for video, state in self._videos.items():
            if state["pending"]:
                raise VOSEvaluationError(f"{video}: frames arrived but its first frame did not; "
                                         "a video must be processed on one process")
        videos = {v: {k: s[k] for k in ("K", "T", "scores")} for v, s in self._videos.items()}
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(videos, dst=0)
            if not comm.is_main_process():
                return None
            videos = _merge(gathered)
        scores = self.summarize(videos)
        if self._output_dir:
            write_davis_csvs(scores, self._output_dir, self.split)
        res = scores.as_percent()
        logger.info("J&F %.2f  J %.2f  F %.2f  (%d objects in %d videos)", res["J&F"], res["J"],
                    res["F"], res["num_objects"], res["num_videos"])
        return OrderedDict(vos=res)


def _merge(parts: List[Dict[str, Dict]]) -> Dict[str, Dict]:
    out: Dict[str, Dict] = {}
    for video, state in itertools.chain(*(p.items() for p in parts)):
        if video not in out:
            out[video] = {"K": state["K"], "T": state["T"], "scores": dict(state["scores"])}
        else:
            if out[video]["K"] is None or state["K"] is None or out[video]["K"] != state["K"]:
                raise VOSEvaluationError(f"{video}: processed on several processes; a video must "
                                         "be processed on one process")
            out[video]["scores"].update(state["scores"])
    return out


def evaluate_davis(davis_root: str, results_dir: str, subset: str = "val", year: str = "2017",
                   sequences: Optional[Sequence[str]] = None,
                   progress: bool = True) -> DAVISScores:
    """Score ``<results_dir>/<seq>/<frame>.png`` against a DAVIS tree, as evaluation_method.py
    with ``--task semi-supervised`` does (``year="2016"``: the 2016 list, one merged object).

    Args:
        davis_root: folder with ``JPEGImages/480p``, ``Annotations/480p`` and ``ImageSets``.
        results_dir: folder with one sub-folder of palette PNGs per sequence.
        subset: ``ImageSets/<year>/<subset>.txt`` ("val" or "train"; test-dev has no ground truth).
        sequences: score only these (default: the whole list, in its order).
    Raises:
        VOSEvaluationError: a missing folder, list, sequence or frame, or a bad result (message
            names it).
    """
    year = str(year)
    if year not in ("2016", "2017"):
        raise VOSEvaluationError(f"year must be 2016 or 2017, got {year!r}")
    if not os.path.isdir(davis_root):
        raise VOSEvaluationError(f"{davis_root}: DAVIS folder not found (JPEGImages/480p, "
                                 f"Annotations/480p, ImageSets); see {README}")
    list_file = os.path.join(davis_root, "ImageSets", year, f"{subset}.txt")
    if not os.path.isfile(list_file):
        raise VOSEvaluationError(f"{list_file}: sequence list not found; see {README}")
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip()]
    if sequences is not None:
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise VOSEvaluationError(f"sequences {unknown} are not in {list_file}")
        names = [s for s in names if s in set(sequences)]
    if not os.path.isdir(results_dir):
        raise VOSEvaluationError(f"{results_dir}: results folder not found")
    ev = VOSEvaluator(single_object=(year == "2016"), distributed=False, split=subset,
                      video_order=names)
    for seq in tqdm(names, desc=f"DAVIS {year} {subset}", disable=not progress):
        images = glob(os.path.join(davis_root, "JPEGImages", "480p", seq, "*.jpg"))
        gts = sorted(glob(os.path.join(davis_root, "Annotations", "480p", seq, "*.png")))
        if not images:
            raise VOSEvaluationError(f"{os.path.join(davis_root, 'JPEGImages', '480p', seq)}: "
                                     f"no frames of sequence {seq}")
        if len(gts) != len(images):
            raise VOSEvaluationError(
                f"{seq}: {len(images)} frames but {len(gts)} ground-truth masks; scoring needs "
                "every frame annotated (test-dev is scored by the server)")
        res_dir = os.path.join(results_dir, seq)
        if not os.path.isdir(res_dir):
            raise VOSEvaluationError(f"{res_dir}: the results hold no folder for sequence {seq}")
        frames = [os.path.splitext(os.path.basename(p))[0] for p in gts]
        for t, (frame, gt) in enumerate(zip(frames, gts)):
            out = {}
            if 0 < t < len(gts) - 1:
                out["label_map"] = read_label_png(os.path.join(res_dir, frame + ".png"))
            ev.process([{"video": seq, "frame": frame, "frame_index": t,
                         "num_frames": len(gts), "gt_file": gt}], [out])
    return ev.summarize()
