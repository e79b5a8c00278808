# Sourced by the benchmarks/gpu_*.sh scripts: $OUT, the reference and data wheels from .whl/
# (pure Python, installed into /tmp/site; a lent GPU machine has no package index), the
# data-only stand-ins of .whl/stub (the MNI152 files), src/ and tests/ on the path, $PY.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
  [ -d .whl/stub ] && export PYTHONPATH=$PYTHONPATH:$PWD/.whl/stub
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
T=${T:-$PY -m tunesam}
