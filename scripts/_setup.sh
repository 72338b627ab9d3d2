# Sourced by run_demo.sh and run_tests.sh: checks Java, creates .venv if missing, installs the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v java >/dev/null 2>&1; then
    echo "mf_spark: Java was not found. Spark needs Java 17 or 21." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
    echo "  macOS:         brew install openjdk@17" >&2
    echo "  or set JAVA_HOME to an existing JDK and put \$JAVA_HOME/bin on PATH." >&2
    exit 2
fi
JAVA_MAJOR="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
if [ -n "$JAVA_MAJOR" ] && [ "$JAVA_MAJOR" -lt 17 ]; then
    echo "mf_spark: Java $JAVA_MAJOR found; Spark 4 needs Java 17 or newer (see above to install)." >&2
    exit 2
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "mf_spark: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "mf_spark: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.mf_spark-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "mf_spark: installing the project and its dependencies into .venv" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]"
    touch "$STAMP"
fi
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$ROOT/.venv/bin/python"
