# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo (``tools/web_demo.py``): a Gradio page over a ``Predictor``.

``WebDemoSession`` (no Gradio) reads the uploads within ``InputLimits``, caches encoded support
sets within a byte bound (``SupportCache``), reads server folders only under allowed roots
(``FolderPolicy``) and runs the predictor; ``build_demo`` lays the page out over it;
``launch_demo`` serves it. Gradio is imported only when the page is built.
"""

import os
from typing import List

from .access import FolderPolicy, exposure_warning, folder_roots, is_loopback
from .cache import SupportCache, default_cache_bytes
from .examples import DemoExample, write_synthetic_examples
from .inputs import DemoInputError, InputLimits
from .session import WebDemoSession

__all__ = ["DemoExample", "DemoInputError", "FolderPolicy", "InputLimits", "SupportCache",
           "WebDemoSession", "build_demo", "launch_demo", "default_cache_bytes",
           "exposure_warning", "folder_roots", "is_loopback", "write_synthetic_examples",
           "quickstart_overrides", "QUICKSTART_COMMAND", "QUICKSTART_DIR"]

QUICKSTART_COMMAND = "python tools/quickstart.py"
QUICKSTART_DIR = "output/quickstart"


def quickstart_overrides(folder: str = QUICKSTART_DIR) -> List[str]:
    """Config overrides that run the quick start's trained tiny model (``tools/quickstart.py``
    writes ``FOLDER/tiny_sd`` and ``FOLDER/train/model_final.pth``).

    Raises:
        FileNotFoundError: naming what is missing and the one command to run first.
    """
    command = QUICKSTART_COMMAND
    if os.path.normpath(folder) != os.path.normpath(QUICKSTART_DIR):
        command += f" --output {folder}"
    sd = os.path.join(folder, "tiny_sd")
    weights = os.path.join(folder, "train", "model_final.pth")
    for path, marker in ((sd, os.path.join(sd, "quickstart.json")), (weights, weights)):
        if not os.path.exists(marker):
            raise FileNotFoundError(
                f"{path}: not found; the web demo without --config-file runs the quick start's "
                f"model: run `{command}` first (it trains that model on the CPU), or give "
                "--config-file and MODEL.WEIGHTS")
    return ["MODEL.DIFFEWS.PRETRAINED", sd, "MODEL.WEIGHTS", weights]


def build_demo(*args, **kwargs):
    from .app import build_demo as _build

    return _build(*args, **kwargs)


def launch_demo(*args, **kwargs):
    from .app import launch_demo as _launch

    return _launch(*args, **kwargs)
