# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""dev/install_detectron2.sh keeps an importable detectron2; the patched wheel's stub explains
itself."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_existing_detectron2_is_kept():
    import detectron2

    before = os.path.getmtime(detectron2.__file__)
    res = subprocess.run(["bash", os.path.join(ROOT, "dev", "install_detectron2.sh")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHON=sys.executable))
    assert res.returncode == 0, res.stderr
    assert "already importable" in res.stdout
    assert os.path.getmtime(detectron2.__file__) == before


def test_cpp_ops_raise_a_clear_error():
    from detectron2 import _C

    if not _C.__file__.endswith(".py"):
        pytest.skip("a compiled detectron2 is installed; the stub is not in use")
    assert "pure-Python" in _C.get_compiler_version()
    with pytest.raises(NotImplementedError, match="deform_conv_forward is a C"):
        _C.deform_conv_forward
