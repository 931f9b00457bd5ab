# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Absent-target episodes: the published FSS protocols always put the class in the query; these
episodes keep a protocol episode's class and supports and take a query that does not hold the
class, so that an evaluation also measures whether the model says "not here"
(``TEST.FSS.NEGATIVE_RATIO``).

Drawn after the protocol's episodes, from their own ``np.random.RandomState(seed + 1)`` (so the
protocol's own draws never move): for negative i, a source episode (uniform over the protocol
episodes), then a query uniform over the records that cannot hold the source's class. A record
can hold a class when it is listed under it (``record["classes"]``) or, for the synthetic
benchmark, when its distractor object is of that class. Negative ids continue after the largest
protocol id; each carries ``"negative": True`` (the mapper passes it on to the evaluator).
"""

from typing import Dict, List, Sequence

import numpy as np

__all__ = ["holds_class", "add_negative_episodes"]


def holds_class(record: Dict, class_id: int) -> bool:
    """Whether ``record`` may show ``class_id`` (listed under it, or a synthetic distractor)."""
    if int(class_id) in [int(c) for c in record.get("classes", ())]:
        return True
    distractor = (record.get("synthetic") or {}).get("distractor")
    return distractor is not None and int(distractor) == int(class_id)


def add_negative_episodes(episodes: Sequence[Dict], records: Sequence[Dict], ratio: float,
                          seed: int = 0) -> List[Dict]:
    """The protocol's resolved episodes followed by ``round(ratio * len(episodes))`` negatives.

    Args:
        episodes: resolved episodes (``{"episode_id", "class_id", "query": record,
            "supports": [record, ...]}``, ``test.resolve_episodes``).
        records: the test dataset's records, where negative queries are drawn from.
        ratio: negatives per protocol episode (>= 0); 0 returns ``episodes`` unchanged.
        seed: the episode seed (``TEST.FSS.SEED``).
    """
    ratio = float(ratio)
    if ratio < 0:
        raise ValueError(f"TEST.FSS.NEGATIVE_RATIO must be >= 0, got {ratio}")
    episodes = list(episodes)
    n = int(round(ratio * len(episodes)))
    if n == 0:
        return episodes
    ids = [e["episode_id"] for e in episodes]
    if not all(isinstance(i, (int, np.integer)) for i in ids):
        raise ValueError("TEST.FSS.NEGATIVE_RATIO needs integer episode ids")
    pools: Dict[int, List[Dict]] = {}
    rng = np.random.RandomState(int(seed) + 1)
    start = max(int(i) for i in ids) + 1
    out = []
    for i in range(n):
        source = episodes[rng.randint(len(episodes))]
        cls = int(source["class_id"])
        if cls not in pools:
            pools[cls] = [r for r in records if not holds_class(r, cls)]
            if not pools[cls]:
                raise ValueError(f"TEST.FSS.NEGATIVE_RATIO: every test image may hold class {cls}; "
                                 "no absent-target query can be drawn")
        query = pools[cls][rng.randint(len(pools[cls]))]
        out.append({"episode_id": start + i, "class_id": cls, "query": query,
                    "supports": list(source["supports"]), "negative": True})
    return episodes + out
