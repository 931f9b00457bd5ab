# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE's in-context training data: the readers on tiny trees in the exact on-disk formats
(tests/_sine_trees.py), the sample builders (ids, classes, masks after crop / flip / scale), the
augmentation against detectron2's own, the task mixture and the missing-folder errors."""

import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

import _sine_trees as trees
from diffews.data import incontext
from diffews.data.datasets.roots import MissingDataError
from diffews.data.datasets.sine_instances import load_instances
from diffews.data.datasets.sine_objects365 import load_objects365_sam
from diffews.data.datasets.sine_panoptic import load_panoptic
from diffews.data.incontext import AugmentSettings, InContextSource, draw_transforms
from diffews.data.incontext.augment import IMAGENET_MEAN, IMAGENET_STD
from diffews.data.incontext.instances import rgb_to_id
from diffews.data.records import BadSampleError

# name -> (tree writer, loader, task, class ids of the json in the tree)
SOURCES = {
    "sine_coco_panoptic_train": (trees.write_coco_panoptic, load_panoptic, "panoptic",
                                 trees.COCO_IDS),
    "sine_ade20k_panoptic_train": (trees.write_ade20k_panoptic, load_panoptic, "panoptic",
                                   trees.ADE_IDS),
    "sine_coco_instance_train": (trees.write_coco_instances, load_instances, "instance",
                                 trees.COCO_IDS),
    "sine_ade20k_instance_train": (trees.write_ade20k_instances, load_instances, "instance",
                                   trees.ADE_IDS),
    "sine_paco_lvis_train": (trees.write_paco, load_instances, "instance", trees.PACO_IDS),
    "sine_o365_sam_train": (trees.write_o365_sam, load_objects365_sam, "instance",
                            trees.O365_IDS),
}


def _contiguous(ids, task):
    """Class name -> contiguous id as the json's categories define it (sorted dataset ids)."""
    names = [n for n in ids if task == "panoptic" or n != "wall"]
    return {n: i for i, n in enumerate(sorted(names, key=lambda n: ids[n]))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sine_tree"))
    info = {name: spec[0](root) for name, spec in SOURCES.items()}
    return root, info


def _source(tree, name, **settings):
    root, _ = tree
    _, loader, task, _ = SOURCES[name]
    return InContextSource(name, AugmentSettings(**{"image_size": 64, **settings}), task,
                           loader(name, root))


def test_panoptic_readers(tree):
    root, info = tree
    for name in ("sine_coco_panoptic_train", "sine_ade20k_panoptic_train"):
        records = load_panoptic(name, root)
        cont = _contiguous(SOURCES[name][3], "panoptic")
        assert [os.path.isfile(r["file_name"]) and r["file_name"].endswith(".jpg")
                for r in records] == [True] * 4
        assert all(os.path.isfile(r["pan_seg_file_name"]) for r in records)
        for r in records:
            for s in r["segments_info"]:
                cls, crowd = info[name][s["id"]]
                assert s["category_id"] == cont[cls] and s["iscrowd"] == int(crowd)
                assert s["isthing"] == (cls != "wall")
        assert sum(len(r["segments_info"]) for r in records) == len(info[name])


def test_instance_readers(tree):
    root, info = tree
    for name in ("sine_coco_instance_train", "sine_ade20k_instance_train",
                 "sine_paco_lvis_train"):
        records = load_instances(name, root)
        cont = _contiguous(SOURCES[name][3], "instance")
        assert len(records) == 4 and all(os.path.isfile(r["file_name"]) for r in records)
        anns = {a["id"]: a for r in records for a in r["annotations"]}
        assert sorted(anns) == sorted(info[name])
        for aid, a in anns.items():
            cls, crowd = info[name][aid]
            assert a["category_id"] == cont[cls] and a["iscrowd"] == int(crowd)
            if crowd:  # uncompressed RLE is compressed, as detectron2's loader does
                assert isinstance(a["segmentation"]["counts"], bytes)
    paco = load_instances("sine_paco_lvis_train", root)
    assert paco[0]["file_name"].endswith(os.path.join("coco", "train2017", "000000000001.jpg"))
    assert isinstance(load_instances("sine_ade20k_instance_train", root)[0]["image_id"], str)


def test_objects365_reader(tree):
    root, info = tree
    records = load_objects365_sam("sine_o365_sam_train", root)
    assert len(records) == 4
    for r in records:
        assert os.path.isfile(r["file_name"]) and os.path.isfile(r["segmentation_file"])
        assert os.sep + os.path.join("sam_mask_json", "sam_obj365_train_1742k") in \
            r["segmentation_file"]
    assert sorted(a["id"] for r in records for a in r["annotations"]) == sorted(
        info["sine_o365_sam_train"])


@pytest.mark.parametrize("name,remove", [
    ("sine_coco_panoptic_train", "coco/panoptic_train2017"),
    ("sine_coco_panoptic_train", "coco/annotations/panoptic_train2017.json"),
    ("sine_ade20k_panoptic_train", "ADEChallengeData2016/images/training"),
    ("sine_coco_instance_train", "coco/train2017"),
    ("sine_ade20k_instance_train", "ADEChallengeData2016/ade20k_instance_train.json"),
    ("sine_paco_lvis_train", "paco/paco_lvis_v1_train.json"),
    ("sine_o365_sam_train", "Objects365/sam_mask_json/sam_obj365_train_1742k"),
    ("sine_o365_sam_train", "Objects365"),
])
def test_missing_path_is_one_line_naming_it(tmp_path, name, remove):
    writer, loader, _, _ = SOURCES[name]
    writer(str(tmp_path))
    path = tmp_path / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(MissingDataError) as err:
        loader(name, str(tmp_path))
    assert err.value.path == str(path) and str(path) in str(err.value)
    assert "\n" not in str(err.value) and "datasets/README.md" in str(err.value)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hw", [(480, 640), (1200, 900), (300, 200)])
def test_augmentation_draws_detectron2s_transforms(seed, hw):
    """Same transforms as the original's RandomFlip + ResizeScale + FixedSizeCrop(pad=False)
    drawn from numpy's global generator after the same seed."""
    image = np.zeros((*hw, 3), np.uint8)
    augs = T.AugmentationList([T.RandomFlip(horizontal=True, vertical=False),
                               T.ResizeScale(0.1, 2.0, 896, 896),
                               T.FixedSizeCrop(crop_size=(896, 896), pad=False)])
    np.random.seed(seed)
    inputs = T.AugInput(image)
    expected = augs(inputs)
    ours, shape = draw_transforms(np.random.RandomState(seed), *hw, 896, 0.1, 2.0)
    flat = [t for t in expected.transforms]
    assert len(flat) == len(ours.transforms) == 3
    for a, b in zip(flat, ours.transforms):
        assert type(a) is type(b) and vars(a) == vars(b)
    assert inputs.image.shape[:2] == shape == ours.apply_image(image).shape[:2]


def _denormalised(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _check_side(side, info, cont, size):
    inst = side["instances"]
    h, w = inst.image_size
    assert side["image"].shape == (3, size, size) and inst.gt_masks.shape[1:] == (size, size)
    assert inst.gt_masks.dtype == torch.bool and not inst.gt_masks[:, h:].any()
    assert not inst.gt_masks[:, :, w:].any() and not side["image"][:, h:].any()
    pixels = _denormalised(side["image"])
    for cls, iid, mask in zip(inst.gt_classes.tolist(), inst.ins_ids.tolist(), inst.gt_masks):
        name, crowd = info[iid]
        assert cls == cont[name] and not crowd
        m = mask.numpy()
        inner = m.copy()  # eroded by one pixel: away from the resize's blurred border
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        if inner.sum() >= 9:  # the colour under the mask is the instance's
            colour = np.median(pixels[inner], axis=0)
            assert np.abs(colour - trees.COLORS[iid]).max() < 40, (iid, colour)


@pytest.mark.parametrize("name", list(SOURCES))
def test_samples_ids_classes_and_masks_are_consistent(tree, name):
    _, info = tree
    cont = _contiguous(SOURCES[name][3], SOURCES[name][2])
    source = _source(tree, name)
    rng = np.random.RandomState(0)
    pairs = 0
    for _ in range(12):
        s = source.draw(rng)
        ref, tar = s["ref_dict"]["instances"], s["tar_dict"]["instances"]
        assert len(ref) and len(tar) and s["task"] == SOURCES[name][2]
        _check_side(s["ref_dict"], info[name], cont, 64)
        _check_side(s["tar_dict"], info[name], cont, 64)
        assert set(tar.gt_classes.tolist()) <= set(ref.gt_classes.tolist())
        for inst in (ref, tar):  # class-sorted instances
            assert inst.gt_classes.tolist() == sorted(inst.gt_classes.tolist())
        common = set(ref.ins_ids.tolist()) & set(tar.ins_ids.tolist())
        if s["crop_pair"]:
            pairs += 1
            assert s["ref_dict"]["file_name"] == s["tar_dict"]["file_name"]
            # common ids in the same relative order on both sides (the ID matching needs it)
            assert [i for i in ref.ins_ids.tolist() if i in common] == \
                [i for i in tar.ins_ids.tolist() if i in common]
        else:
            assert s["ref_dict"]["file_name"] != s["tar_dict"]["file_name"] and not common
    assert 0 < pairs < 12


@pytest.mark.parametrize("name", list(SOURCES))
def test_masks_exact_without_scaling(tree, name):
    """Scale 1 at image size 64 leaves the 48 x 64 image as it is: every mask is its box,
    mirrored when the image was flipped (told by the pixels)."""
    _, info = tree
    source = _source(tree, name, min_scale=1.0, max_scale=1.0)
    rng, flips = np.random.RandomState(1), set()
    for _ in range(8):
        s = source.draw(rng)
        for side in (s["ref_dict"], s["tar_dict"]):
            image_id = side["image_id"]
            image_id = int(str(image_id).split("_")[-1]) if isinstance(image_id, str) else image_id
            plain = trees.image_of(image_id)
            got = _denormalised(side["image"])[:48]
            flipped = np.abs(got - plain[:, ::-1]).mean() < np.abs(got - plain).mean()
            flips.add(flipped)
            for iid, mask in zip(side["instances"].ins_ids.tolist(), side["instances"].gt_masks):
                full = _full_mask(name, image_id, iid, info[name])
                want = np.zeros((64, 64), bool)
                want[:48] = full[:, ::-1] if flipped else full
                assert np.array_equal(mask.numpy(), want), (name, iid)
    assert flips == {True, False}


def _full_mask(name, image_id, iid, info):
    """The instance's mask in the unaugmented 48 x 64 image, from the scene table."""
    if SOURCES[name][2] == "instance":
        return trees.box_mask(trees.BOXES[iid])
    if info[iid][0] == "wall":  # the stuff segment: every pixel outside the objects
        return ~np.any([trees.box_mask(b) for _, b, _ in trees.SCENES[image_id]], axis=0)
    return trees.box_mask(trees.SCENES[image_id][iid % 10 - 1][1])


def test_same_seed_same_samples(tree):
    a = _source(tree, "sine_o365_sam_train").draw(np.random.RandomState(5))
    b = _source(tree, "sine_o365_sam_train").draw(np.random.RandomState(5))
    for side in ("ref_dict", "tar_dict"):
        assert torch.equal(a[side]["image"], b[side]["image"])
        assert torch.equal(a[side]["instances"].gt_masks, b[side]["instances"].gt_masks)
        assert a[side]["instances"].ins_ids.tolist() == b[side]["instances"].ins_ids.tolist()


def test_missing_image_names_the_file(tree, tmp_path):
    root, _ = tree
    records = load_instances("sine_coco_instance_train", root)
    for r in records:
        r["file_name"] = str(tmp_path / os.path.basename(r["file_name"]))
    source = InContextSource("x", AugmentSettings(image_size=64), "instance", records)
    with pytest.raises(BadSampleError, match=r"000000\d+\.jpg: no such file"):
        source.draw(np.random.RandomState(0))


def test_rgb_to_id():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]]], np.uint8)
    assert rgb_to_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 0]]


def test_task_and_source_mixture(tree, monkeypatch):
    """Panoptic : instance = 2 : 5, COCO : ADE20K = 1 : 1, COCO : Objects365 = 1 : 3."""
    root, _ = tree
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    monkeypatch.setattr(InContextSource, "draw", lambda self, rng: self.name)
    dataset = incontext.InContextTrainDataset(
        {"panoptic": [("sine_coco_panoptic_train", 1), ("sine_ade20k_panoptic_train", 1)],
         "instance": [("sine_coco_instance_train", 1), ("sine_o365_sam_train", 3)]},
        {"panoptic": 2, "instance": 5}, AugmentSettings(image_size=64), seed=0)
    rng = np.random.RandomState(0)
    n = 7000
    counts = {}
    for _ in range(n):
        name = dataset.sample(rng)
        counts[name] = counts.get(name, 0) + 1
    want = {"sine_coco_panoptic_train": 1 / 7, "sine_ade20k_panoptic_train": 1 / 7,
            "sine_coco_instance_train": 5 / 28, "sine_o365_sam_train": 15 / 28}
    for name, p in want.items():
        assert abs(counts[name] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (name, counts)


def test_loader_from_config_feeds_the_criterion(tree, monkeypatch):
    from diffews.config import build_config
    from diffews.modeling.sine import prepare_targets

    root, _ = tree
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    cfg = build_config()
    cfg.INPUT.SINE_TRAIN.IMAGE_SIZE = 64
    cfg.DATASETS.SINE_TRAIN.INSTANCE = ("sine_coco_instance_train", "sine_paco_lvis_train")
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS, cfg.SEED = 3, 0, 7
    batch = next(iter(incontext.build_incontext_train_loader(cfg)))
    assert len(batch) == 3 and {s["task"] for s in batch} <= {"panoptic", "instance"}
    for side in ("ref_dict", "tar_dict"):
        targets = prepare_targets([s[side]["instances"] for s in batch], (64, 64))
        for t, s in zip(targets, batch):
            n = len(s[side]["instances"])
            assert t["masks"].shape == (n, 64, 64) and t["labels"].shape == t["ids"].shape == (n,)
    cfg.DATASETS.SINE_TRAIN.TASK_WEIGHTS = (1.0,)
    with pytest.raises(ValueError, match="TASK_WEIGHTS"):
        incontext.build_incontext_train_loader(cfg)


def test_json_size_unlike_the_image_names_the_file(tree):
    root, _ = tree
    records = load_instances("sine_coco_instance_train", root)
    for r in records:
        r["height"] = 50
    source = InContextSource("x", AugmentSettings(image_size=64), "instance", records)
    with pytest.raises(BadSampleError, match=r"000000\d+\.jpg: .*[Mm]ismatch"):
        source.draw(np.random.RandomState(0))
