#!/usr/bin/env bash
# Build what spark-submit ships to executors: dist/mf_spark-<version>-py3-none-any.whl and
# dist/mf_spark.zip (the mf_spark package alone, for --py-files). Uses .venv if present.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p dist
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w dist . 2>/dev/null || "$PY" -m pip wheel --quiet --no-deps -w dist .
"$PY" - <<'PYEOF'
import pathlib, zipfile
root = pathlib.Path(".")
with zipfile.ZipFile("dist/mf_spark.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    for path in sorted(root.glob("mf_spark/**/*.py")):
        zf.write(path, path.as_posix())
print("dist/mf_spark.zip")
PYEOF
ls dist/*.whl
