# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Few-shot instance segmentation, TFA protocol (docs/METHOD.md section 7.2, docs/PROTOCOLS.md
section 2f), on any ``Predictor``:

1. **Supports, once per split.** For each of the 20 novel classes, its K support instances of
   ``coco_trainval_novel_{K}shot[_seed{S}]`` (one record per annotation: the support image is the
   instance's image, the support mask that instance's mask) are encoded into one support set
   and saved as ``<TEST.FSOD.SUPPORT_DIR or output/support_sets>/<split>/<class>.pt``
   (``supports.py``). A later run, or another process, loads it. A saved set is used only if the
   predictor accepts it (model signature, working size) and the fingerprints of its support
   instances match this run; otherwise it is recomputed and overwritten, with a warning naming
   the file.
2. **Test images, once each.** Every test image is predicted against the 20 sets with
   ``predict_instances``: each model's own instance rule, ``TEST.FSOD.BATCH_SIZE`` sets per call
   where the model batches them. DiffewS splits each class's predicted mask into scored
   instances (``predictor/instances.py``: ``TEST.FSOD.INSTANCE_MODE``, ``MIN_AREA``,
   ``CLASS_SCORE``, ``TOPK``); a class judged absent gives no instance.
3. **Evaluation.** detectron2 ``Instances`` go to ``FSODEvaluator`` (COCO bbox and segm AP on the
   novel classes, at most ``TEST.FSOD.MAX_DETS`` per image: the AP definition, apart from what
   a model keeps), which writes ``coco_instances_results.json`` (RLE masks); the metric dict is
   written to ``results.json``.

Several processes: test images are sharded as detectron2's ``InferenceSampler`` shards them and
the evaluator gathers the predictions. The main process prepares (computes or checks) and saves
the support sets while the others wait, then they load the saved files: one writer per file and
every process uses the same bytes. Each image is predicted alone against the same sets, so its
predictions do not depend on the sharding: N processes give the AP of one. With the journal of
``journal.py`` the processes split the image shards left instead, and a killed run started again
predicts only those.
"""

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from tqdm import tqdm

from ...data.datasets.coco_fsod import TEST_SETS, fsod_dataset_names
from ...data.datasets.coco_fsod_reader import load_fsod_test
from ...data.datasets.roots import README
from ...predictor import build_predictor, predictor_class
from ...utils.atomic import atomic_write_json
from ...utils.errors import UsageError
from ...utils.image import read_image
from .journal import check_fsod_resume, open_fsod_journal, run_journalled
from .supports import prepare_support_sets, support_cache_dir, support_records

logger = logging.getLogger(__name__)

__all__ = ["FSODJob", "check_fsod_config", "check", "fsod_inference", "evaluate_fsod", "run"]

RESULTS_JSON = "results.json"
SEEDS_JSON = "results_seeds.json"


def check_fsod_config(cfg) -> None:
    """``TEST.FSOD`` values that nothing should discover after the model is built (the model's
    own instance settings: its predictor's ``check_config``)."""
    f = cfg.TEST.FSOD
    try:
        fsod_dataset_names(cfg)  # SHOT, SEED and TEST_SET
    except ValueError as e:
        raise UsageError(str(e)) from e
    for key in ("BATCH_SIZE", "MAX_DETS"):
        if f[key] < 1:
            raise UsageError(f"TEST.FSOD.{key} must be >= 1, got {f[key]}")
    predictor_class(cfg).check_config(cfg)


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


def fsod_inference(predictor, support_sets: Sequence, test_records: Sequence[Dict],
                   evaluator, cfg, desc: str = "fsod", journal=None) -> Dict:
    """Predict this process's shard of the test images against every class's set, feed the
    evaluator and return its ``evaluate()`` (``{}`` in processes other than the main one). With
    a ``journal`` (``fsod_journal.py``) only the image shards it lacks are predicted."""
    evaluator.reset()
    if journal is None:
        _predict(predictor, support_sets, test_records, list(InferenceSampler(len(test_records))),
                 evaluator, cfg, desc)
    else:
        run_journalled(journal, len(test_records), evaluator, lambda indices, after: _predict(
            predictor, support_sets, test_records, indices, evaluator, cfg, desc, after), desc)
    return evaluator.evaluate()


def _predict(predictor, support_sets, test_records, indices, evaluator, cfg, desc, after=None):
    """``evaluator.process`` of each image of ``indices``, in order; ``after()`` after each."""
    loader = torch.utils.data.DataLoader(_TestImages(test_records, indices), batch_size=None,
                                         collate_fn=_keep,
                                         num_workers=cfg.DATALOADER.NUM_WORKERS)
    batch = int(cfg.TEST.FSOD.BATCH_SIZE)
    start = time.perf_counter()
    bar = tqdm(loader, total=len(indices), desc=desc, unit="img", dynamic_ncols=True,
               disable=not comm.is_main_process())
    for record, image in bar:
        size = (int(record["height"]), int(record["width"]))
        if image.shape[:2] != size:
            raise ValueError(f"{record['file_name']}: image is {image.shape[1]}x{image.shape[0]} "
                             f"but its annotation file says {size[1]}x{size[0]}")
        instances = predictor.predict_instances(image, support_sets, batch_size=batch)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
        if after is not None:
            after()
    seconds = time.perf_counter() - start
    logger.info("%s: %d images in %.1f s (%.2f images/s in this process)", desc, len(indices),
                seconds, len(indices) / max(seconds, 1e-9))


def evaluate_fsod(cfg, predictor, output_dir: str, root: Optional[str] = None,
                  test_records: Optional[List[Dict]] = None, overwrite: bool = False) -> Dict:
    """One split (``TEST.FSOD`` SHOT, SEED, TEST_SET) end to end: support sets, inference
    (journalled in ``output_dir/journal/``, ``fsod_journal.py``: resumed; ``overwrite`` starts
    again), ``output_dir/coco_instances_results.json`` and ``output_dir/results.json``.

    Returns:
        detectron2's evaluator dict ``{"bbox": {"AP", "AP50", ...}, "segm": {...}}`` on the novel
        classes in the main process, ``{}`` in the others.
    """
    from ...evaluation.instance_evaluation import FSODEvaluator

    check_fsod_config(cfg)
    split, test_name = fsod_dataset_names(cfg)
    by_class = support_records(cfg, root)
    if test_records is None:
        test_records = load_fsod_test(test_name, root)
    if not test_records:
        raise ValueError(f"{test_name}: the test set has no image, see {README}")
    journal = open_fsod_journal(cfg, output_dir, by_class, test_records, overwrite,
                                stale=[RESULTS_JSON, "coco_instances_results.json"])
    sets = prepare_support_sets(predictor, by_class, support_cache_dir(cfg, output_dir))
    evaluator = FSODEvaluator(test_name, output_dir=output_dir, distributed=True,
                              max_dets_per_image=int(cfg.TEST.FSOD.MAX_DETS), root=root)
    results = fsod_inference(predictor, sets, test_records, evaluator, cfg,
                             desc=f"{test_name} <- {split}", journal=journal)
    if comm.is_main_process():
        results = json.loads(json.dumps(results))  # plain dicts (NaN kept)
        atomic_write_json(results, os.path.join(output_dir, RESULTS_JSON), indent=2)
        logger.info("%s <- %s: %s", test_name, split, "  ".join(
            f"{task} AP {r.get('AP', float('nan')):.2f}" for task, r in results.items()))
    return results


def run_seeds(cfg, predictor, output_dir: str, seeds: Optional[Sequence[int]] = None,
              root: Optional[str] = None, overwrite: bool = False) -> Dict:
    """``evaluate_fsod`` for one seed (``TEST.FSOD.SEED``, output in ``output_dir``) or, with
    ``seeds``, for each seed in ``output_dir/seed{S}/``, then mean and population std per metric
    (``aggregate_seeds``), printed and written to ``output_dir/results_seeds.json``.

    Returns:
        the evaluator dict (one seed) or ``{"seeds": {S: dict}, "aggregate": {...}}`` in the main
        process; ``{}`` in the others.
    """
    from ...evaluation.instance_evaluation import aggregate_seeds, format_seed_table

    if seeds is None:
        return evaluate_fsod(cfg, predictor, output_dir, root, overwrite=overwrite)
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
                                           test_records, overwrite)
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


@dataclass
class FSODJob:
    """What ``run`` evaluates (``inference_fsod/run_fsod.py`` builds it from its flags).

    Attributes:
        output: results folder (with ``seeds``, one ``seed{S}/`` folder per seed).
        seeds: several TFA seeds to run and aggregate (None: ``TEST.FSOD.SEED`` alone).
        root: datasets root (default ``$DETECTRON2_DATASETS``).
        overwrite: start again in folders holding another job's journal.
    """

    output: str
    seeds: Optional[List[int]] = None
    root: Optional[str] = None
    overwrite: bool = False


def check(cfg, job: FSODJob) -> None:
    """Everything checkable without the model: ``TEST.FSOD``, every support split file and image
    of the seeds, the test set's json and image folder, and each seed folder's journal (another
    job's is refused unless ``overwrite``)."""
    check_fsod_config(cfg)
    test_records = load_fsod_test(TEST_SETS[cfg.TEST.FSOD.TEST_SET], job.root)
    for seed in job.seeds or [cfg.TEST.FSOD.SEED]:
        seed_cfg = cfg.clone()
        seed_cfg.defrost()
        seed_cfg.TEST.FSOD.SEED = seed
        by_class = support_records(seed_cfg, job.root)
        folder = os.path.join(job.output, f"seed{seed}") if job.seeds else job.output
        check_fsod_resume(seed_cfg, folder, by_class, test_records, job.overwrite)


def run(cfg, job: FSODJob, predictor=None) -> Dict:
    """``run_seeds`` of ``job`` with ``predictor`` (default ``build_predictor(cfg)``); call it in
    every process of a launch."""
    predictor = predictor or build_predictor(cfg)
    return run_seeds(cfg, predictor, job.output, job.seeds, root=job.root,
                     overwrite=job.overwrite)
