#!/usr/bin/env bash
# The whole test suite; --fast leaves out the slow tests (subprocess jobs, the cluster, fault injection,
# benchmark scripts, join fits). Other arguments go to pytest (e.g. -k kernels, -x).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest -q -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
