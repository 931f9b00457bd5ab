# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation with DiffewS, TFA protocol (METHOD.md 7.2, PROTOCOLS.md 2f).

DiffewS segments one class given its supports; instance segmentation is built on the predictor:

1. **Supports, once per split.** For each of the 20 novel classes, its K support instances of
   ``coco_trainval_novel_{K}shot[_seed{S}]`` (one record per annotation: the support image is the
   instance's image, the support mask that instance's mask) are encoded into one ``SupportSet``
   and saved as ``<TEST.FSOD.SUPPORT_DIR or output/support_sets>/<split>/<class>.pt``. A later
   run, or another process, loads it. A saved set is used only if its model signature (weights
   fingerprint, architecture, latent size) and the fingerprints of its support instances match
   this run; otherwise it is recomputed and overwritten, with a warning naming the file.
2. **Test images, once each.** Every test image is VAE-encoded once (``EncodedImage``) and
   predicted against the 20 sets with ``predict_many``, ``TEST.FSOD.BATCH_SIZE`` sets per query
   pass. Each class's predicted mask (at the image's original size) becomes instances with
   ``diffews.tasks.instances.masks_to_instances`` (``TEST.FSOD.INSTANCE_MODE``, ``MIN_AREA``), scored
   by their mean predicted probability (times the prediction's own score with ``CLASS_SCORE
   contrast``), boxed by their mask's tight box; each image keeps its ``TOPK`` best.
3. **Evaluation.** detectron2 ``Instances`` go to ``FSODEvaluator`` (COCO bbox and segm AP on the
   novel classes), which writes ``coco_instances_results.json`` (RLE masks); the metric dict is
   written to ``results.json``.

Cost per test image, with 20 sets of K supports and B = BATCH_SIZE: 1 VAE encode, ceil(20 / B)
UNet query passes and VAE decode calls (20 decoded predictions), no support pass. The supports
cost 20 K support passes and 40 K VAE encodes once per split, nothing when the saved sets are used.

Several processes: test images are sharded as detectron2's ``InferenceSampler`` shards them and
the evaluator gathers the predictions. The main process prepares (computes or checks) and saves
the support sets while the others wait, then they load the saved files: one writer per file and
every process uses the same bytes. Each image is encoded alone and always meets the 20 sets in the
same batches, so its predictions do not depend on the sharding: N processes give the AP of one.
"""

import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from tqdm import tqdm

from ..data.datasets.coco_fsod import (NOVEL_CLASSES, annotation_mask, fsod_dataset_names,
                                      load_fsod_support, load_fsod_test, support_split_file)
from ..data.datasets.common import README, dataset_root
from ..modeling.support_set import SupportSet, SupportSetError
from .instances import MODES, masks_to_instances
from ..utils.atomic import atomic_write_json
from ..utils.image import check_image_file, read_image, resize_mask

logger = logging.getLogger(__name__)

__all__ = ["CLASS_SCORES", "check_fsod_config", "support_records", "record_key",
           "support_cache_dir", "support_set_path", "class_support_sets", "prepare_support_sets",
           "probability_map", "predictions_to_instances", "fsod_inference", "evaluate_fsod",
           "run_seeds"]

CLASS_SCORES = ("contrast", "none")
RESULTS_JSON = "results.json"
SEEDS_JSON = "results_seeds.json"


def check_fsod_config(cfg) -> None:
    """``TEST.FSOD`` values that nothing should discover after the model is built."""
    from ..utils.errors import UsageError

    f = cfg.TEST.FSOD
    try:
        fsod_dataset_names(cfg)  # SHOT, SEED and TEST_SET
    except ValueError as e:
        raise UsageError(str(e)) from e
    if f.INSTANCE_MODE not in MODES:
        raise UsageError(f"TEST.FSOD.INSTANCE_MODE must be one of {MODES}, got {f.INSTANCE_MODE!r}")
    if f.CLASS_SCORE not in CLASS_SCORES:
        raise UsageError(f"TEST.FSOD.CLASS_SCORE must be one of {CLASS_SCORES}, got "
                         f"{f.CLASS_SCORE!r}")
    for key in ("BATCH_SIZE", "TOPK"):
        if f[key] < 1:
            raise UsageError(f"TEST.FSOD.{key} must be >= 1, got {f[key]}")
    if f.MIN_AREA < 0:
        raise UsageError(f"TEST.FSOD.MIN_AREA must be >= 0, got {f.MIN_AREA}")


# -- supports ------------------------------------------------------------------------------------
def support_records(cfg, root: Optional[str] = None, check_images: bool = True
                    ) -> List[List[Dict]]:
    """The support records of the split of ``TEST.FSOD`` (SHOT, SEED, SAMPLE_SEED), grouped by
    class in novel order. A class without any instance is an error naming its split file;
    ``check_images`` checks every support image file (headers only)."""
    f = cfg.TEST.FSOD
    shot, seed = int(f.SHOT), int(f.SEED)
    records = load_fsod_support(shot, seed, root=root, sample_seed=int(f.SAMPLE_SEED))
    by_class: List[List[Dict]] = [[] for _ in NOVEL_CLASSES]
    for r in records:
        by_class[r["annotations"][0]["category_id"]].append(r)
    for c, recs in enumerate(by_class):
        if not recs:
            path = support_split_file(dataset_root(root), shot, seed, NOVEL_CLASSES[c])
            raise ValueError(f"{path}: no instance of class '{NOVEL_CLASSES[c]}' (a {shot}-shot "
                             f"split file holds {shot} annotations of its class), see {README}")
        if check_images:
            for r in recs:
                check_image_file(r["file_name"])
    return by_class


def record_key(record: Dict) -> str:
    """A short fingerprint of one support instance (image file name and id, its annotation)."""
    ann = record["annotations"][0]
    text = json.dumps({"image": os.path.basename(record["file_name"]),
                       "image_id": record["image_id"], "category_id": ann["category_id"],
                       "bbox": ann.get("bbox"), "segmentation": ann.get("segmentation")},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def support_cache_dir(cfg, output_dir: str) -> str:
    """``<SUPPORT_DIR or output_dir/support_sets>/<split name>[_sample<SAMPLE_SEED>]``."""
    f = cfg.TEST.FSOD
    split, _ = fsod_dataset_names(cfg)
    if int(f.SAMPLE_SEED):
        split += f"_sample{int(f.SAMPLE_SEED)}"
    return os.path.join(f.SUPPORT_DIR or os.path.join(output_dir, "support_sets"), split)


def support_set_path(folder: str, class_index: int) -> str:
    """``<folder>/<class name, spaces as _>.pt``."""
    return os.path.join(folder, NOVEL_CLASSES[class_index].replace(" ", "_") + ".pt")


def _usable(path: str, predictor, keys: List[str]) -> Optional[SupportSet]:
    """The saved set at ``path`` if it was encoded by this model from these instances, else
    None (absent, unreadable, another model or other instances: logged)."""
    if not os.path.isfile(path):
        return None
    try:
        s = SupportSet.load(path)
        s.check_compatible(predictor.signature, "this run's model")
        if tuple(s.latents.shape[-2:]) != (predictor.latent_size, predictor.latent_size):
            raise SupportSetError(f"encoded at another working size (latent "
                                  f"{tuple(s.latents.shape[-2:])})")
    except SupportSetError as e:
        logger.warning("%s: %s; recomputing and overwriting it", path, e)
        return None
    if [i.get("record") for i in s.info] != keys:
        logger.warning("%s: holds other support instances than the split (another "
                       "TEST.FSOD.SAMPLE_SEED or changed split files); recomputing and "
                       "overwriting it", path)
        return None
    return s


def class_support_sets(predictor, by_class: Sequence[List[Dict]], folder: str,
                       compute: bool = True) -> List[SupportSet]:
    """One SupportSet per class: the saved one when usable, else encoded and saved.

    Args:
        predictor: a ``DiffewSPredictor``.
        by_class: ``support_records`` output (20 lists of records).
        folder: where the sets are saved (``support_cache_dir``).
        compute: False to only load (processes other than the main one); a missing or unusable
            file is then an error.
    """
    sets, computed = [], 0
    for c, records in enumerate(by_class):
        path = support_set_path(folder, c)
        keys = [record_key(r) for r in records]
        s = _usable(path, predictor, keys)
        if s is None:
            if not compute:
                raise SupportSetError(f"{path}: missing or unusable after the main process "
                                      "prepared it")
            masks = [annotation_mask(r["annotations"][0], r["height"], r["width"])
                     for r in records]
            s = predictor.encode_supports([r["file_name"] for r in records], masks)
            for info, r, key in zip(s.info, records, keys):
                info.update(record=key, image_id=r["image_id"], category=NOVEL_CLASSES[c])
            s.save(path)
            computed += 1
        sets.append(s.to(predictor.device))  # loaded sets are on the CPU
    if compute:
        logger.info("Support sets in %s: %d encoded, %d reused", folder, computed,
                    len(sets) - computed)
    return sets


def prepare_support_sets(predictor, by_class: Sequence[List[Dict]], folder: str
                         ) -> List[SupportSet]:
    """``class_support_sets`` in the main process; the other processes wait for it, then load
    the saved files (a failure in the main process is raised in every process)."""
    if comm.get_world_size() == 1:
        return class_support_sets(predictor, by_class, folder)
    sets, error, failure = None, None, None
    if comm.is_main_process():
        try:
            sets = class_support_sets(predictor, by_class, folder)
        except Exception as e:  # noqa: BLE001 (re-raised below, after the others are told)
            error, failure = e, f"{type(e).__name__}: {e}"
    status = comm.all_gather(failure)  # also the barrier the other processes wait at
    if error is not None:
        raise error
    if status[0] is not None:
        raise RuntimeError(f"the main process failed to prepare the support sets: {status[0]}")
    return sets if sets is not None else class_support_sets(predictor, by_class, folder, False)


# -- predictions to instances ---------------------------------------------------------------------
def probability_map(pred_image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(S, S, 3) uint8 decoded prediction -> (H, W) float32 in [0, 1] at the original size: the
    RGB mean / 255, nearest-resized as the predicted mask is."""
    prob = pred_image.astype(np.float32).mean(axis=-1) / 255.0
    return resize_mask(prob, tuple(size))


def predictions_to_instances(predictions: Sequence[Dict], size: Tuple[int, int], cfg):
    """One image's ``predict_many`` results (one per class, novel order) -> detectron2
    ``Instances`` (``pred_masks`` (N, H, W), ``pred_boxes``, ``scores``, ``pred_classes``)."""
    f = cfg.TEST.FSOD
    masks = np.stack([p["mask"] for p in predictions])
    probs = np.stack([probability_map(p["pred_image"], size) for p in predictions])
    scores = [p["score"] for p in predictions] if f.CLASS_SCORE == "contrast" else None
    return masks_to_instances(masks, probs, class_scores=scores, mode=f.INSTANCE_MODE,
                              min_area=int(f.MIN_AREA), topk=int(f.TOPK))


# -- test loop ------------------------------------------------------------------------------------
class _TestImages(torch.utils.data.Dataset):
    """(record, (H, W, 3) uint8 image) of the given indices, read in DataLoader workers."""

    def __init__(self, records: Sequence[Dict], indices: Sequence[int]):
        self.records, self.indices = records, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        record = self.records[self.indices[i]]
        return record, read_image(record["file_name"])


def _keep(x):
    return x


def fsod_inference(predictor, support_sets: Sequence[SupportSet], test_records: Sequence[Dict],
                   evaluator, cfg, desc: str = "fsod") -> Dict:
    """Predict this process's shard of the test images against every class's set, feed the
    evaluator and return its ``evaluate()`` (``{}`` in processes other than the main one)."""
    indices = list(InferenceSampler(len(test_records)))
    loader = torch.utils.data.DataLoader(_TestImages(test_records, indices), batch_size=None,
                                         collate_fn=_keep,
                                         num_workers=cfg.DATALOADER.NUM_WORKERS)
    evaluator.reset()
    batch = int(cfg.TEST.FSOD.BATCH_SIZE)
    start = time.perf_counter()
    bar = tqdm(loader, total=len(indices), desc=desc, unit="img", dynamic_ncols=True,
               disable=not comm.is_main_process())
    for record, image in bar:
        size = (int(record["height"]), int(record["width"]))
        if image.shape[:2] != size:
            raise ValueError(f"{record['file_name']}: image is {image.shape[1]}x{image.shape[0]} "
                             f"but its annotation file says {size[1]}x{size[0]}")
        (encoded,) = predictor.encode_images([image])
        predictions = predictor.predict_many(encoded, support_sets, batch_size=batch)
        instances = predictions_to_instances(predictions, size, cfg)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    seconds = time.perf_counter() - start
    logger.info("%s: %d images in %.1f s (%.2f images/s in this process)", desc, len(indices),
                seconds, len(indices) / max(seconds, 1e-9))
    return evaluator.evaluate()


def evaluate_fsod(cfg, predictor, output_dir: str, root: Optional[str] = None,
                  test_records: Optional[List[Dict]] = None) -> Dict:
    """One split (``TEST.FSOD`` SHOT, SEED, TEST_SET) end to end: support sets, inference,
    ``output_dir/coco_instances_results.json`` and ``output_dir/results.json``.

    Returns:
        detectron2's evaluator dict ``{"bbox": {"AP", "AP50", ...}, "segm": {...}}`` on the novel
        classes in the main process, ``{}`` in the others.
    """
    from ..evaluation.instance_evaluation import FSODEvaluator

    check_fsod_config(cfg)
    split, test_name = fsod_dataset_names(cfg)
    by_class = support_records(cfg, root)
    if test_records is None:
        test_records = load_fsod_test(test_name, root)
    if not test_records:
        raise ValueError(f"{test_name}: the test set has no image, see {README}")
    sets = prepare_support_sets(predictor, by_class, support_cache_dir(cfg, output_dir))
    evaluator = FSODEvaluator(test_name, output_dir=output_dir, distributed=True,
                              max_dets_per_image=int(cfg.TEST.FSOD.TOPK), root=root)
    results = fsod_inference(predictor, sets, test_records, evaluator, cfg,
                             desc=f"{test_name} <- {split}")
    if comm.is_main_process():
        results = json.loads(json.dumps(results))  # plain dicts (NaN kept)
        atomic_write_json(results, os.path.join(output_dir, RESULTS_JSON), indent=2)
        logger.info("%s <- %s: %s", test_name, split, "  ".join(
            f"{task} AP {r.get('AP', float('nan')):.2f}" for task, r in results.items()))
    return results


def run_seeds(cfg, predictor, output_dir: str, seeds: Optional[Sequence[int]] = None,
              root: Optional[str] = None) -> Dict:
    """``evaluate_fsod`` for one seed (``TEST.FSOD.SEED``, output in ``output_dir``) or, with
    ``seeds``, for each seed in ``output_dir/seed{S}/``, then mean and population std per metric
    (``aggregate_seeds``), printed and written to ``output_dir/results_seeds.json``.

    Returns:
        the evaluator dict (one seed) or ``{"seeds": {S: dict}, "aggregate": {...}}`` in the main
        process; ``{}`` in the others.
    """
    from ..evaluation.instance_evaluation import aggregate_seeds, format_seed_table

    if seeds is None:
        return evaluate_fsod(cfg, predictor, output_dir, root)
    _, test_name = fsod_dataset_names(cfg)
    test_records = load_fsod_test(test_name, root)  # the same for every seed
    results = {}
    for seed in seeds:
        seed_cfg = cfg.clone()
        seed_cfg.defrost()
        seed_cfg.TEST.FSOD.SEED = int(seed)
        seed_cfg.freeze()
        results[int(seed)] = evaluate_fsod(seed_cfg, predictor,
                                           os.path.join(output_dir, f"seed{seed}"), root,
                                           test_records)
    if not comm.is_main_process():
        return {}
    aggregate = aggregate_seeds(results)
    table = format_seed_table(aggregate)
    logger.info("%s, %d-shot, seeds %s:\n%s", test_name, cfg.TEST.FSOD.SHOT,
                ",".join(map(str, seeds)), table)
    print(table)
    summary = {"seeds": results, "aggregate": aggregate}
    atomic_write_json(summary, os.path.join(output_dir, SEEDS_JSON), indent=2)
    return summary
