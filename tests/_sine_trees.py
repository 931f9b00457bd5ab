# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Tiny trees of SINE's training sources in their on-disk formats, for tests.

Written from the formats themselves, independently of the readers (paths from aim-uofa/SINE
``TRAINING.md``, Mask2Former's ``datasets/README.md`` and ``prepare_ade20k_{pan,ins}_seg.py``,
SAM-Objects365's README, PACO-LVIS json)::

    coco/annotations/panoptic_train2017.json   coco/panoptic_train2017/*.png   coco/train2017/*.jpg
    coco/annotations/instances_train2017.json
    ADEChallengeData2016/ade20k_panoptic_train.json   ADEChallengeData2016/ade20k_panoptic_train/
    ADEChallengeData2016/ade20k_instance_train.json   ADEChallengeData2016/images/training/*.jpg
    Objects365/annotations/sam_obj365_train_1742k.json   Objects365/images/patch0/*.jpg
    Objects365/sam_mask_json/sam_obj365_train_1742k/*.json
    paco/paco_lvis_v1_train.json   (images: coco/train2017/)

Every image is 48 x 64, grey, with axis-aligned rectangles (the instances) painted in one
saturated colour each; ``COLORS`` gives an instance's colour by its id (panoptic segment id or
annotation id), so a test can check that an augmented mask still covers its colour.
"""

import json
import os
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

H, W = 48, 64
# image id -> objects (class name, box x0, y0, x1, y1 exclusive, crowd)
SCENES = {
    1: [("cat", (4, 4, 24, 28), False), ("dog", (30, 10, 58, 40), False),
        ("cat", (40, 42, 60, 47), False)],
    2: [("cat", (8, 20, 30, 44), False), ("car", (34, 4, 60, 30), False)],
    3: [("dog", (2, 2, 30, 30), False), ("car", (36, 20, 62, 46), False)],
    4: [("cat", (10, 10, 50, 40), False), ("cat", (52, 2, 62, 12), True)],
}
STUFF_IMAGES = (1, 2)  # panoptic: the rest of these images is one "wall" stuff segment
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
           (170, 110, 40), (128, 0, 0), (0, 0, 128), (128, 128, 0)]
GREY = (128, 128, 128)
COCO_IDS = {"car": 3, "cat": 17, "dog": 18, "wall": 199}   # non-contiguous, as COCO's
ADE_IDS = {"car": 20, "cat": 126, "dog": 12, "wall": 0}     # 0..149, as Mask2Former's ADE json
O365_IDS = {"car": 6, "cat": 140, "dog": 93}
PACO_IDS = {"car": 41, "cat": 90, "dog": 94, "dog:ear": 300, "dog:tail": 301}
COLORS: Dict[int, Tuple[int, int, int]] = {}  # instance id -> colour, filled by the writers
BOXES: Dict[int, Tuple[int, int, int, int]] = {}  # annotation id -> box, filled by the writers


def _objects():
    """(image id, index in the image, class, box, crowd, colour) for every object."""
    k = 0
    for image_id, objs in SCENES.items():
        for j, (cls, box, crowd) in enumerate(objs):
            yield image_id, j, cls, box, crowd, PALETTE[k % len(PALETTE)]
            k += 1


def box_mask(box) -> np.ndarray:
    m = np.zeros((H, W), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def image_of(image_id: int) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[:] = GREY
    for iid, _, _, box, _, color in _objects():
        if iid == image_id:
            img[box_mask(box)] = color
    return img


def _write_jpg(path: str, image_id: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image_of(image_id)).save(path, quality=95)


def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _name(image_id: int) -> str:
    return f"{image_id:012d}"


def _poly(box) -> List[List[float]]:
    x0, y0, x1, y1 = box
    return [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0),
             float(y1)]]


def _bbox(box) -> List[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _uncompressed_rle(mask: np.ndarray) -> Dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _panoptic(root: str, json_path: str, png_dir: str, image_dir: str, ids: Dict) -> Dict:
    """COCO panoptic json + RGB id PNGs + JPEGs; returns segment id -> (class, crowd)."""
    anns, images, info = [], [], {}
    for image_id in SCENES:
        seg_img = np.zeros((H, W), np.uint32)
        segments, covered = [], np.zeros((H, W), bool)
        for iid, j, cls, box, crowd, color in _objects():
            if iid != image_id:
                continue
            sid = ids[cls] * 1000 + image_id * 10 + j + 1
            seg_img[box_mask(box)] = sid
            covered |= box_mask(box)
            segments.append({"id": sid, "category_id": ids[cls], "iscrowd": int(crowd),
                             "bbox": _bbox(box), "area": int(box_mask(box).sum())})
            COLORS[sid], info[sid] = color, (cls, crowd)
        if image_id in STUFF_IMAGES:
            sid = ids["wall"] * 1000 + image_id * 10 + 9
            seg_img[~covered] = sid
            segments.append({"id": sid, "category_id": ids["wall"], "iscrowd": 0,
                             "bbox": [0, 0, W, H], "area": int((~covered).sum())})
            COLORS[sid], info[sid] = GREY, ("wall", False)
        rgb = np.stack([seg_img % 256, seg_img // 256 % 256, seg_img // 65536], -1)
        os.makedirs(os.path.join(root, png_dir), exist_ok=True)
        Image.fromarray(rgb.astype(np.uint8)).save(os.path.join(root, png_dir,
                                                                _name(image_id) + ".png"))
        _write_jpg(os.path.join(root, image_dir, _name(image_id) + ".jpg"), image_id)
        images.append({"id": image_id, "file_name": _name(image_id) + ".jpg", "height": H,
                       "width": W})
        anns.append({"image_id": image_id, "file_name": _name(image_id) + ".png",
                     "segments_info": segments})
    cats = [{"id": v, "name": k, "isthing": int(k != "wall")} for k, v in ids.items()]
    _dump(os.path.join(root, json_path), {"images": images, "annotations": anns,
                                          "categories": cats})
    return info


def write_coco_panoptic(root: str) -> Dict:
    return _panoptic(root, "coco/annotations/panoptic_train2017.json", "coco/panoptic_train2017",
                     "coco/train2017", COCO_IDS)


def write_ade20k_panoptic(root: str) -> Dict:
    return _panoptic(root, "ADEChallengeData2016/ade20k_panoptic_train.json",
                     "ADEChallengeData2016/ade20k_panoptic_train",
                     "ADEChallengeData2016/images/training", ADE_IDS)


def _instances(ids: Dict, segm: str, first_id: int) -> Tuple[List[Dict], Dict]:
    """Annotations ("polygon", "rle" compressed or "sam" = none, masks elsewhere); crowds are
    uncompressed RLE. Returns (annotations, annotation id -> (class, crowd))."""
    anns, info = [], {}
    for k, (iid, j, cls, box, crowd, color) in enumerate(_objects()):
        aid = first_id + k
        ann = {"id": aid, "image_id": iid, "category_id": ids[cls], "bbox": _bbox(box),
               "area": int(box_mask(box).sum()), "iscrowd": int(crowd)}
        if crowd:
            ann["segmentation"] = _uncompressed_rle(box_mask(box))
        elif segm == "polygon":
            ann["segmentation"] = _poly(box)
        elif segm == "rle":
            rle = mask_util.encode(np.asfortranarray(box_mask(box).astype(np.uint8)))
            ann["segmentation"] = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
        anns.append(ann)
        COLORS[aid], info[aid], BOXES[aid] = color, (cls, crowd), box
    return anns, info


def write_coco_instances(root: str) -> Dict:
    anns, info = _instances(COCO_IDS, "polygon", 501)
    images = []
    for image_id in SCENES:
        _write_jpg(os.path.join(root, "coco/train2017", _name(image_id) + ".jpg"), image_id)
        images.append({"id": image_id, "file_name": _name(image_id) + ".jpg", "height": H,
                       "width": W})
    cats = [{"id": v, "name": k} for k, v in COCO_IDS.items() if k != "wall"]
    _dump(os.path.join(root, "coco/annotations/instances_train2017.json"),
          {"images": images, "annotations": anns, "categories": cats})
    return info


def write_ade20k_instances(root: str) -> Dict:
    """Mask2Former's ade20k_instance json: string image ids, compressed RLE masks."""
    anns, info = _instances(ADE_IDS, "rle", 1)
    for a in anns:
        a["image_id"] = f"ADE_train_{a['image_id']:08d}"
    images = []
    for image_id in SCENES:
        name = f"ADE_train_{image_id:08d}"
        _write_jpg(os.path.join(root, "ADEChallengeData2016/images/training", name + ".jpg"),
                   image_id)
        images.append({"id": name, "file_name": name + ".jpg", "height": H, "width": W})
    cats = [{"id": v, "name": k} for k, v in ADE_IDS.items() if k != "wall"]
    _dump(os.path.join(root, "ADEChallengeData2016/ade20k_instance_train.json"),
          {"images": images, "annotations": anns, "categories": cats})
    return info


def write_o365_sam(root: str, json_name: str = "sam_obj365_train_1742k") -> Dict:
    """Detection json + one SAM mask json per image (uncompressed RLE by annotation id)."""
    anns, info = _instances(O365_IDS, "sam", 9001)
    o365 = os.path.join(root, "Objects365")
    images = []
    for image_id in SCENES:
        rel = f"images/patch0/objects365_v2_{image_id:08d}.jpg"
        _write_jpg(os.path.join(o365, rel), image_id)
        seg_file = f"objects365_v2_{image_id:08d}.json"
        images.append({"id": image_id, "file_name": rel, "height": H, "width": W,
                       "segmentation_file": seg_file})
        segs = {str(a["id"]): _uncompressed_rle(box_mask(BOXES[a["id"]]))
                for a in anns if a["image_id"] == image_id}
        _dump(os.path.join(o365, "sam_mask_json", json_name, seg_file),
              {"image_id": image_id, "segmentations": segs})
    cats = [{"id": v, "name": k} for k, v in O365_IDS.items()]
    _dump(os.path.join(o365, "annotations", json_name + ".json"),
          {"images": images, "annotations": anns, "categories": cats})
    return info


def write_paco(root: str) -> Dict:
    """PACO-LVIS json (LVIS format: no iscrowd, file_name with the COCO split folder) over
    coco/train2017, plus two object parts inside each dog (an ear and a 1-pixel tail)."""
    anns, info = _instances(PACO_IDS, "polygon", 7001)
    anns = [a for a in anns if not a["iscrowd"]]
    info = {k: v for k, v in info.items() if not v[1]}
    for a in anns:
        del a["iscrowd"]
    next_id = 7100
    for a in list(anns):
        if a["category_id"] != PACO_IDS["dog"]:
            continue
        x, y = int(a["bbox"][0]), int(a["bbox"][1])
        # an ear (6 x 6) and a 1-pixel tail, which a downscale leaves without pixels
        for part, box in (("dog:ear", (x + 2, y + 2, x + 8, y + 8)),
                          ("dog:tail", (x + 20, y + 20, x + 21, y + 21))):
            anns.append({"id": next_id, "image_id": a["image_id"],
                         "category_id": PACO_IDS[part], "bbox": _bbox(box),
                         "area": int(box_mask(box).sum()), "segmentation": _poly(box)})
            info[next_id], BOXES[next_id] = (part, False), box
            COLORS[next_id] = COLORS[a["id"]]  # parts are painted in the dog's colour
            next_id += 1
    images = []
    for image_id in SCENES:
        _write_jpg(os.path.join(root, "coco/train2017", _name(image_id) + ".jpg"), image_id)
        images.append({"id": image_id, "file_name": f"train2017/{_name(image_id)}.jpg",
                       "height": H, "width": W})
    cats = [{"id": v, "name": k} for k, v in PACO_IDS.items()]
    _dump(os.path.join(root, "paco/paco_lvis_v1_train.json"),
          {"images": images, "annotations": anns, "categories": cats})
    return info
