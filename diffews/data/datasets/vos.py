# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Semi-supervised VOS benchmarks in their official layouts: ``davis17_val``,
``davis17_test_dev``, ``davis16_val``, ``ytvos18_valid`` (registered on import, read on load).

Trees under the root (``$DETECTRON2_DATASETS``, default ``datasets``; datasets/README.md)::

    DAVIS17/trainval/{JPEGImages,Annotations}/480p/<seq>/<frame>.{jpg,png}
    DAVIS17/trainval/ImageSets/{2016,2017}/val.txt     # 2016/val.txt: the DAVIS 2016 val list
    DAVIS17/test-dev/{JPEGImages,Annotations}/480p/<seq>/...,  ImageSets/2017/test-dev.txt
    YouTubeVOS18/valid/{JPEGImages,Annotations}/<vid>/..., valid/meta.json
    YouTubeVOS18/all_frames/valid_all_frames/JPEGImages/<vid>/<frame>.jpg   # every frame

One record per video::

    {"video": str, "frames": [frame names, sorted], "file_names": [jpg per frame],
     "annotation_files": [png or None per frame],   # every annotation on disk
     "given_frames": [frame indices],  # the annotations the protocol gives as input
     "objects": {object id: frame index where it first appears in the given annotations},
     "save_frames": [frame indices whose results are written],
     "merge_objects": bool}            # DAVIS 2016: every id > 0 is the one object

DAVIS val gives the first frame only (the other annotations are for scoring); DAVIS test-dev and
YouTube-VOS give every annotation on disk, so objects may start later. YouTube-VOS reads every
frame but writes only the frames ``meta.json`` lists (the server's frames). Annotation value 255
(void) counts as background, as in the scorer. Writing results (palette PNGs, the YouTube-VOS
zip): ``vos_results.py``.
"""

import logging
import os
from glob import glob
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.image import read_pixels
from .roots import dataset_root, MissingDataError, require
from .split_files import load_json
from .vos_results import (
    DAVIS_PALETTE,
)

logger = logging.getLogger(__name__)

__all__ = ["VOS_DATASETS", "load_davis", "load_ytvos", "read_annotation", "check_vos",
           "register_all_vos"]

VOID_LABEL = 255
# name -> (loader kind, arguments); the registered datasets
VOS_DATASETS = {
    "davis17_val": ("davis", {"year": "2017", "split": "val"}),
    "davis17_test_dev": ("davis", {"year": "2017", "split": "test-dev"}),
    "davis16_val": ("davis", {"year": "2016", "split": "val"}),
    "ytvos18_valid": ("ytvos", {"split": "valid"}),
}


def _davis_dir(root: Optional[str], split: str) -> str:
    return os.path.join(dataset_root(root), "DAVIS17", "test-dev" if split == "test-dev"
                        else "trainval")


def _labels(path: str) -> np.ndarray:
    arr = read_pixels(path)  # palette indices as stored; ImageReadError (a ValueError) naming it
    if arr.ndim != 2:
        raise ValueError(f"{path}: annotations must be indexed (palette) PNGs, got shape "
                         f"{arr.shape}")
    return arr


def read_annotation(record: Dict, index: int) -> np.ndarray:
    """The (H, W) int64 object-id map of frame ``index`` (255 -> 0; merged to 0/1 for DAVIS
    2016). Raises ValueError if the frame has no annotation."""
    path = record["annotation_files"][index]
    if path is None:
        raise ValueError(f"{record['video']}: frame {record['frames'][index]} has no annotation")
    label = _labels(require(path, "annotation PNG")).astype(np.int64)
    label[label == VOID_LABEL] = 0
    return (label > 0).astype(np.int64) if record["merge_objects"] else label


def _objects(record: Dict) -> Dict[int, int]:
    """object id -> first given frame index holding it."""
    first: Dict[int, int] = {}
    for t in record["given_frames"]:
        for obj in np.unique(read_annotation(record, t)).tolist():
            if obj != 0 and obj not in first:
                first[int(obj)] = t
    return first


def _video(video: str, frames_dir: str, ann_dir: str, given_first_only: bool,
           merge: bool) -> Dict:
    files = sorted(glob(os.path.join(frames_dir, "*.jpg")))
    if not files:
        raise MissingDataError(frames_dir, f"{frames_dir}: no .jpg frames of video {video}; see "
                                           "datasets/README.md")
    frames = [os.path.splitext(os.path.basename(f))[0] for f in files]
    anns = {os.path.splitext(os.path.basename(p))[0]: p
            for p in glob(os.path.join(ann_dir, "*.png"))}
    stray = sorted(set(anns) - set(frames))
    if stray:
        raise ValueError(f"{ann_dir}: annotations {stray[:5]} have no frame in {frames_dir}")
    annotation_files = [anns.get(f) for f in frames]
    given = [t for t, p in enumerate(annotation_files) if p is not None]
    if not given:
        raise MissingDataError(ann_dir, f"{ann_dir}: no annotation PNG for video {video}")
    if given_first_only:
        if given[0] != 0:
            raise ValueError(f"{ann_dir}: the first frame {frames[0]} has no annotation")
        given = [0]
    record = {"video": video, "frames": frames, "file_names": files,
              "annotation_files": annotation_files, "given_frames": given,
              "save_frames": list(range(len(frames))), "merge_objects": merge}
    record["objects"] = _objects(record)
    return record


def load_davis(year: str = "2017", split: str = "val", root: Optional[str] = None) -> List[Dict]:
    """Records of DAVIS ``year`` ("2016" or "2017") ``split`` ("val", "train", "test-dev")."""
    base = _davis_dir(root, split)
    list_file = require(os.path.join(base, "ImageSets", str(year), f"{split}.txt"),
                        f"DAVIS {year} {split} sequence list")
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip()]
    img_root = require(os.path.join(base, "JPEGImages", "480p"), "DAVIS 480p frames", is_dir=True)
    ann_root = require(os.path.join(base, "Annotations", "480p"), "DAVIS 480p annotations",
                       is_dir=True)
    records = [_video(n, os.path.join(img_root, n), os.path.join(ann_root, n),
                      given_first_only=split != "test-dev", merge=str(year) == "2016")
               for n in names]
    logger.info("DAVIS %s %s: %d videos", year, split, len(records))
    return records


def load_ytvos(split: str = "valid", root: Optional[str] = None) -> List[Dict]:
    """Records of YouTube-VOS 2018 ``split``: every frame of ``all_frames/<split>_all_frames``,
    the annotations of ``<split>/Annotations``, and the frames ``meta.json`` lists to write."""
    base = os.path.join(dataset_root(root), "YouTubeVOS18")
    meta_file = os.path.join(base, split, "meta.json")
    meta = load_json(meta_file)
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise ValueError(f"{meta_file}: expected {{'videos': {{video: {{'objects': ...}}}}}}")
    img_root = require(os.path.join(base, "all_frames", f"{split}_all_frames", "JPEGImages"),
                       "YouTube-VOS all-frames folder", is_dir=True)
    ann_root = require(os.path.join(base, split, "Annotations"), "YouTube-VOS annotations",
                       is_dir=True)
    records = []
    for video in sorted(videos):
        r = _video(video, os.path.join(img_root, video), os.path.join(ann_root, video),
                   given_first_only=False, merge=False)
        try:
            wanted = {str(fr) for obj in videos[video]["objects"].values() for fr in obj["frames"]}
            meta_ids = {int(k) for k in videos[video]["objects"]}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{meta_file}: video {video}: expected objects with 'frames' "
                             f"({e!r})") from e
        absent = sorted(wanted - set(r["frames"]))
        if absent:
            raise ValueError(f"{meta_file}: video {video} lists frames {absent[:5]} that are not "
                             f"in {os.path.join(img_root, video)}")
        if meta_ids != set(r["objects"]):
            logger.warning("%s: meta.json lists objects %s, the annotations hold %s", video,
                           sorted(meta_ids), sorted(r["objects"]))
        r["save_frames"] = [t for t, f in enumerate(r["frames"]) if f in wanted]
        records.append(r)
    logger.info("YouTube-VOS 2018 %s: %d videos", split, len(records))
    return records


def _listed_videos(kind: str, kwargs: Dict, root: Optional[str]):
    """(video names, frames root, annotations root) of one dataset, or raise MissingDataError."""
    if kind == "davis":
        base = _davis_dir(root, kwargs["split"])
        list_file = require(os.path.join(base, "ImageSets", kwargs["year"],
                                         f"{kwargs['split']}.txt"), "DAVIS sequence list")
        with open(list_file) as f:
            names = [line.strip() for line in f if line.strip()]
        frames, anns = (os.path.join(base, d, "480p") for d in ("JPEGImages", "Annotations"))
    else:
        base = os.path.join(dataset_root(root), "YouTubeVOS18")
        meta = load_json(os.path.join(base, kwargs["split"], "meta.json"))
        names = sorted(meta.get("videos", {})) if isinstance(meta, dict) else []
        frames = os.path.join(base, "all_frames", f"{kwargs['split']}_all_frames", "JPEGImages")
        anns = os.path.join(base, kwargs["split"], "Annotations")
    return names, require(frames, "frames folder", is_dir=True), require(
        anns, "annotations folder", is_dir=True)


def check_vos(root: Optional[str] = None, which: str = "davis", sample: int = 20) -> List[str]:
    """Missing paths of the DAVIS (``which="davis"``: 2017 val, 2017 test-dev, 2016 val) or
    YouTube-VOS (``"ytvos"``) tree: lists, folders, and every listed video's frames folder and
    annotations folder; ``sample`` evenly spaced videos per dataset are fully loaded (their given
    annotations opened). Empty list = OK; an unreadable file raises ValueError naming it."""
    names = [n for n, (kind, _) in VOS_DATASETS.items() if kind == which]
    if not names:
        raise ValueError(f"which must be 'davis' or 'ytvos', got {which!r}")
    missing: List[str] = []
    for name in names:
        kind, kwargs = VOS_DATASETS[name]
        try:
            videos, frames, anns = _listed_videos(kind, kwargs, root)
        except MissingDataError as e:
            missing.append(e.path)
            continue
        complete = []
        for video in videos:
            bad = [d for d, pattern in ((os.path.join(frames, video), "*.jpg"),
                                        (os.path.join(anns, video), "*.png"))
                   if not glob(os.path.join(d, pattern))]
            missing += bad
            if not bad:
                complete.append(video)
        step = max(1, len(complete) // max(sample, 1))
        for video in complete[::step][:sample]:
            _video(video, os.path.join(frames, video), os.path.join(anns, video),
                   given_first_only=kind == "davis" and kwargs["split"] != "test-dev",
                   merge=kwargs.get("year") == "2016")
    return sorted(set(missing))


def _loader(kind: str, kwargs: Dict):
    if kind == "davis":
        return lambda: load_davis(kwargs["year"], kwargs["split"])
    return lambda: load_ytvos(kwargs["split"])


def register_all_vos() -> None:
    """Register the VOS datasets (replacing earlier registrations). Nothing is read until a
    dataset is loaded; the root is ``$DETECTRON2_DATASETS`` at that time."""
    for name, (kind, kwargs) in VOS_DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, _loader(kind, kwargs))
        full_gt = kind == "davis" and kwargs["split"] != "test-dev"
        MetadataCatalog.get(name).set(
            evaluator_type="vos", ignore_label=VOID_LABEL, benchmark=kind,
            year=kwargs.get("year", "2018"), split=kwargs["split"],
            single_object=kwargs.get("year") == "2016", has_full_gt=full_gt,
            results_layout=kind, palette=DAVIS_PALETTE.tolist(),
        )


register_all_vos()
