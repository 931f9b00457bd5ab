# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The few-shot data contract shared by every benchmark (real and synthetic).

Registered datasets (``DatasetCatalog.get(name)``) are lists of **image records**::

    {
        "image_id": str,         # the ID used in episode files: file name without directory and
                                 # extension ("<class folder>/<name>" for FSS-1000)
        "file_name": str,        # image path (absent for the synthetic benchmark)
        "mask_file": str,        # label PNG path (label formats "class_value" and "threshold128")
        "segmentations": {int: [segm, ...]},   # LVIS: class id -> COCO polygons / RLEs
        "height": int, "width": int,           # when known without reading the image
        "classes": [int],        # class ids (split-file numbering) the image is listed under
        "synthetic": dict,       # synthetic benchmark: the parameters that render the sample
        "crowd": {int: [segm, ...]},           # custom COCO layout: crowd regions (query: ignore)
        "label_offset": int, "ignore_label": int,  # custom semseg layout (label "class_index")
    }

and their ``MetadataCatalog`` entry carries ``benchmark``, ``fold``, ``split`` ("train"/"test"),
``class_ids`` (the fold's classes, split-file numbering), ``class_names``, ``label_format`` (one
of ``LABEL_FORMATS``), ``ignore_boundary`` (PASCAL: label 255 is ignored), ``num_episodes``
(protocol count, test splits), ``evaluator_type="fss"`` and ``ignore_label=255``.

An **episode** is ``{"query": ID, "supports": [ID, ...], "class_id": int}`` (the JSON written by
``tools/make_episodes.py``). ``load_sample`` turns a record and an episode's class into an image
and a binary label, the same way for the query and the supports.
"""

from typing import Dict, Tuple

import numpy as np

from ..utils.image import ImageReadError, read_grey, read_image, read_label

IGNORE = 255
LABEL_FORMATS = ("class_value", "threshold128", "polygons", "synthetic")
# custom datasets (datasets/custom.py): "class_index" (semantic-segmentation PNG, class = value -
# record["label_offset"]), "binary" (0/1 or 0/255 mask), "coco_instances" (COCO json instances,
# crowd regions ignored in the query label)
CUSTOM_LABEL_FORMATS = ("class_index", "binary", "coco_instances")
LABEL_FORMATS = LABEL_FORMATS + CUSTOM_LABEL_FORMATS


class BadSampleError(ImageReadError):
    """A record's image or label file is missing, unreadable or inconsistent with the other.

    The message names the file; ``record_id`` is the record's ``image_id`` (training drops the
    record when ``DATALOADER.SKIP_BAD_SAMPLES`` is set) and ``path`` the file at fault.
    """

    def __init__(self, message: str, record_id: str = "", path: str = ""):
        super().__init__(message)
        self.record_id, self.path = record_id, path


def load_sample(record: Dict, class_id: int, label_format: str, ignore_boundary: bool = False
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Image and binary label of one record for one class.

    Args:
        record: an image record (see the module docstring).
        class_id: the episode class, split-file numbering.
        label_format:
            * "class_value": label PNG whose pixel is ``class_id + 1`` on the class (COCO-20i,
              PASCAL-5i; HSNet masks);
            * "threshold128": grayscale PNG, foreground where >= 128 (FSS-1000);
            * "polygons": union of ``record["segmentations"][class_id]`` (LVIS-92i);
            * "synthetic": rendered by ``diffews.data.datasets.synthetic.render``;
            * "class_index", "binary", "coco_instances": custom datasets, see
              ``diffews.data.datasets.custom.custom_label``.
        ignore_boundary: mark label value 255 as ignore (PASCAL-5i boundaries).
    Returns:
        image (H, W, 3) uint8 RGB, label (H, W) uint8 with 1 = class, 0 = other, 255 = ignore.
    Raises:
        BadSampleError: the image or label file is missing or unreadable, or the two differ in
            size; the message names the file.
    """
    if label_format == "synthetic":
        from .datasets.synthetic import render

        return render(record, class_id)
    record_id = str(record.get("image_id", ""))
    try:
        return _load_file_sample(record, class_id, label_format, ignore_boundary)
    except BadSampleError:
        raise
    except ImageReadError as e:  # "<path>: ..." already
        raise BadSampleError(str(e), record_id, str(e).split(": ", 1)[0]) from e
    except OSError as e:  # PIL's own open (a missing or corrupt FSS-1000 mask)
        path = e.filename or record.get("mask_file") or record.get("file_name", "")
        what = "no such file" if isinstance(e, FileNotFoundError) else f"not a readable image ({e})"
        raise BadSampleError(f"{path}: {what}", record_id, str(path)) from e


def _load_file_sample(record: Dict, class_id: int, label_format: str, ignore_boundary: bool
                      ) -> Tuple[np.ndarray, np.ndarray]:
    image = read_image(record["file_name"])
    if label_format == "class_value":
        raw = read_label(record["mask_file"])
        label = (raw == class_id + 1).astype(np.uint8)
        if ignore_boundary:
            label[raw == IGNORE] = IGNORE
    elif label_format == "threshold128":
        raw = read_grey(record["mask_file"])
        label = (raw >= 128).astype(np.uint8)
    elif label_format == "polygons":
        from pycocotools import mask as mask_util

        h, w = image.shape[:2]
        label = np.zeros((h, w), np.uint8)
        for segm in record["segmentations"][class_id]:
            rles = mask_util.frPyObjects(segm, h, w) if isinstance(segm, list) else segm
            label |= mask_util.decode(
                mask_util.merge(rles) if isinstance(rles, list) else rles
            ).astype(np.uint8)
    elif label_format in CUSTOM_LABEL_FORMATS:
        from .datasets.custom_labels import custom_label

        label = custom_label(record, class_id, label_format, image.shape[:2], ignore_boundary)
    else:
        raise ValueError(f"unknown label_format {label_format!r}; expected one of {LABEL_FORMATS}")
    if label.shape != image.shape[:2]:
        path = record.get("mask_file", record["image_id"])
        raise BadSampleError(f"{path}: label {label.shape} and image {image.shape[:2]} differ in "
                             "size", str(record["image_id"]), str(path))
    return image, label
