# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The page's examples: pictures of the built-in synthetic benchmark's *test* classes (the quick
start's model never saw them in training), written as PNG files with their masks."""

import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..data.datasets.synthetic import SYNTHETIC_CLASS_NAMES, render, synthetic_records
from ..utils.atomic import atomic_open

__all__ = ["DemoExample", "write_synthetic_examples"]

# (class id, shots): test classes are the (shape, texture) cells with (shape + texture) % 3 == 0
# blue checker square, green stripes triangle, red solid ring
EXAMPLE_EPISODES = ((6, 1), (9, 2), (12, 1))
QUERIES_PER_EXAMPLE = 3


@dataclass
class DemoExample:
    """supports: [(image file, mask file), ...]; queries: [image file, ...]; label: a title."""

    supports: List[Tuple[str, str]]
    queries: List[str]
    label: str


def write_synthetic_examples(folder: str, size: int = 128) -> List[DemoExample]:
    """Render the examples into ``folder`` (files already there are rewritten: rendering is
    deterministic) and describe them.

    Each example takes the first ``shots`` images of a test class as supports (mask: that class's
    object) and its next images *with a distractor object* as queries, so that the support
    decides which of the two objects is segmented.

    Args:
        size: side of the rendered images in pixels (rendering is size independent).
    """
    os.makedirs(folder, exist_ok=True)
    records = synthetic_records("test", size)
    out = []
    for cls, shots in EXAMPLE_EPISODES:
        mine = [r for r in records if r["classes"][0] == cls]
        supports = mine[:shots]
        queries = [r for r in mine[shots:] if r["synthetic"]["distractor"] is not None]
        queries = queries[:QUERIES_PER_EXAMPLE]
        name = SYNTHETIC_CLASS_NAMES[cls]
        shape = name.rsplit("_", 1)[1]  # the examples' shapes differ: short file names
        pairs = []
        for i, r in enumerate(supports, 1):
            image, label = render(r, cls)
            pairs.append((_save(folder, f"{shape}_support{i}.png", image),
                          _save(folder, f"{shape}_support{i}_mask.png", label * 255)))
        files = [_save(folder, f"{shape}_query{i}.png", render(r, cls)[0])
                 for i, r in enumerate(queries, 1)]
        label = f"{shots}-shot: {name.replace('_', ' ')}"
        out.append(DemoExample(pairs, files, label))
    return out


def _save(folder: str, name: str, array: np.ndarray) -> str:
    path = os.path.join(folder, name)
    with atomic_open(path, "wb") as f:  # a page never shows a half-written example
        Image.fromarray(array.astype(np.uint8)).save(f, format="PNG")
    return path
