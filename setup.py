# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Installs the `diffews` package (`pip install -e .`).

Only the light dependencies are declared here, without pins, so that installing DiffewS never
replaces a researcher's own torch or detectron2 build. The pinned, tested set is requirements.txt,
and `dev/install.sh` installs whatever of it is missing (detectron2 included).
"""

from setuptools import find_packages, setup

setup(
    name="diffews",
    version="0.1.0",
    description="DiffewS: few-shot segmentation with a one-step Stable Diffusion UNet",
    license="BSD-2-Clause",
    python_requires=">=3.9",
    packages=find_packages(include=["diffews", "diffews.*"]),
    install_requires=[
        "torch>=2.0",
        "diffusers>=0.27",
        "transformers>=4.36",
        "safetensors",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "pycocotools",
        "timm",
        "tqdm",
    ],
)
