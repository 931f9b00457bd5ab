# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episode generation: counts, determinism, equality with the reference (HSNet/Matcher) loops
written here independently with the global ``np.random.seed(0)``, caching and episode files."""

import glob
import gzip
import importlib.util
import json
import logging
import os
import pickle

import numpy as np
import pytest

import diffews  # noqa: F401  (registers the datasets)
from diffews.data import episodes as ep
from diffews.data.episodes import benchmarks
from diffews.data.datasets import synthetic
from diffews.data.datasets.roots import shipped_splits_dir
from tests._fss_trees import register_all, write_fss_tree, write_lvis_tree, write_pascal_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fresh_registration(monkeypatch):
    monkeypatch.delenv("DIFFEWS_SPLITS", raising=False)
    register_all()


def _stem(path):
    return path.split("/")[-1].split(".")[0]


def _tuples(episodes):
    return [(e["class_id"], e["query"], e["supports"]) for e in episodes]


# ---- reference loops (HSNet data/coco.py, data/pascal.py, data/fss.py; Matcher data/lvis.py) ----
def reference_coco(fold, shot):
    path = os.path.join(shipped_splits_dir(), "coco", "val", f"fold{fold}.json.gz")
    with gzip.open(path, "rt") as f:
        img_metadata_classwise = {int(k): v for k, v in json.load(f).items()}
    class_ids = [fold + 4 * v for v in range(20)]
    np.random.seed(0)
    out = []
    for _ in range(1000):
        class_sample = np.random.choice(class_ids, 1, replace=False)[0]
        query_name = np.random.choice(img_metadata_classwise[class_sample], 1, replace=False)[0]
        support_names = []
        while True:
            support_name = np.random.choice(img_metadata_classwise[class_sample], 1,
                                            replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shot:
                break
        out.append((int(class_sample), _stem(query_name), [_stem(s) for s in support_names]))
    return out


def reference_pascal(split_file, shot):
    with open(split_file) as f:
        meta = [[d.split("__")[0], int(d.split("__")[1]) - 1] for d in f.read().split("\n")[:-1]]
    classwise = {c: [] for c in range(20)}
    for name, c in meta:
        classwise[c] += [name]
    np.random.seed(0)
    out = []
    for idx in range(1000):
        idx %= len(meta)
        query_name, class_sample = meta[idx]
        support_names = []
        while True:
            support_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shot:
                break
        out.append((class_sample, query_name, [str(s) for s in support_names]))
    return out


def reference_fss(base, split_file, shot):
    with open(split_file) as f:
        categories = sorted(f.read().split("\n")[:-1])
    img_metadata = []
    for cat in categories:
        for p in sorted(glob.glob("%s/*" % os.path.join(base, cat))):
            if os.path.basename(p).split(".")[1] == "jpg":
                img_metadata.append(p)
    np.random.seed(0)
    out = []
    for query_name in img_metadata:
        class_sample = categories.index(query_name.split("/")[-2]) + 760
        support_names = []
        while True:
            support_name = np.random.choice(range(1, 11), 1, replace=False)[0]
            support_name = os.path.join(os.path.dirname(query_name), str(support_name)) + ".jpg"
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shot:
                break
        cat = query_name.split("/")[-2]
        out.append((class_sample, f"{cat}/{_stem(query_name)}",
                    [f"{cat}/{_stem(s)}" for s in support_names]))
    return out


def reference_lvis(pkl, fold, shot):
    """docs/PROTOCOLS.md section 2c (Matcher lvis.py): classes with more than `shot` images,
    interleaved fold; episode idx: class idx % n, query = choice over the class's images in dict
    order, then each support drawn the same way, only a draw equal to the query rejected (repeats
    kept)."""
    with open(pkl, "rb") as f:
        anno = pickle.load(f)
    kept = [c for c in anno.keys() if len(anno[c]) > shot]
    fold_classes = [kept[fold + 10 * v] for v in range(len(kept) // 10)]
    np.random.seed(0)
    out = []
    for idx in range(2300):
        local = idx % len(fold_classes)
        images = list(anno[fold_classes[local]].keys())
        query = np.random.choice(images, 1, replace=False)[0]
        supports = []
        while len(supports) < shot:
            s = np.random.choice(images, 1, replace=False)[0]
            if s != query:
                supports.append(s)
        out.append((local, _stem(query), [_stem(s) for s in supports]))
    return out


# ---- tests ----
@pytest.mark.parametrize("fold,shot", [(0, 1), (3, 5)])
def test_coco_equals_reference(tmp_path, fold, shot):
    episodes = ep.make_episodes("coco", fold, shot, root=str(tmp_path))
    assert len(episodes) == 1000 and [e["episode_id"] for e in episodes] == list(range(1000))
    assert {e["class_id"] for e in episodes} == set(range(fold, 80, 4))
    assert _tuples(episodes) == reference_coco(fold, shot)


def test_replace_false_matters(tmp_path):
    """The stream of choice(replace=True) differs: equality above is a real check."""
    rng_false, rng_true = np.random.RandomState(0), np.random.RandomState(0)
    pool = list(range(50))
    assert [rng_false.choice(pool, 1, replace=False)[0] for _ in range(5)] != \
        [rng_true.choice(pool, 1, replace=True)[0] for _ in range(5)]


def test_pascal_equals_reference(tmp_path):
    shipped = ep.make_episodes("pascal", 2, 1, root=str(tmp_path))
    assert _tuples(shipped) == reference_pascal(
        os.path.join(shipped_splits_dir(), "pascal", "val", "fold2.txt"), 1)
    assert {e["class_id"] for e in shipped} == set(range(10, 15))
    write_pascal_tree(str(tmp_path))
    tree = ep.make_episodes("pascal", 1, 2, root=str(tmp_path), splits="tree")
    assert len(tree) == 1000
    assert _tuples(tree) == reference_pascal(str(tmp_path / "VOC2012/splits/val/fold1.txt"), 2)
    assert tree[0]["query"] == tree[10]["query"]  # 10 (image, class) lines, cycled


@pytest.mark.parametrize("shot", [1, 5])
def test_fss_equals_reference(tmp_path, shot):
    write_fss_tree(str(tmp_path))
    episodes = ep.make_episodes("fss", 0, shot, root=str(tmp_path), splits="tree")
    assert len(episodes) == 30  # one per test image
    assert _tuples(episodes) == reference_fss(str(tmp_path / "FSS-1000/data"),
                                              str(tmp_path / "FSS-1000/splits/test.txt"), shot)
    assert {e["class_id"] for e in episodes} == {760, 761, 762}
    assert all(e["query"] not in e["supports"] for e in episodes)


@pytest.mark.parametrize("fold,shot", [(0, 1), (7, 5)])
def test_lvis_equals_reference(tmp_path, fold, shot):
    write_lvis_tree(str(tmp_path))
    episodes = ep.make_episodes("lvis", fold, shot, root=str(tmp_path))
    assert len(episodes) == 2300
    assert _tuples(episodes) == reference_lvis(str(tmp_path / "LVIS/lvis_val.pkl"), fold, shot)
    n = 2 if shot == 1 else 1  # classes per fold of the tiny tree under each filter
    assert [e["class_id"] for e in episodes[:4]] == [i % n for i in range(4)]
    assert all(e["query"] not in e["supports"] for e in episodes)
    if shot == 5:  # 5 draws among 5 other images: most episodes repeat a support, as Matcher's do
        repeats = sum(len(set(e["supports"])) < shot for e in episodes)
        assert repeats > 2000


def test_lvis_tool_equals_reference_and_regenerates_stale_file(tmp_path, caplog):
    """tools/make_episodes.py draws LVIS 5-shot episodes as Matcher does, and says when it
    regenerates a file of an older generator (version 1 kept LVIS supports distinct)."""
    tool = _tool()
    write_lvis_tree(str(tmp_path))
    out = tmp_path / "lvis_f3_5shot.json"
    old = reference_lvis(str(tmp_path / "LVIS/lvis_val.pkl"), 3, 5)[:3]
    out.write_text(json.dumps([{"class_id": c, "query": q, "supports": sorted(set(s))[:1] * 5}
                               for c, q, s in old]))  # a plain list: no generator version
    argv = ["--benchmark", "lvis", "--fold", "3", "--shot", "5", "--root", str(tmp_path),
            "--output", str(out)]
    with caplog.at_level(logging.INFO, logger="diffews.make_episodes"):
        assert tool.main(argv) == 0
    assert f"regenerating {out}: it carries no generator version" in caplog.text
    episodes, header = ep.read_episode_file(str(out))
    assert header["generator_version"] == ep.GENERATOR_VERSION == 2
    assert header["benchmark"] == "lvis" and header["shot"] == 5
    assert _tuples(episodes) == reference_lvis(str(tmp_path / "LVIS/lvis_val.pkl"), 3, 5)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffews.make_episodes"):
        assert tool.main(argv) == 0
    assert "rewriting" in caplog.text and "regenerating" not in caplog.text


def test_deterministic_and_seed_dependent(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    ep.save_episodes(ep.make_episodes("coco", 1, 1, root=str(tmp_path)), str(a))
    ep.save_episodes(ep.make_episodes("coco", 1, 1, root=str(tmp_path)), str(b))
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    assert data["generator_version"] == ep.GENERATOR_VERSION
    loaded = data["episodes"]
    assert isinstance(loaded, list) and set(loaded[0]) == {"episode_id", "class_id", "query",
                                                           "supports"}
    assert a.read_text().count("\n") == len(loaded) + 2  # one episode per line
    assert ep.load_episodes(str(a)) == loaded
    a.write_text(json.dumps(loaded))  # a plain list (hand-written, older versions) still loads
    assert ep.load_episodes(str(a)) == loaded
    other = ep.make_episodes("coco", 1, 1, root=str(tmp_path), seed=1)
    assert _tuples(other) != _tuples(loaded)
    first = ep.make_episodes("coco", 1, 1, root=str(tmp_path), num_episodes=10)
    assert first == loaded[:10]


def test_get_episodes_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    episodes = ep.get_episodes("pascal5i_fold0_test", 1, 0)
    cache = tmp_path / "episodes" / "pascal5i_fold0_test_1shot_seed0.json"
    assert cache.is_file() and ep.load_episodes(str(cache)) == episodes

    def boom(*args, **kwargs):
        raise AssertionError("regenerated instead of reusing the cache")

    monkeypatch.setattr(benchmarks, "make_episodes", boom)
    assert ep.get_episodes("pascal5i_fold0_test", 1, 0) == episodes
    with pytest.raises(AssertionError):
        ep.get_episodes("pascal5i_fold0_test", 1, 0, num_episodes=5)


@pytest.mark.parametrize("stale", ["plain list", "version 1", "half-written"])
def test_stale_episode_cache_is_regenerated(tmp_path, monkeypatch, caplog, stale):
    """A cached list of another generator version is never reused: it is drawn again, with a
    warning, and rewritten with the current version."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    episodes = ep.get_episodes("pascal5i_fold1_test", 1, 0, num_episodes=6)
    cache = tmp_path / "episodes" / "pascal5i_fold1_test_1shot_seed0_n6.json"
    wrong = [dict(e, supports=[e["query"]]) for e in episodes]  # recognisably not the draw
    text = {"plain list": json.dumps(wrong),
            "version 1": json.dumps({"generator_version": 1, "episodes": wrong}),
            "half-written": json.dumps({"generator_version": 2, "episodes": wrong})[:40]}[stale]
    cache.write_text(text)
    with caplog.at_level("WARNING", logger="diffews.data.episodes.benchmarks"):
        again = ep.get_episodes("pascal5i_fold1_test", 1, 0, num_episodes=6)
    assert again == episodes
    assert "regenerating the cached episodes" in caplog.text and str(cache) in caplog.text
    assert ep.read_episode_file(str(cache))[1]["generator_version"] == ep.GENERATOR_VERSION


def test_episode_file_checks(tmp_path):
    path = tmp_path / "e.json"
    episodes = ep.make_episodes("pascal", 0, 1, root=str(tmp_path), num_episodes=4)
    ep.save_episodes(episodes, str(path))
    assert len(ep.get_episodes("pascal5i_fold0_test", 1, episodes_file=str(path))) == 4
    with pytest.raises(ValueError, match="e.json.*TEST.FSS.SHOT"):
        ep.get_episodes("pascal5i_fold0_test", 5, episodes_file=str(path))
    path.write_text('[{"query": "a", "supports": [], "class_id": 0}]')
    with pytest.raises(ValueError, match="e.json: episode 0"):
        ep.load_episodes(str(path))
    with pytest.raises(FileNotFoundError, match="make_episodes"):
        ep.load_episodes(str(tmp_path / "none.json"))


def test_lvis_shot_filter_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(ValueError, match="lvis92i_fold2_5shot_test"):
        ep.get_episodes("lvis92i_fold2_test", 5, 0)


def test_dataset_names_and_errors():
    assert ep.test_dataset_name("coco", 3, 1) == "coco20i_fold3_test"
    assert ep.test_dataset_name("fss", 0, 5) == "fss1000_test"
    assert ep.test_dataset_name("lvis", 4, 5) == "lvis92i_fold4_5shot_test"
    with pytest.raises(ValueError, match="folds 0..3"):
        ep.make_episodes("pascal", 4, 1)
    with pytest.raises(ValueError, match="shot"):
        ep.make_episodes("coco", 0, 0)


def _tool():
    spec = importlib.util.spec_from_file_location("make_episodes",
                                                  os.path.join(ROOT, "tools", "make_episodes.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_make_episodes_tool(tmp_path):
    tool = _tool()
    write_fss_tree(str(tmp_path))
    out = tmp_path / "fss.json"
    assert tool.main(["--benchmark", "fss", "--shot", "1", "--root", str(tmp_path), "--splits",
                      "tree", "--num-episodes", "7", "--output", str(out)]) == 0
    assert ep.load_episodes(str(out)) == ep.make_episodes("fss", 0, 1, str(tmp_path),
                                                         num_episodes=7, splits="tree")


def test_synthetic_episodes_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    episodes = ep.get_episodes("synthetic_fss_test", 2, 0, num_episodes=5)
    drawn = synthetic.make_synthetic_episodes("test", 2, 0, 5)
    assert [e["episode_id"] for e in episodes] == list(range(5))
    assert _tuples(episodes) == _tuples(drawn)
    assert not (tmp_path / "episodes").exists()


def test_splits_folder(tmp_path, monkeypatch):
    """A splits folder laid out like datasets/splits/ replaces the shipped lists."""
    folder = tmp_path / "my_splits" / "pascal" / "val"
    folder.mkdir(parents=True)
    with open(os.path.join(shipped_splits_dir(), "pascal", "val", "fold0.txt")) as f:
        lines = f.read().split("\n")[:-1]
    mine = [x for x in lines if x.endswith("__01")][:4]
    mine += [x for x in lines if x.endswith("__02")][:4]
    (folder / "fold0.txt").write_text("\n".join(mine) + "\n")
    episodes = ep.make_episodes("pascal", 0, 1, root=str(tmp_path),
                                splits=str(tmp_path / "my_splits"), num_episodes=16)
    names = [x.split("__")[0] for x in mine]
    assert [e["query"] for e in episodes] == [names[i % 8] for i in range(16)]
    monkeypatch.setenv("DIFFEWS_SPLITS", str(tmp_path / "my_splits"))
    assert ep.make_episodes("pascal", 0, 1, root=str(tmp_path), num_episodes=16) == episodes
    # a class with a single image: the reference would loop forever, we raise
    (folder / "fold0.txt").write_text("\n".join(mine[:5]) + "\n")
    with pytest.raises(ValueError, match="class 1: 0 image"):
        ep.make_episodes("pascal", 0, 1, root=str(tmp_path))
