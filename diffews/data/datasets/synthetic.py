# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""A procedurally drawn few-shot segmentation benchmark that needs no files.

Used by the quick start (a tiny DiffewS learns it on a CPU in minutes) and by the tests.

**Classes.** 24 categories, each a (shape, texture) pair: 6 shapes {disk, square, triangle, ring,
cross, diamond} × 4 textures, each texture a pattern with its own colour family {red solid,
green stripes, blue checker, yellow dots} (hue, saturation, brightness, stripe angle, period and
phase are jittered per object). Class id = ``4 * shape + texture``. The 8 test classes are the
cells with ``(shape + texture) % 3 == 0``: every test class is an unseen combination of a shape and
a texture that both occur in the 16 training classes.

**Images.** A background shared by all classes (a gradient between two dull colours plus smooth
and per-pixel noise) with one object of the image's class at a random position, size and small
rotation, and, in half of the images, one distractor object of another class of the same split,
placed apart from it when possible and otherwise drawn underneath it. The label of a class is the
visible pixels of that class's object, so a support decides which of the two objects to segment.

Rendering is a pure function of ``record["synthetic"]`` (seed, size, class, distractor); every
length is a fraction of the size, so a record rendered at two sizes gives the same picture.
Registered names: ``synthetic_fss_train``, ``synthetic_fss_test`` (see ``register_synthetic``).
"""

import colorsys
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond")
# (name, pattern, hue in [0, 1))
TEXTURES = (("red_solid", "solid", 0.0), ("green_stripes", "stripes", 0.33),
            ("blue_checker", "checker", 0.62), ("yellow_dots", "dots", 0.14))
SYNTHETIC_CLASS_NAMES = [f"{t[0]}_{s}" for s in SHAPES for t in TEXTURES]
SYNTHETIC_TEST_CLASSES = [4 * s + t for s in range(len(SHAPES)) for t in range(len(TEXTURES))
                          if (s + t) % 3 == 0]
SYNTHETIC_TRAIN_CLASSES = [c for c in range(len(SYNTHETIC_CLASS_NAMES))
                           if c not in SYNTHETIC_TEST_CLASSES]
SPLIT_CLASSES = {"train": SYNTHETIC_TRAIN_CLASSES, "test": SYNTHETIC_TEST_CLASSES}

IMAGES_PER_CLASS = 60
DISTRACTOR_PROB = 0.5
TEST_EPISODES = 200  # CPU evaluation of the tiny model costs ~0.1 s per episode
_SPLIT_SEED = {"train": 1_000_000, "test": 2_000_000}


# ---------------------------------------------------------------------------------------------
# rendering


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _object_params(rng: np.random.RandomState) -> Dict:
    """Position, radius (fractions of the size), rotation and texture jitter of one object."""
    return {
        "radius": rng.uniform(0.12, 0.22),
        "center": rng.uniform(0.0, 1.0, size=2),  # rescaled into the image by _place
        "angle": rng.uniform(-0.2, 0.2),  # radians; small, so a square never becomes a diamond
        "hue": rng.uniform(-0.04, 0.04),
        "sat": rng.uniform(0.65, 1.0),
        "val": rng.uniform(0.75, 1.0),
        "period": rng.uniform(0.07, 0.1),
        "phase": rng.uniform(0.0, 1.0),
        "tex_angle": rng.uniform(0.0, np.pi),
    }


def _place(p: Dict) -> np.ndarray:
    """Centre (y, x) in [r, 1 - r] so the object lies inside the image."""
    r = p["radius"]
    return r + p["center"] * (1.0 - 2.0 * r)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, center: np.ndarray, r: float,
                angle: float) -> np.ndarray:
    """(S, S) bool mask of a shape of "radius" r centred at (y, x), in image-fraction units."""
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # object frame
    if shape == "disk":
        return u * u + v * v <= r * r
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82 * r
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if shape == "cross":
        w = 0.34 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))
    if shape == "triangle":  # equilateral, apex up (v grows downwards)
        h = 0.5 * r  # distance from the centroid to each side
        return (v <= h) & (np.sqrt(3.0) * u - v <= 2 * h) & (-np.sqrt(3.0) * u - v <= 2 * h)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: int, yy: np.ndarray, xx: np.ndarray, p: Dict) -> np.ndarray:
    """(S, S, 3) float32 colour of a texture over the whole image (masked by the caller)."""
    _, pattern, hue = TEXTURES[texture]
    c1 = _hsv(hue + p["hue"], p["sat"], p["val"])
    if pattern == "solid":
        return np.broadcast_to(c1, yy.shape + (3,))
    ca, sa = np.cos(p["tex_angle"]), np.sin(p["tex_angle"])
    u, v = ca * xx + sa * yy, -sa * xx + ca * yy
    period = p["period"]
    if pattern == "stripes":
        on = np.sin(2 * np.pi * (u / period + p["phase"])) > 0
        c2 = c1 * 0.35
    elif pattern == "checker":
        on = (np.floor(u / period + p["phase"]) + np.floor(v / period)) % 2 == 0
        c2 = _hsv(hue + p["hue"], 0.15, 0.95)
    elif pattern == "dots":
        step = 1.3 * period
        fu = (u / step + p["phase"]) % 1.0 - 0.5
        fv = (v / step) % 1.0 - 0.5
        on = fu * fu + fv * fv > 0.09  # dot radius 0.3 step
        c2 = c1 * 0.25
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.where(on[..., None], c1, c2)


def _background(rng: np.random.RandomState, size: int, yy: np.ndarray, xx: np.ndarray
                ) -> np.ndarray:
    """(S, S, 3) float32 dull gradient + smooth noise + pixel noise, the same for all classes."""
    ca = _hsv(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.7))
    cb = _hsv(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.7))
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)), 0.0, 1.0)
    img = ca * (1 - t[..., None]) + cb * t[..., None]
    # smooth noise: a random 5x5 grid, bilinearly upsampled with two interpolation matrices
    grid = rng.normal(0.0, 0.08, size=(3, 5, 5)).astype(np.float32)
    pos = (np.arange(size) + 0.5) / size * 4.0
    lo = np.minimum(np.floor(pos).astype(int), 3)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((size, 5), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    img = img + (m @ grid @ m.T).transpose(1, 2, 0)  # (3, S, S) -> (S, S, 3)
    return img + rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)


def render(record: Dict, class_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a synthetic image and the label of one class.

    Args:
        record: an image record with ``record["synthetic"] = {"seed", "size", "class",
            "distractor"}`` (the distractor class or None).
        class_id: the class whose object is labelled; a class not in the image gives an empty
            label.
    Returns:
        image (S, S, 3) uint8 RGB, label (S, S) uint8 in {0, 1} (the visible pixels of
        ``class_id``'s object).
    """
    syn = record.get("synthetic")
    if not syn:
        raise ValueError(f"record {record.get('image_id')!r} has no 'synthetic' parameters")
    size, cls, distractor = int(syn["size"]), int(syn["class"]), syn.get("distractor")
    rng = np.random.RandomState(int(syn["seed"]))
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    img = _background(rng, size, yy, xx)

    main = _object_params(rng)
    objects = [(cls, main)]
    if distractor is not None:
        other = _object_params(rng)
        for _ in range(50):  # resample the distractor's position until the two objects are apart
            gap = np.linalg.norm(_place(main) - _place(other))
            if gap > 1.15 * (main["radius"] + other["radius"]):
                break
            other["center"] = rng.uniform(0.0, 1.0, size=2)
        objects = [(int(distractor), other), (cls, main)]  # the distractor is drawn underneath

    label = np.zeros((size, size), np.uint8)
    for c, p in objects:
        shape, texture = divmod(c, len(TEXTURES))
        mask = _shape_mask(SHAPES[shape], yy, xx, _place(p), p["radius"], p["angle"])
        img = np.where(mask[..., None], _texture(texture, yy, xx, p), img)
        label[mask] = 1 if c == class_id else 0
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, label


# ---------------------------------------------------------------------------------------------
# records, registration, episodes


def synthetic_records(split: str, size: int = 64) -> List[Dict]:
    """Image records of a split: ``IMAGES_PER_CLASS`` images per class of the split.

    ``record["classes"]`` lists only the main object's class; the distractor is another class of
    the same split. IDs, classes and seeds do not depend on ``size``.
    """
    if split not in SPLIT_CLASSES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    classes = SPLIT_CLASSES[split]
    rng = np.random.RandomState(_SPLIT_SEED[split])
    records = []
    for i in range(len(classes) * IMAGES_PER_CLASS):
        cls = classes[i // IMAGES_PER_CLASS]
        others = [c for c in classes if c != cls]
        has_distractor = rng.uniform() < DISTRACTOR_PROB
        distractor = int(others[rng.randint(len(others))]) if has_distractor else None
        records.append({
            "image_id": f"syn_{split}_{i:05d}",
            "classes": [cls],
            "height": size,
            "width": size,
            "synthetic": {"seed": _SPLIT_SEED[split] + i, "size": size, "class": cls,
                          "distractor": distractor},
        })
    return records


def register_synthetic(size: int = 64) -> None:
    """Register ``synthetic_fss_{train,test}`` with records of image size ``size`` (replacing
    earlier registrations, so a test or the quick start can pick another size)."""
    for split in ("train", "test"):
        name = f"synthetic_fss_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda split=split: synthetic_records(split, size))
        MetadataCatalog.get(name).set(
            benchmark="synthetic",
            fold=0,
            split=split,
            class_ids=list(SPLIT_CLASSES[split]),
            # detectron2 stores the contract's `class_names` as `thing_classes` (Metadata._RENAMED);
            # setting it under that name avoids a rename warning, `.class_names` still reads it
            thing_classes=[SYNTHETIC_CLASS_NAMES[c] for c in SPLIT_CLASSES[split]],
            label_format="synthetic",
            ignore_boundary=False,
            num_episodes=TEST_EPISODES if split == "test" else None,
            image_size=size,
            evaluator_type="fss",
            ignore_label=255,
        )
    logger.debug(f"registered synthetic_fss_{{train,test}} at image size {size}")


def make_synthetic_episodes(split: str = "test", shot: int = 1, seed: int = 0,
                            num_episodes: Optional[int] = None) -> List[Dict]:
    """A fixed list of episodes of the synthetic benchmark.

    Each episode: class uniform over the split's classes, query uniform over that class's images,
    ``shot`` distinct supports of the class other than the query, all from
    ``np.random.RandomState(seed)``.

    Args:
        split: "train" or "test" (or the dataset name ``synthetic_fss_<split>``).
        shot: supports per episode.
        seed: episode seed.
        num_episodes: default ``TEST_EPISODES`` for test, the number of images for train.
    Returns:
        list of ``{"query": image_id, "supports": [image_id, ...], "class_id": int}``.
    """
    split = split[len("synthetic_fss_"):] if split.startswith("synthetic_fss_") else split
    records = synthetic_records(split)
    if num_episodes is None:
        num_episodes = TEST_EPISODES if split == "test" else len(records)
    if shot < 1 or shot >= IMAGES_PER_CLASS:
        raise ValueError(f"shot must be in [1, {IMAGES_PER_CLASS - 1}], got {shot}")
    by_class: Dict[int, List[str]] = {}
    for r in records:
        by_class.setdefault(r["classes"][0], []).append(r["image_id"])
    classes = SPLIT_CLASSES[split]
    rng = np.random.RandomState(seed)
    episodes = []
    for _ in range(num_episodes):
        cls = classes[rng.randint(len(classes))]
        ids = by_class[cls]
        q = rng.randint(len(ids))
        others = [i for i in range(len(ids)) if i != q]
        sup = rng.choice(len(others), size=shot, replace=False)
        episodes.append({"query": ids[q], "supports": [ids[others[j]] for j in sup],
                         "class_id": int(cls)})
    return episodes


register_synthetic()
