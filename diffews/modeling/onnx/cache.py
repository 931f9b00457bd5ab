# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``cached_export``: one ONNX export per model and size, kept beside the weights.

Layout: ``<weights folder or cache folder>/onnx/<size>px-<key>/``, with ``key`` a hash of the
SupportSet model signature, the image size and the export format. A folder whose manifest does not
match the model (weights changed where the signature's fingerprint does not look, another size, an
older format, a missing graph file, an interrupted export) is rebuilt with a log line, never used.
"""

import hashlib
import json
import logging
import os
from typing import Optional

from ...utils.atomic import atomic_folder
from ..support_set import signature_difference
from .export import (FORMAT, GRAPHS, OPSET, VERSION, OnnxExportError, export_model,
                     read_manifest, weights_digest)

logger = logging.getLogger(__name__)

__all__ = ["cached_export", "export_key", "export_folder", "stale_reason"]


def export_key(model, image_size: int) -> str:
    """A short hash of what an export depends on: model signature, image size, format, opset."""
    text = json.dumps({"signature": model.support_signature(), "image_size": int(image_size),
                       "format": FORMAT, "version": VERSION, "opset": OPSET}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def export_folder(model, weights_dir_or_output: str, image_size: int) -> str:
    """Where ``cached_export`` keeps the export: beside a weights file (its folder), or in a
    weights or cache folder."""
    root = os.path.abspath(weights_dir_or_output)
    if os.path.isfile(root):
        root = os.path.dirname(root)
    return os.path.join(root, "onnx", f"{int(image_size)}px-{export_key(model, image_size)}")


def stale_reason(folder: str, model, image_size: int) -> str:
    """'' if ``folder`` holds a complete export of ``model`` at ``image_size``, else why not."""
    try:
        manifest = read_manifest(folder)
    except OnnxExportError as e:
        return str(e)
    if manifest.get("image_size") != int(image_size):
        return f"exported for {manifest.get('image_size')} px, not {image_size}"
    if manifest.get("opset") != OPSET:
        return f"opset {manifest.get('opset')}, not {OPSET}"
    diff = signature_difference(manifest.get("signature"), model.support_signature(),
                                ("the export", "the model"))
    if diff:
        return f"another model: {diff}"
    digest = weights_digest(model)
    if manifest.get("weights_digest") != digest:
        return f"other weights (digest {manifest.get('weights_digest')} in the export, {digest})"
    for name in GRAPHS:
        info = manifest.get("graphs", {}).get(name)
        if not info or not os.path.isfile(os.path.join(folder, info["file"])):
            return f"graph {name} missing"
    return ""


def cached_export(model, weights_dir_or_output: str, image_size: int, check: bool = True,
                  providers: Optional[list] = None) -> str:
    """The folder of an up-to-date export of ``model`` at ``image_size``, exporting it if needed.

    Args:
        weights_dir_or_output: the weights file or folder (the export goes beside it), or any
            cache folder.
        check, providers: see ``export_model`` (only used when exporting).
    Returns:
        the export folder.
    """
    folder = export_folder(model, weights_dir_or_output, image_size)
    if os.path.isdir(folder):
        reason = stale_reason(folder, model, image_size)
        if not reason:
            logger.info("Using the ONNX export in %s", folder)
            return folder
        logger.warning("ONNX export in %s is stale (%s): rebuilding it", folder, reason)
    # exported to a temporary sibling folder renamed into place: an interrupted export is never
    # found under the key
    with atomic_folder(folder) as tmp:
        export_model(model, tmp, image_size, check=check, providers=providers)
    return folder
