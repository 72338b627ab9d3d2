"""One local SparkSession for the whole suite, a seeded rng, and tiny planted data."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pytest
from class_archive import java_tool_options

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Every JVM the tests start (this session's, the jobs', the cluster's) takes these options: see
# tests/class_archive.py. Products keep the JVM's defaults.
os.environ.setdefault("JAVA_TOOL_OPTIONS", java_tool_options())
# tests/connect/ runs on a Spark Connect session, in the process tests/test_connect.py starts for it.
collect_ignore = [] if os.environ.get("MF_SPARK_CONNECT_TESTS") else ["connect"]


# The files that take longest in a full run (`scripts/run_tests.sh --durations=0`), longest
# first: handed out first, they leave the short files to even out the processes' ends.
LONGEST = ("test_engine_contract.py", "test_connect.py", "test_ml.py", "test_scripts.py", "test_jobs.py")


def pytest_collection_modifyitems(session, config, items):
    """LONGEST first, then the other files with slow tests, then the rest, each in their order. The
    suite's files are shared out to the test processes in this order (--dist loadfile), and a long
    file taken last keeps one process busy while the other has nothing left. Every process collects
    the same order, as xdist requires."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        if item.path.name in LONGEST:
            return 0, LONGEST.index(item.path.name)
        return (1 if item.path in slow_files else 2), 0

    items.sort(key=rank)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.master("local[2]")
        .appName("mf_spark-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


ARROW = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32()}


def frame(spark, rows, ddl):
    """Rows -> DataFrame through Arrow: a local relation, so building it starts no Spark job."""
    schema = pa.schema([(name, ARROW[kind]) for name, kind in (f.split() for f in ddl.split(","))])
    table = pa.Table.from_pylist([dict(zip(schema.names, r)) for r in rows], schema)
    return spark.createDataFrame(table)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def planted(n_users=60, n_items=40, rank=5, density=0.5, noise=0.05, seed=7):
    """A rank-`rank` matrix observed at `density`, with Gaussian noise: (users, items, ratings, truth)."""
    g = np.random.default_rng(seed)
    X = g.normal(size=(n_users, rank)) / np.sqrt(rank)
    Y = g.normal(size=(n_items, rank))
    full = 3.0 + X @ Y.T
    mask = g.random((n_users, n_items)) < density
    mask[np.arange(n_users), g.integers(0, n_items, n_users)] = True  # every user rated something
    mask[g.integers(0, n_users, n_items), np.arange(n_items)] = True  # every item was rated
    u, i = np.nonzero(mask)
    r = full[u, i] + g.normal(scale=noise, size=u.size)
    return u.astype(np.int32), i.astype(np.int32), r.astype(np.float32), full
