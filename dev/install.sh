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

# tests/test_web_demo.py drives a real headless Chromium (Debian's chromium + chromium-driver)
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null; then
    echo "[install] chromium/chromedriver not found: apt-get install chromium chromium-driver"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    log=$(mktemp)
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y \
        -qq chromium chromium-driver; } >"$log" 2>&1; then
      tail -n 20 "$log"; echo "[install] apt-get install chromium chromium-driver failed" >&2
      exit 1
    fi
    rm -f "$log"
  else
    echo "[install] warning: no apt-get; install Chromium and chromedriver at /usr/bin for" \
      "tests/test_web_demo.py (the web demo itself does not need them)"
  fi
fi
echo "[install] done"
