#!/usr/bin/env bash
# Install detectron2 when it is not importable yet.
#
# A researcher's own detectron2 (e.g. a CUDA build from the upstream git repository) is used as it is
# and never replaced. Otherwise, since upstream detectron2 is not on PyPI, we take the `sal-detectron2`
# wheel (a build of the full upstream Python tree), drop its CUDA extension (DiffewS needs none of
# detectron2's C++ ops), and repack it as a pure-Python wheel. See the README
# ("Installation notes").
set -euo pipefail
PY=${PYTHON:-python}

# importable, and not an older DiffewS stub build (those lack what detectron2's env report needs)
if "$PY" -c "
import detectron2, detectron2.engine, importlib.util
spec = importlib.util.find_spec('detectron2._C')
if spec.origin.endswith('.py'):
    from detectron2 import _C
    assert getattr(_C, 'DIFFEWS_STUB_VERSION', 0) >= 2
" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip install --quiet "wheel>=0.40"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  -d "$work/dl" sal-detectron2==0.7.2
"$PY" -m wheel unpack -d "$work/src" "$work"/dl/sal_detectron2-0.7.2-*.whl
root=$(ls -d "$work"/src/sal_detectron2-0.7.2)
"$PY" "$(dirname "$0")/patch_detectron2_wheel.py" "$root"
mkdir -p "$work/out"
"$PY" -m wheel pack -d "$work/out" "$root"
"$PY" -m pip install --quiet --no-deps --force-reinstall "$work"/out/*.whl
"$PY" -c "import detectron2.engine, detectron2.modeling; print('detectron2', detectron2.__version__, 'installed (pure Python, no C++ ops)')"
