# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The test-time mapper (shapes, dtypes, resizing rules, 255 handling) and the sharded loader."""

import logging

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

import diffews  # noqa: F401  (registers the datasets)
from diffews import add_diffews_config
from diffews.data import EpisodeMapper, build_fss_test_loader, get_episodes, load_sample
from diffews.data import resolve_episodes, save_episodes
from diffews.utils.image import resize_image, resize_mask
from tests._fss_trees import register_all, write_fss_tree, write_lvis_tree, write_pascal_tree

S = 16


@pytest.fixture(autouse=True)
def tree_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setenv("DIFFEWS_SPLITS", "tree")
    register_all()
    return tmp_path


def _cfg(**fss):
    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.INPUT.IMAGE_SIZE = S
    cfg.DATALOADER.NUM_WORKERS = 0
    for k, v in fss.items():
        setattr(cfg.TEST.FSS, k, v)
    return cfg


def _episodes(name, shot=1):
    return resolve_episodes(get_episodes(name, shot), DatasetCatalog.get(name), name)


def test_mapper_pascal_shapes_and_boundary(tree_env):
    write_pascal_tree(str(tree_env))
    episode = _episodes("pascal5i_fold0_test", shot=2)[0]
    out = EpisodeMapper(S, "class_value", True, keep_original=True)(episode)
    assert out["image"].shape == (3, S, S) and out["image"].dtype == torch.uint8
    assert out["support_images"].shape == (2, 3, S, S)
    assert out["support_images"].dtype == torch.uint8
    assert out["support_masks"].shape == (2, S, S) and out["support_masks"].dtype == torch.uint8
    assert out["sem_seg"].shape == (S, S) and out["sem_seg"].dtype == torch.uint8
    assert set(out["sem_seg"].unique().tolist()) == {0, 1, 255}
    assert set(out["support_masks"].unique().tolist()) == {0, 1}  # boundary 255 -> 0
    assert (out["height"], out["width"]) == (24, 32)
    image, label = load_sample(episode["query"], episode["class_id"], "class_value", True)
    assert torch.equal(out["sem_seg"], torch.from_numpy(resize_mask(label, S)))
    assert torch.equal(out["image"], torch.from_numpy(resize_image(image, S)).permute(2, 0, 1))
    assert torch.equal(out["sem_seg_original"], torch.from_numpy(label))
    _, slabel = load_sample(episode["supports"][1], episode["class_id"], "class_value", True)
    assert torch.equal(out["support_masks"][1],
                       torch.from_numpy(resize_mask((slabel == 1).astype(np.uint8), S)))
    assert out["query_id"] == episode["query"]["image_id"] and out["class_id"] == 0
    assert out["support_ids"] == [r["image_id"] for r in episode["supports"]]
    no_boundary = EpisodeMapper(S, "class_value", False)(episode)
    assert set(no_boundary["sem_seg"].unique().tolist()) == {0, 1}
    assert "sem_seg_original" not in no_boundary


def test_mapper_fss_and_lvis_formats(tree_env):
    write_fss_tree(str(tree_env))
    out = EpisodeMapper(S, "threshold128", False)(_episodes("fss1000_test")[0])
    assert set(out["sem_seg"].unique().tolist()) == {0, 1} and out["class_id"] == 760
    write_lvis_tree(str(tree_env))
    out = EpisodeMapper(S, "polygons", False)(_episodes("lvis92i_fold0_test")[0])
    assert out["sem_seg"].sum() > 0 and out["support_masks"].sum() > 0


def test_empty_support_mask_warns_and_keeps(tree_env, caplog):
    write_fss_tree(str(tree_env))
    episode = _episodes("fss1000_test")[0]
    empty = dict(episode["supports"][0], mask_file=str(tree_env / "empty.png"))
    from PIL import Image

    Image.fromarray(np.zeros((24, 32), np.uint8)).save(empty["mask_file"])
    episode = dict(episode, supports=[empty])
    with caplog.at_level(logging.WARNING, logger="diffews.data.episodes.test"):
        out = EpisodeMapper(S, "threshold128", False)(episode)
    assert out["support_masks"].sum() == 0
    assert f"support {empty['image_id']} has an empty mask" in caplog.text


def test_resolve_errors(tree_env):
    write_fss_tree(str(tree_env))
    records = DatasetCatalog.get("fss1000_test")
    with pytest.raises(ValueError, match="'nope/1' is not in fss1000_test"):
        resolve_episodes([{"episode_id": 0, "class_id": 760, "query": "nope/1",
                           "supports": ["apple/2"]}], records, "fss1000_test")
    with pytest.raises(ValueError, match="not listed under class 761"):
        resolve_episodes([{"episode_id": 0, "class_id": 761, "query": "apple/1",
                           "supports": ["apple/2"]}], records, "fss1000_test")


def _ids(loader):
    ids = []
    for batch in loader:
        assert len(batch) == 1
        ids.append(batch[0]["episode_id"])
    return ids


def test_loader_order_and_sharding(tree_env, monkeypatch):
    write_fss_tree(str(tree_env))
    cfg = _cfg(SHOT=1)
    full = _ids(build_fss_test_loader(cfg, "fss1000_test"))
    assert full == list(range(30))
    assert (tree_env / "episodes" / "fss1000_test_1shot_seed0_tree.json").is_file()
    shards = []
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        shards.append(_ids(build_fss_test_loader(cfg, "fss1000_test")))
    assert len(shards[0]) == len(shards[1]) == 15
    assert shards[0] + shards[1] == full


def test_loader_episode_file_and_count(tree_env):
    write_pascal_tree(str(tree_env))
    episodes = get_episodes("pascal5i_fold3_test", 1)
    assert len(episodes) == 1000
    path = tree_env / "mine.json"
    save_episodes(episodes[5:8], str(path))
    loader = build_fss_test_loader(_cfg(EPISODES_FILE=str(path)), "pascal5i_fold3_test")
    assert _ids(loader) == [5, 6, 7]
    loader = build_fss_test_loader(_cfg(NUM_EPISODES=4), "pascal5i_fold3_test")
    batch = next(iter(loader))[0]
    assert batch["sem_seg"].shape == (S, S) and batch["class_id"] in range(15, 20)
    assert _ids(loader) == [0, 1, 2, 3]


def test_save_episode_picture(tree_env):
    from PIL import Image

    from diffews.utils.visualize import save_episode

    write_fss_tree(str(tree_env))
    inputs = EpisodeMapper(S, "threshold128", False)(_episodes("fss1000_test", shot=2)[3])
    path = save_episode(inputs, {"pred_mask": inputs["sem_seg"] == 1}, str(tree_env / "vis"))
    assert path.endswith("episode_00003_class_760.png")
    picture = Image.open(path)
    assert picture.height == 256 and picture.width > 4 * 256  # query x2 + 2 supports
