#!/usr/bin/env bash
# Train on the MovieLens sample bundled with pyspark; prints where the outputs are and the RMSE.
# Extra arguments go to jobs/train.py (e.g. --set model.rank=20).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec .venv/bin/python -m jobs.train --output "${MF_SPARK_DEMO_OUTPUT:-output}" "$@"
