#!/usr/bin/env bash
# Create bench/out/aimlflow-venv: an isolated venv with aimlflow (PyPI `aim-mlflow==0.2.1`),
# the baseline that bench/aimlflow_backfill.py and bench/backfill.py time.
#
#   bench/aimlflow_env.sh            # install the exact pins in bench/aimlflow-requirements.txt
#   bench/aimlflow_env.sh --resolve  # let pip resolve aim-mlflow==0.2.1 afresh, re-freeze the pins
#   PYTHON=python3.11 bench/aimlflow_env.sh
#
# Idempotent: does nothing if the venv already matches the requirements file.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/out/aimlflow-venv
REQ=bench/aimlflow-requirements.txt
PYTHON=${PYTHON:-python3.11}
STAMP=$VENV/.requirements.sha256

if [[ "${1:-}" == "--resolve" ]]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q aim-mlflow==0.2.1
    head -n "$(grep -c '^#' "$REQ")" "$REQ" > "$REQ.new"   # keep the comment header
    "$VENV/bin/pip" freeze >> "$REQ.new"
    mv "$REQ.new" "$REQ"
    echo "re-resolved; now pinned:"; grep -iE '^(aim|aim-mlflow|mlflow|tqdm)==' "$REQ"
else
    want=$(sha256sum "$REQ" | cut -d' ' -f1)
    if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        echo "$VENV is up to date"
    else
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/pip" install -q --no-deps -r "$REQ"
        "$VENV/bin/pip" check
        echo "$want" > "$STAMP"
    fi
fi
sha256sum "$REQ" | cut -d' ' -f1 > "$STAMP"
"$VENV/bin/python" -c "import sys, aim.__version__ as a, mlflow, aimlflow.utils as u; \
print('python', sys.version.split()[0], '| aim', a.__version__, '| mlflow', mlflow.__version__, \
'| aimlflow', open(u.__file__.rsplit('/',1)[0] + '/VERSION').read().strip())"
