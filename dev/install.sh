#!/usr/bin/env bash
# Install what DiffewS needs and is missing, then the package itself (editable).
# Idempotent: a second run installs nothing. Never replaces an importable torch or detectron2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[install] torch/torchvision not found: installing torch==2.14.1 torchvision==0.29.1"
  "$PY" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
"$PY" -m pip install --quiet -r requirements.txt
PYTHON="$PY" bash dev/install_detectron2.sh
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
echo "[install] done"
