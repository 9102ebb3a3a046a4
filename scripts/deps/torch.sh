#!/usr/bin/env bash
# PyTorch for `moatmeter bench device` (the [bench] extra). Installed before `pip install -e
# .[test,bench]` because a bare `torch` requirement would pull a multi-GB CUDA build; pinning the
# version here makes pip take the CPU wheel that this machine keeps on local disk. Idempotent.
set -euo pipefail
PY=${PY:-python3}
WANT=2.13.0
if "$PY" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$WANT' else 1)" \
    2>/dev/null; then
  echo "torch $WANT already installed"
  exit 0
fi
"$PY" -m pip install -q "torch==$WANT"
"$PY" -c "import torch; print('installed torch', torch.__version__)"
