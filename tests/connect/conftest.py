"""The tests of this folder run on a Spark Connect session (`remote("local[2]")`), in a process of their own
that tests/test_connect.py starts: a process holds either kind of session, not both. Their input and
what they write for the classic side to compare is in the folder MF_SPARK_CONNECT_DIR."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def shared() -> Path:
    return Path(os.environ["MF_SPARK_CONNECT_DIR"])


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.remote("local[2]")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield s
    s.stop()
