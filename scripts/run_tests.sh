#!/usr/bin/env bash
# The whole test suite. Extra arguments go to pytest (e.g. -k kernels, -x).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec .venv/bin/python -m pytest -q "$@"
