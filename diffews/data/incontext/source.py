# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""In-context samples from one registered dataset: a reference image and a target image.

The draw of the original's ``COCOPanoDataset`` / ``COCOInsDataset`` / ``O365Dataset``
``__getitem__`` (aim-uofa/SINE ``sine/data/coco.py`` l.96-116 and 217-238, ``o365.py``
l.274-295), with an explicit generator:

1. a class, uniformly among the classes that occur in the dataset (crowds included);
2. ``crop pair`` with probability ``crop_ratio`` (0.5): the target is the reference image itself,
   augmented independently; otherwise another image with that class (the reference image again
   when the class has a single image);
3. the reference keeps every class of its image, the target only the classes left in the
   augmented reference; a sample where either side has no instance is drawn again from step 1.

One reference image per sample, holding all of its instances (the ID queries) and classes (the
class queries). Instance ids are panoptic segment ids or annotation ids: a crop pair shares its
ids, two different images share none (COCO / O365 annotation ids are unique per file; panoptic
segment ids are only unique per image, so two panoptic images may share one by chance, as in
the original).

**Sample schema** (one dict per sample, what the model's training forward reads)::

    {"ref_dict": image, "tar_dict": image, "task": "panoptic" | "instance", "source": name,
     "crop_pair": bool}
    image = {"file_name", "image_id", "height", "width" (the file's size),
             "image": (3, S, S) float32, ImageNet-normalised RGB, zero-padded bottom/right,
             "instances": Instances((h, w) augmented size) with gt_classes (N,) int64 dataset
                 class, ins_ids (N,) int64, gt_masks (N, S, S) bool padded, gt_boxes}

``diffews.modeling.sine.prepare_targets`` turns the ``instances`` into the criterion's targets.
"""

import logging
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.common import DatasetFromList

from ..records import BadSampleError
from .augment import IMAGENET_MEAN, IMAGENET_STD, draw_transforms, to_model_image
from .instances import annotation_instances, panoptic_instances, read_rgb

logger = logging.getLogger(__name__)

__all__ = ["InContextSource", "AugmentSettings", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 1000  # draws without a sample before giving up (the original loops forever)


class AugmentSettings:
    """The augmentation and image settings shared by every source (``INPUT.SINE_TRAIN``).

    Args:
        image_size: working size S (896).
        min_scale, max_scale: scale range of the large-scale jitter (0.1, 2.0).
        flip: "horizontal" | "vertical" | "none".
        crop_ratio: probability that the target is the reference image itself (0.5).
        mean, std: normalisation of the /255 RGB image.
    """

    def __init__(self, image_size: int = 896, min_scale: float = 0.1, max_scale: float = 2.0,
                 flip: str = "horizontal", crop_ratio: float = 0.5, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        if not 0 < min_scale <= max_scale or not 0 <= crop_ratio <= 1 or image_size < 1:
            raise ValueError(f"bad SINE augmentation settings: image_size {image_size}, scale "
                             f"{min_scale}..{max_scale}, crop_ratio {crop_ratio}")
        self.image_size, self.min_scale, self.max_scale = image_size, min_scale, max_scale
        self.flip, self.crop_ratio, self.mean, self.std = flip, crop_ratio, mean, std


def _record_classes(record: Dict, task: str) -> List[int]:
    items = record["segments_info"] if task == "panoptic" else record["annotations"]
    return sorted({int(x["category_id"]) for x in items})


class InContextSource:
    """Reference/target samples from one registered SINE source.

    Args:
        name: a dataset registered with ``sine_task`` metadata (``diffews/data/datasets/sine_*``),
            or any registered dataset of the same record format with ``task`` given.
        settings: the augmentation settings.
        task: "panoptic" or "instance"; default the dataset's ``sine_task`` metadata.
        records: the records (default ``DatasetCatalog.get(name)``).
        mask_format: instance sources: "auto" or "bitmask" (``annotation_instances``); default
            the dataset's ``sine_mask_format`` metadata, else "auto".
    """

    def __init__(self, name: str, settings: AugmentSettings, task: Optional[str] = None,
                 records: Optional[List[Dict]] = None, mask_format: Optional[str] = None):
        self.name, self.settings = name, settings
        meta = MetadataCatalog.get(name)
        self.task = task or meta.get("sine_task", None)
        self.mask_format = mask_format or meta.get("sine_mask_format", "auto")
        if self.task not in ("panoptic", "instance"):
            raise ValueError(f"{name}: SINE task must be 'panoptic' or 'instance', got "
                             f"{self.task!r} (register it with sine_task metadata)")
        records = DatasetCatalog.get(name) if records is None else records
        by_class = defaultdict(list)
        for i, record in enumerate(records):
            for c in _record_classes(record, self.task):
                by_class[c].append(i)
        if not by_class:
            raise ValueError(f"{name}: no image has an annotated instance")
        self.classes = sorted(by_class)
        self.images_of = {c: np.asarray(v, dtype=np.int64) for c, v in by_class.items()}
        self.records = DatasetFromList(records, copy=True, serialize=True)
        logger.info("%s (%s): %d images, %d classes", name, self.task, len(records),
                    len(self.classes))

    def _pair(self, rng: np.random.RandomState) -> Tuple[Dict, Dict, bool]:
        cls = self.classes[rng.randint(len(self.classes))]
        crop_pair = rng.uniform(0.0, 1.0) < self.settings.crop_ratio
        images = self.images_of[cls]
        ref = int(images[rng.randint(len(images))])
        if crop_pair or len(images) < 2:  # a class seen in one image: that image twice
            return self.records[ref], self.records[ref], True
        while True:
            tar = int(images[rng.randint(len(images))])
            if tar != ref:
                return self.records[ref], self.records[tar], crop_pair

    def process(self, record: Dict, rng: np.random.RandomState, keep) -> Dict:
        """One side of a sample: read, augment, instances of the ``keep`` classes."""
        s = self.settings
        image = read_rgb(record["file_name"], record.get("image_id", ""))
        try:
            utils.check_image_size(record, image)
        except ValueError as e:  # detectron2's SizeMismatchError: json size != file size
            raise BadSampleError(f"{record['file_name']}: {e}", str(record.get("image_id", "")),
                                 record["file_name"]) from e
        transforms, shape = draw_transforms(rng, image.shape[0], image.shape[1], s.image_size,
                                            s.min_scale, s.max_scale, s.flip)
        image = transforms.apply_image(image)
        if self.task == "panoptic":
            inst = panoptic_instances(record, transforms, shape, set(keep), s.image_size)
        else:
            inst = annotation_instances(record, transforms, shape, set(keep), s.image_size,
                                        self.mask_format)
        return {"file_name": record["file_name"], "image_id": record.get("image_id"),
                "height": record["height"], "width": record["width"],
                "image": to_model_image(image, s.image_size, s.mean, s.std), "instances": inst}

    def draw(self, rng: np.random.RandomState) -> Dict:
        """One sample (schema in the module docstring)."""
        for _ in range(MAX_ATTEMPTS):
            ref_record, tar_record, crop_pair = self._pair(rng)
            ref = self.process(ref_record, rng, _record_classes(ref_record, self.task))
            keep = ref["instances"].gt_classes.tolist()
            tar = self.process(tar_record, rng, keep)
            if len(ref["instances"]) and len(tar["instances"]):
                return {"ref_dict": ref, "tar_dict": tar, "task": self.task, "source": self.name,
                        "crop_pair": bool(crop_pair)}
        raise RuntimeError(f"{self.name}: no sample with instances on both sides in "
                           f"{MAX_ATTEMPTS} draws; are the masks empty?")
