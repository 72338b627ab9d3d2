#!/usr/bin/env bash
# The whole test suite; --fast leaves out the slow tests (subprocess jobs, the cluster, fault injection,
# benchmark scripts, join fits). Other arguments go to pytest (e.g. -k kernels, -x). Test files run in
# MF_SPARK_TEST_WORKERS processes (default 2; 0 runs them in this one), each with its own SparkSession.
# Files go to the processes in collection order (tests/conftest.py puts the files with slow tests first).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
WORKERS="${MF_SPARK_TEST_WORKERS:-2}"
PARALLEL=()
if [ "$WORKERS" != "0" ]; then
    PARALLEL=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi
# The linter and the formatter's check first: a few seconds, and a style slip fails before the suite.
.venv/bin/python -m ruff check --quiet .
.venv/bin/python -m ruff format --check --quiet .
# The classes every JVM of the suite loads, archived once per .venv and built meanwhile when missing
# (tests/class_archive.py; its build's output goes to .venv/spark-classes.log).
MF_SPARK_TEST_CLASS_ARCHIVE="$(.venv/bin/python tests/class_archive.py)"
export MF_SPARK_TEST_CLASS_ARCHIVE
if [ ! -f "$MF_SPARK_TEST_CLASS_ARCHIVE" ]; then
    .venv/bin/python tests/class_archive.py --build "$MF_SPARK_TEST_CLASS_ARCHIVE" >.venv/spark-classes.log 2>&1 &
fi
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest -q "${PARALLEL[@]}" -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -q "${PARALLEL[@]}" "$@"
