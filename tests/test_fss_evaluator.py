# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""FSSEvaluator: hand-computed 4x4 cases, HSNet parity, and 1-process == 2-process results."""

import json
import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffews.evaluation import FSSEvaluator, episode_counts

PRED = [[1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0]]
GT = [[1, 0, 0, 0],
      [1, 1, 1, 0],
      [0, 0, 0, 0],
      [0, 0, 0, 0]]
# fg: |P|=4, |G|=4, I=3, U=5; bg: |P|=12, |G|=12, I=16-5=11, U=12+12-11=13
COUNTS = [[11, 3], [13, 5]]


def _t(rows, dtype=torch.uint8):
    return torch.tensor(rows, dtype=dtype)


def _episode(eid, cls, pred, gt):
    inp = {"episode_id": eid, "class_id": cls, "sem_seg": _t(gt)}
    return inp, {"pred_mask": _t(pred, torch.bool)}


def _run(class_ids, episodes, **kwargs):
    ev = FSSEvaluator(class_ids=class_ids, distributed=False, **kwargs)
    ev.reset()
    for inp, out in episodes:
        ev.process([inp], [out])
    return ev, ev.evaluate()["fss"]


def hsnet_counts(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """HSNet common/evaluation.py classify_prediction, for one episode (the reference)."""
    pred = pred.float().clone()
    gt = gt.float()
    pred[gt == 255] = 255
    inter = pred[pred == gt]
    area_inter = torch.histc(inter, bins=2, min=0, max=1) if inter.numel() else torch.zeros(2)
    area_pred = torch.histc(pred, bins=2, min=0, max=1)
    area_gt = torch.histc(gt, bins=2, min=0, max=1)
    area_union = area_pred + area_gt - area_inter
    return np.stack([area_inter.numpy(), area_union.numpy()]).astype(np.int64)


def test_counts_by_hand():
    np.testing.assert_array_equal(episode_counts(np.array(PRED), np.array(GT)), COUNTS)


def test_ignore_255():
    gt = [row[:] for row in GT]
    gt[3] = [255] * 4  # a boundary row: the prediction there must not count
    pred = [row[:] for row in PRED]
    pred[3] = [1, 1, 0, 0]
    # fg: I=3, U=4+4-3=5 (as before); bg over 12 valid pixels: |P|=8, |G|=8, I=12-5=7, U=9
    np.testing.assert_array_equal(episode_counts(np.array(pred), np.array(gt)), [[7, 3], [9, 5]])


def test_empty_prediction_and_empty_gt():
    zero = [[0] * 4 for _ in range(4)]
    def counts(p, g):
        return episode_counts(np.array(p), np.array(g)).tolist()

    assert counts(zero, GT) == [[12, 0], [16, 4]]
    assert counts(PRED, zero) == [[12, 0], [16, 4]]
    assert counts(zero, zero) == [[16, 0], [16, 0]]
    # empty gt and prediction: fg IoU = 0 / max(0, 1) = 0, as in HSNet
    _, res = _run([5], [_episode(0, 5, zero, zero)])
    assert res["mIoU"] == 0.0 and res["FB-IoU"] == pytest.approx(50.0)


def test_matches_hsnet_histc_on_random_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pred = torch.rand(9, 7, generator=g) > 0.5
        gt = (torch.rand(9, 7, generator=g) > 0.6).to(torch.uint8)
        gt[torch.rand(9, 7, generator=g) > 0.8] = 255
        ours = episode_counts(pred.numpy(), gt.numpy())
        np.testing.assert_array_equal(ours, hsnet_counts(pred, gt))


def test_miou_fbiou_with_unsampled_class():
    zero = [[0] * 4 for _ in range(4)]
    ev, res = _run([0, 1, 2], [_episode(0, 0, PRED, GT), _episode(1, 1, zero, GT)])
    # class 0: 3/5; class 1: 0/4; class 2 never sampled: 0/max(0, 1)
    assert res["mIoU"] == pytest.approx(100 * (3 / 5) / 3)
    assert res["IoU-0"] == pytest.approx(60.0) and res["IoU-1"] == 0.0 and res["IoU-2"] == 0.0
    # pooled: bg 11+12 / 13+16, fg 3+0 / 5+4
    assert res["FB-IoU"] == pytest.approx(100 * (23 / 29 + 3 / 9) / 2)
    assert res["num_episodes"] == 2
    assert ev.running_miou() == pytest.approx(100 * (0.6 + 0.0) / 2)  # over the seen classes


def test_sums_over_episodes_of_a_class():
    pred2 = [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    gt2 = [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]  # fg I=1, U=3
    _, res = _run([0], [_episode(0, 0, PRED, GT), _episode(1, 0, pred2, gt2)])
    assert res["mIoU"] == pytest.approx(100 * (3 + 1) / (5 + 3))  # 50, not the mean 46.67


def test_original_size_and_json(tmp_path):
    big_gt = np.kron(np.array(GT), np.ones((2, 2), np.int64)).astype(np.uint8)  # (8, 8)
    inp, out = _episode("a", 3, PRED, GT)
    inp["sem_seg_original"] = torch.from_numpy(big_gt)
    ev, res = _run([3], [(inp, out)], original_size=True, output_dir=str(tmp_path))
    assert res["mIoU"] == pytest.approx(60.0)
    with open(tmp_path / "fss_results.json") as f:
        saved = json.load(f)
    assert saved["per_class"]["3"]["intersection"] == [44, 12]  # 4x the 4x4 counts
    assert saved["per_class"]["3"]["union"] == [52, 20]
    assert saved["metrics"]["num_episodes"] == 1


def test_errors_and_padding():
    ev = FSSEvaluator(class_ids=[0], distributed=False)
    with pytest.raises(ValueError, match="not one of the fold"):
        ev.process(*[[x] for x in _episode(0, 7, PRED, GT)])
    with pytest.raises(ValueError, match="differ in size"):
        inp, out = _episode(0, 0, PRED, GT)
        ev.process([inp], [{"pred_mask": torch.zeros(3, 3, dtype=torch.bool)}])
    with pytest.raises(ValueError, match="needs dataset_name or class_ids"):
        FSSEvaluator()
    ev.reset()
    for _ in range(2):  # a padded repeat of the same episode counts once
        ev.process(*[[x] for x in _episode(0, 0, PRED, GT)])
    assert ev.evaluate()["fss"]["num_episodes"] == 1
    ev.process(*[[x] for x in _episode(0, 0, GT, GT)])  # same id, other counts: an error
    with pytest.raises(ValueError, match="appears twice"):
        ev.evaluate()


def _random_episodes(n=24, num_classes=4, seed=0):
    rng = np.random.RandomState(seed)
    eps = []
    for i in range(n):
        gt = (rng.rand(6, 6) > 0.6).astype(np.uint8)
        gt[rng.rand(6, 6) > 0.85] = 255
        pred = rng.rand(6, 6) > 0.5
        eps.append((i, int(rng.randint(num_classes)), pred, gt))
    return eps


def _to_io(e):
    i, c, pred, gt = e
    return {"episode_id": i, "class_id": c, "sem_seg": torch.from_numpy(gt)}, \
        {"pred_mask": torch.from_numpy(pred)}


def _shard_worker(rank, world, url, out_file):
    # gloo on CPU whatever the machine has: detectron2's launch() would pick NCCL on a GPU machine
    # and needs one GPU per process
    from detectron2.utils import comm

    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    comm.create_local_process_group(world)
    assert comm.get_rank() == rank and comm.get_world_size() == world
    eps = _random_episodes()
    shard = eps[rank::world]
    if rank == world - 1:
        shard = shard + eps[:1]  # padding, as a sampler that evens shards would add
    ev = FSSEvaluator(class_ids=[0, 1, 2, 3, 4])
    ev.reset()
    for e in shard:
        ev.process(*[[x] for x in _to_io(e)])
    res = ev.evaluate()
    if comm.is_main_process():
        with open(out_file, "wb") as f:
            pickle.dump(res, f)
    else:
        assert res is None
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    ev = FSSEvaluator(class_ids=[0, 1, 2, 3, 4], distributed=False)
    for e in _random_episodes():
        ev.process(*[[x] for x in _to_io(e)])
    single = ev.evaluate()
    out_file = str(tmp_path / "res.pkl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers inherit the imported modules instead of importing diffews again
    mp.start_processes(_shard_worker, args=(2, f"tcp://127.0.0.1:{port}", out_file), nprocs=2,
                       start_method="fork")
    assert os.path.isfile(out_file)
    with open(out_file, "rb") as f:
        multi = pickle.load(f)
    assert multi == single
    assert single["fss"]["num_episodes"] == 24
