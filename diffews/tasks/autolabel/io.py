# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Files of an autolabel run (``autolabel.py``): the images to label, the label PNGs, and
``annotations.json`` / ``skipped.json`` built from the journal's shards in image order (the same
shards give the same bytes: ids are given in order, keys sorted, no time stamps).
"""

import glob
import hashlib
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ...utils.atomic import atomic_path, atomic_write
from ...utils.errors import UsageError
from ...utils.journal import JOURNAL_FILE, Journal

logger = logging.getLogger(__name__)

__all__ = ["ANNOTATIONS", "SKIPPED", "MASKS", "JOURNAL", "SETS", "SKIP_PREFIX", "IMAGE_EXTS",
           "MASK_NAMES", "list_label_images", "mask_path", "check_mask_names", "file_identity",
           "unchanged", "save_label", "too_many_bad", "write_outputs", "check_output_folder",
           "remove_owned"]

ANNOTATIONS, SKIPPED, MASKS = "annotations.json", "skipped.json", "masks"
JOURNAL, SETS = "journal", "support_sets"
OWN_NAMES = (ANNOTATIONS, SKIPPED, MASKS, SETS, JOURNAL)  # what a run writes in --output
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# journal key prefix of an unreadable image's note: NUL is in no file name, so no image's key
SKIP_PREFIX = "\0skipped:"


def list_label_images(spec: str, exclude: Optional[str] = None) -> List[Tuple[str, str]]:
    """``[(file_name, path)]``: a folder's image files (recursive, sorted by relative path; the
    folder ``exclude``, e.g. the output inside it, skipped) or the lines of a list file (paths
    relative to its folder; blank lines and ``#`` skipped)."""
    if os.path.isdir(spec):
        out = []
        skip = os.path.abspath(exclude) if exclude else None
        for folder, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.abspath(os.path.join(folder, d)) != skip)
            for n in names:
                if n.lower().endswith(IMAGE_EXTS) and not n.startswith("."):
                    path = os.path.join(folder, n)
                    out.append((os.path.relpath(path, spec).replace(os.sep, "/"), path))
        out.sort()
    elif os.path.isfile(spec):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as f:
            lines = [x.strip() for x in f if x.strip() and not x.strip().startswith("#")]
        out = [(x, x if os.path.isabs(x) else os.path.join(base, x)) for x in lines]
        seen = set()
        for name, _ in out:
            if name in seen:
                raise ValueError(f"{spec}: {name} is listed twice")
            seen.add(name)
    else:
        raise FileNotFoundError(f"{spec}: no such folder or list file (--images)")
    if not out:
        raise FileNotFoundError(f"{spec}: no image files ({', '.join(IMAGE_EXTS)}) (--images)")
    return out


# how label PNGs are named, recorded in the fingerprint (``--save-masks``); a journal of True
# named them without the image's extension (``x.jpg`` and ``x.png`` wrote the same file)
MASK_NAMES = "masks/<file name>.png"


def mask_path(output: str, file_name: str, legacy: bool = False) -> str:
    """``OUTPUT/masks/<file_name>.png``, the image's extension kept (``x.jpg`` -> ``x.jpg.png``,
    ``x.png`` -> ``x.png.png``); an absolute or ``..`` name of a list file stays inside
    ``masks/``. ``legacy``: the name an older run gave (without the extension)."""
    rel = os.path.normpath(file_name)
    rel = (os.path.splitext(rel)[0] if legacy else rel).lstrip("/\\").replace("..", "__")
    return os.path.join(output, MASKS, rel + ".png")


def check_mask_names(output: str, keys: Iterable[str]) -> None:
    """Refuse (one line naming both) two images whose label PNGs would be the same file."""
    seen: Dict[str, str] = {}
    for key in keys:
        path = os.path.normcase(mask_path(output, key))
        if path in seen:
            raise ValueError(f"--save-masks: {seen[path]} and {key} would both be labelled in "
                             f"{mask_path(output, key)}; rename one of them")
        seen[path] = key


def file_identity(path: str) -> Dict:
    """What an image's shard was computed from: ``{"size", "mtime_ns", "sha256"}`` (the file's
    bytes)."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def unchanged(path: str, recorded: Optional[Dict]) -> bool:
    """Whether ``path`` still is the file of ``file_identity`` ``recorded``: the same size and
    modification time, or, when only the time differs (a copy, a touch), the same bytes. A
    missing file or record (a shard of an older run) is a change."""
    if not isinstance(recorded, dict):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != recorded.get("size"):
        return False
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    try:
        return file_identity(path)["sha256"] == recorded.get("sha256")
    except OSError:
        return False


def save_label(path: str, label: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(label).save(tmp, format="PNG")


def too_many_bad(first: str, bad: int, total: int, limit: float, where: str) -> ValueError:
    return ValueError(f"{first}; {bad} of {total} images are unreadable, more than "
                      f"--max-bad-fraction {limit:g}; {where}")


def write_outputs(journal: Journal, keys: List[str], categories: List[Dict], output: str,
                  max_bad_fraction: float) -> Dict:
    """``skipped.json`` and, unless too many images are unreadable, ``annotations.json``, both
    from the journal's shards in image order (byte for byte the same for the same shards)."""
    coco = {"images": [], "annotations": [], "categories": categories}
    skipped = []
    for key in keys:
        if journal.done(key):
            value = journal.get(key)
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": key, "height": value["height"],
                                   "width": value["width"]})
            for ann in value["annotations"]:
                coco["annotations"].append(dict(ann, id=len(coco["annotations"]) + 1,
                                                image_id=image_id))
        else:
            skipped.append(journal.get(SKIP_PREFIX + key))  # KeyError naming the shard if neither
    atomic_write(os.path.join(output, SKIPPED),
                 json.dumps(skipped, indent=1, sort_keys=True) + "\n")
    if len(skipped) > max_bad_fraction * len(keys):
        raise too_many_bad(skipped[0]["reason"], len(skipped), len(keys), max_bad_fraction,
                            f"all are listed in {os.path.join(output, SKIPPED)}")
    atomic_write(os.path.join(output, ANNOTATIONS),
                 json.dumps(coco, separators=(",", ":"), sort_keys=True) + "\n")
    logger.info("Wrote %s: %d images, %d annotations, %d categories; %d unreadable images in %s",
                os.path.join(output, ANNOTATIONS), len(coco["images"]),
                len(coco["annotations"]), len(coco["categories"]), len(skipped),
                os.path.join(output, SKIPPED))
    return {"annotations": len(coco["annotations"]), "skipped": len(skipped)}


def check_output_folder(output: str) -> Optional[Dict]:
    """Refuse (``UsageError``, one line) an ``--output`` that is not an autolabel run's output
    but holds a name a run writes (``OWN_NAMES``: a user's own ``annotations.json`` or
    ``masks/``), or the journal of another kind of run; with or without ``--overwrite``.

    Returns:
        the fingerprint of the autolabel journal the folder holds (None: none, nothing of ours).
    """
    what = f"--output {output}"
    old = Journal.stored_fingerprint(os.path.join(output, JOURNAL))
    if old is not None:
        if isinstance(old, dict) and "supports" in old and "save_masks" in old:
            return old
        raise UsageError(f"{what}: {os.path.join(output, JOURNAL, JOURNAL_FILE)} is the journal "
                         "of another kind of run, not of autolabel; choose another output "
                         "folder")
    found = [n for n in OWN_NAMES if os.path.lexists(os.path.join(output, n))]
    if found:
        raise UsageError(f"{what}: holds {', '.join(found)} but no autolabel journal ("
                         f"{JOURNAL}/{JOURNAL_FILE}), so it is not an autolabel run's output and "
                         "would be written over; choose another output folder (--overwrite "
                         "deletes only what an autolabel run wrote)")
    return None


def remove_owned(files: Iterable[str], folders: Iterable[str]) -> int:
    """Delete ``files`` where they exist, with the temporaries a killed write of each may have
    left (``utils/atomic.py``: ``.<name>.<random>.tmp*`` beside it), then each of ``folders``
    and the folders below it that this left empty (a user's file keeps its folder).

    Returns:
        how many files were deleted.
    """
    removed = 0
    for path in files:
        base, parent = os.path.basename(path), os.path.dirname(path)
        temps = glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.*.tmp*"))
        for p in [path, *temps]:
            if os.path.isfile(p) or os.path.islink(p):
                os.remove(p)
                removed += 1
    for top in folders:
        for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                pass
    return removed
