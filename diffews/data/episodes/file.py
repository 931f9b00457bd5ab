# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Episode files (``tools/make_episodes.py``, ``TEST.FSS.EPISODES_FILE``, the episode cache).

An episode is ``{"episode_id": int, "class_id": int, "query": ID, "supports": [ID, ...]}``. A file
of episodes (``save_episodes``) is a JSON object ``{"generator_version": GENERATOR_VERSION,
"episodes": [...]}`` with one episode per line; ``load_episodes`` also reads a plain JSON list of
episodes (files written by hand or by older versions, which carry no generator version).
``stale_version`` says why a file was not drawn by this generator (``draw.py``).
"""

import json
import os
from typing import Dict, List, Optional, Tuple

from ...utils.atomic import atomic_write
from .draw import GENERATOR_VERSION

__all__ = ["save_episodes", "read_episode_file", "load_episodes", "stale_version"]


def save_episodes(episodes: List[Dict], path: str, **header) -> None:
    """Write episodes atomically as ``{"generator_version": GENERATOR_VERSION, <header>,
    "episodes": [...]}``, one episode per line (``header``: e.g. benchmark, fold, shot, seed)."""
    head = {"generator_version": GENERATOR_VERSION, **header}
    text = json.dumps(head)[:-1] + ', "episodes": [\n'
    text += ",\n".join(json.dumps(e) for e in episodes) + "\n]}\n"
    atomic_write(path, text)  # a killed run never leaves a half list for get_episodes to reuse


def read_episode_file(path: str) -> Tuple[List[Dict], Dict]:
    """Read and validate an episode file: ``(episodes, header)``. ``header`` holds the file's
    ``generator_version`` and the other keys ``save_episodes`` wrote; it is empty for a plain JSON
    list. ``episode_id`` defaults to the position in the list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: episode file not found (write one with "
                                "tools/make_episodes.py)")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    header: Dict = {}
    if isinstance(data, dict) and isinstance(data.get("episodes"), list):
        header = {k: v for k, v in data.items() if k != "episodes"}
        data = data["episodes"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of episodes, or an object with an "
                         "'episodes' list (tools/make_episodes.py)")
    episodes = []
    for i, e in enumerate(data):
        ok = (isinstance(e, dict) and isinstance(e.get("query"), str)
              and isinstance(e.get("class_id"), int) and isinstance(e.get("supports"), list)
              and len(e["supports"]) > 0 and all(isinstance(s, str) for s in e["supports"]))
        if not ok:
            raise ValueError(f"{path}: episode {i} must be {{'query': str, 'supports': [str, ...], "
                             f"'class_id': int}}, got {e!r}")
        episodes.append({"episode_id": e.get("episode_id", i), "class_id": e["class_id"],
                         "query": e["query"], "supports": list(e["supports"])})
    ids = [e["episode_id"] for e in episodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: episode_id values are not unique")
    return episodes, header


def load_episodes(path: str) -> List[Dict]:
    """The validated episodes of an episode file (``read_episode_file`` without the header)."""
    return read_episode_file(path)[0]


def stale_version(header: Dict) -> Optional[str]:
    """None if an episode file was drawn by this generator, else why it is stale."""
    version = header.get("generator_version")
    if version == GENERATOR_VERSION:
        return None
    if version is None:
        return "it carries no generator version (written before version 2, or by hand)"
    return f"it was drawn by episode generator version {version}"
