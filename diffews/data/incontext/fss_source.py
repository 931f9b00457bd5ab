# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""In-context samples from a few-shot (FSS) dataset: class masks as the segments.

Any dataset registered with the few-shot record contract (``diffews/data/records.py``: records
with ``classes``, metadata ``label_format``) can feed SINE's training: your own data in the
three custom layouts (class folders, a COCO json, semantic label PNGs; ``datasets/custom.py``)
and the built-in synthetic benchmark (the quick start). Such records give one binary mask per
class and image (``records.load_sample``), no instances, so each (image, class) mask is one
segment, the way a panoptic image's "stuff" segments are; the sample is drawn by the original's
panoptic rule (aim-uofa/SINE ``sine/data/coco.py`` l.96-116 and 217-238; ``source.py`` here):

1. a class, uniformly among the classes the records list;
2. ``crop pair`` with probability ``crop_ratio``: the target is the reference image itself,
   augmented independently; otherwise another image listing that class (the same image again
   when the class has one image);
3. the reference keeps every class of its image, the target the classes left in the augmented
   reference; both sides' segments in class order; a sample with an empty side is drawn again.

A segment's instance id is ``(record index + 1) * ID_STRIDE + class``: a crop pair shares its
ids (the ID queries are matched), two images share none. The classes of an image are the
record's ``classes`` plus, for the synthetic benchmark, its distractor object's class (the image
shows that object too). Ignore pixels (crowd regions, semseg ``ignore_label``) are background,
as a crowd segment is not an instance in the original. The sample schema is ``source.py``'s.
"""

import logging
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.common import DatasetFromList
from detectron2.structures import BitMasks, Instances

from ..records import load_sample
from .augment import draw_transforms, pad_to, to_model_image
from .instances import empty_instances
from .source import MAX_ATTEMPTS, AugmentSettings

logger = logging.getLogger(__name__)

__all__ = ["FSSRecordSource", "ID_STRIDE", "image_classes"]

ID_STRIDE = 100_000  # instance id = (record index + 1) * ID_STRIDE + class


def image_classes(record: Dict) -> List[int]:
    """The classes shown in a record's image, ascending (``classes`` + a synthetic
    distractor)."""
    classes = set(int(c) for c in record["classes"])
    distractor = (record.get("synthetic") or {}).get("distractor")
    if distractor is not None:
        classes.add(int(distractor))
    return sorted(classes)


class FSSRecordSource:
    """Reference/target samples from one registered few-shot dataset (module docstring).

    Args:
        name: a registered FSS dataset (metadata ``label_format``), e.g. ``my_data_train``
            (``DATASETS.CUSTOM``) or ``synthetic_fss_train``.
        settings: the augmentation settings (``INPUT.SINE_TRAIN``).
        records: the records (default ``DatasetCatalog.get(name)``).
    """

    task = "panoptic"

    def __init__(self, name: str, settings: AugmentSettings,
                 records: Optional[List[Dict]] = None):
        self.name, self.settings = name, settings
        meta = MetadataCatalog.get(name)
        self.label_format = meta.get("label_format", None)
        if self.label_format is None:
            raise ValueError(f"{name}: not a few-shot dataset (no label_format metadata)")
        records = DatasetCatalog.get(name) if records is None else records
        by_class = defaultdict(list)
        for i, record in enumerate(records):
            for c in record["classes"]:
                by_class[int(c)].append(i)
        if not by_class:
            raise ValueError(f"{name}: no image lists a class")
        self.classes = sorted(by_class)
        self.images_of = {c: np.asarray(v, dtype=np.int64) for c, v in by_class.items()}
        self.records = DatasetFromList(records, copy=True, serialize=True)
        logger.info("%s (class masks as segments): %d images, %d classes", name, len(records),
                    len(self.classes))

    def _pair(self, rng: np.random.RandomState):
        cls = self.classes[rng.randint(len(self.classes))]
        crop_pair = rng.uniform(0.0, 1.0) < self.settings.crop_ratio
        images = self.images_of[cls]
        ref = int(images[rng.randint(len(images))])
        if crop_pair or len(images) < 2:
            return ref, ref, True
        while True:
            tar = int(images[rng.randint(len(images))])
            if tar != ref:
                return ref, tar, crop_pair

    def process(self, index: int, rng: np.random.RandomState, keep) -> Dict:
        """One side of a sample: the image, augmented, and its kept classes' segments."""
        s, record = self.settings, self.records[index]
        labels = {}
        image = None
        for c in image_classes(record):
            if c in keep:
                image, label = load_sample(record, c, self.label_format)
                labels[c] = (label == 1).astype(np.uint8)
        if image is None:  # nothing kept: the image alone (the sample is drawn again)
            image, _ = load_sample(record, int(record["classes"][0]), self.label_format)
        transforms, shape = draw_transforms(rng, image.shape[0], image.shape[1], s.image_size,
                                            s.min_scale, s.max_scale, s.flip)
        image = transforms.apply_image(image)
        classes, masks, ids = [], [], []
        for c, label in labels.items():
            mask = transforms.apply_segmentation(label).astype(bool)
            if mask.any():
                classes.append(c)
                masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
                ids.append((index + 1) * ID_STRIDE + c)
        if masks:
            inst = Instances(shape)
            inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
            inst.ins_ids = torch.tensor(ids, dtype=torch.int64)
            inst.gt_masks = pad_to(torch.stack(masks), s.image_size)
            inst.gt_boxes = BitMasks(inst.gt_masks).get_bounding_boxes()
        else:
            inst = empty_instances(shape, s.image_size)
        return {"file_name": record.get("file_name", ""), "image_id": record.get("image_id"),
                "height": int(record.get("height", image.shape[0])),
                "width": int(record.get("width", image.shape[1])),
                "image": to_model_image(image, s.image_size, s.mean, s.std), "instances": inst}

    def draw(self, rng: np.random.RandomState) -> Dict:
        """One sample (schema in ``source.py``)."""
        for _ in range(MAX_ATTEMPTS):
            ref_index, tar_index, crop_pair = self._pair(rng)
            ref = self.process(ref_index, rng, image_classes(self.records[ref_index]))
            tar = self.process(tar_index, rng, ref["instances"].gt_classes.tolist())
            if len(ref["instances"]) and len(tar["instances"]):
                return {"ref_dict": ref, "tar_dict": tar, "task": self.task, "source": self.name,
                        "crop_pair": bool(crop_pair)}
        raise RuntimeError(f"{self.name}: no sample with a class mask on both sides in "
                           f"{MAX_ATTEMPTS} draws; are the masks empty?")
