"""Turn an unpacked ``sal-detectron2`` wheel into a pure-Python detectron2 wheel.

Called by ``dev/install_detectron2.sh`` with the unpacked wheel folder. Each change is the smallest
one that lets the upstream Python tree import on Python 3.11 with numpy 2 and no CUDA:

1. delete the CUDA extension ``detectron2/_C*.so`` and put a stub ``detectron2/_C.py`` in its place
   whose attributes raise a clear error (DiffewS uses none of detectron2's C++ ops);
2. delete the wheel's top-level ``tools/`` package, which would shadow this project's ``tools/``;
3. replace the ``pkg_resources`` lookup in ``model_zoo/model_zoo.py`` (setuptools dropped it);
4. tag the wheel ``py3-none-any`` and drop the ``numpy<2``, ``omegaconf<2.4``, ``hydra-core`` and
   ``black`` requirements, which the pure-Python tree does not need.
"""

import glob
import os
import re
import shutil
import sys

STUB = '''"""Stub for detectron2's CUDA extension, removed by DiffewS's
dev/install_detectron2.sh."""

DIFFEWS_STUB_VERSION = 2


def get_compiler_version():
    return "none (pure-Python detectron2 build)"


def get_cuda_version():
    return "none (pure-Python detectron2 build)"


def has_cuda():
    return False


def __getattr__(name):
    raise NotImplementedError(
        f"detectron2._C.{name} is a C++/CUDA op, which this pure-Python detectron2 build does not "
        "have. DiffewS needs none of them; for other models install detectron2 from source."
    )
'''

DROPPED_REQUIREMENTS = ("numpy", "omegaconf", "hydra-core", "black")


def main(root: str) -> None:
    pkg = os.path.join(root, "detectron2")
    if not os.path.isdir(pkg):
        sys.exit(
            f"error: {root} holds no detectron2/ package; is it an unpacked sal-detectron2 wheel?"
        )
    for so in glob.glob(os.path.join(pkg, "_C*.so")):
        os.remove(so)
    with open(os.path.join(pkg, "_C.py"), "w") as f:
        f.write(STUB)
    shutil.rmtree(os.path.join(root, "tools"), ignore_errors=True)

    zoo = os.path.join(pkg, "model_zoo", "model_zoo.py")
    with open(zoo) as f:
        src = f.read()
    src = src.replace("import pkg_resources\n", "import importlib.resources\n")
    src = src.replace(
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
        'os.path.join("configs", config_path)\n    )',
        'str(importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
    )
    if "pkg_resources" in src:
        sys.exit(f"error: could not patch the pkg_resources call in {zoo}")
    with open(zoo, "w") as f:
        f.write(src)

    (info,) = glob.glob(os.path.join(root, "*.dist-info"))
    wheel_file = os.path.join(info, "WHEEL")
    with open(wheel_file) as f:
        text = f.read()
    text = re.sub(r"^Tag: .*$", "Tag: py3-none-any", text, flags=re.M)
    text = text.replace("Root-Is-Purelib: false", "Root-Is-Purelib: true")
    with open(wheel_file, "w") as f:
        f.write(text)
    meta = os.path.join(info, "METADATA")
    with open(meta) as f:
        lines = f.readlines()
    keep = [
        line
        for line in lines
        if not (
            line.startswith("Requires-Dist:")
            and re.split(r"[<>=;\s]", line.split(":", 1)[1].strip())[0] in DROPPED_REQUIREMENTS
        )
    ]
    with open(meta, "w") as f:
        f.writelines(keep)
    top = os.path.join(info, "top_level.txt")
    if os.path.exists(top):
        with open(top, "w") as f:
            f.write("detectron2\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: patch_detectron2_wheel.py UNPACKED_WHEEL_DIR")
    main(sys.argv[1])
