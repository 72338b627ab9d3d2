"""mf_spark on Spark Connect (tests/connect/, in a process of its own: one process holds one kind of
session) gives the factors a classic session gives for the same input and seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import planted

from mf_spark.ml import ALS
from mf_spark.model.factors import load_model
from mf_spark.run import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _by_id(ids, factors) -> dict:
    return {i: np.asarray(f, np.float64) for i, f in zip(ids, factors)}


def _close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_connect_session_gives_the_classic_factors(spark, tmp_path):
    u, i, r, _ = planted(n_users=40, n_items=30, rank=3, density=0.35)
    table = pa.table({"userId": u.astype(np.int32), "movieId": i.astype(np.int32), "rating": r.astype(np.float64)})
    pq.write_table(table, tmp_path / "ratings.parquet")
    held = np.random.default_rng(0).random(len(u)) < 0.2
    named = table.rename_columns(["user", "item", "rating"])
    pacsv.write_csv(named.filter(pa.array(~held)), tmp_path / "train.csv")
    pacsv.write_csv(named.filter(pa.array(held)), tmp_path / "test.csv")

    env = {**os.environ, "MF_SPARK_CONNECT_DIR": str(tmp_path), "MF_SPARK_CONNECT_TESTS": "1"}
    env.pop("SPARK_REMOTE", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "tests/connect"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]

    from tests.connect.test_on_connect import FIT

    classic = ALS(**FIT).fit(spark.read.parquet(str(tmp_path / "ratings.parquet")))
    connect = load_model(str(tmp_path / "connect_model"), spark)
    users = _by_id(connect.users.ids.to_pylist(), connect.factors.X)
    items = _by_id(connect.items.ids.to_pylist(), connect.factors.Y)
    assert _close(users, {r.id: r.features for r in classic.userFactors.collect()}) < 1e-4
    assert _close(items, {r.id: r.features for r in classic.itemFactors.collect()}) < 1e-4

    from jobs import train

    out = tmp_path / "classic_job"
    argv = ["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--output", str(out)]
    train.run(spark, cli.parse_train([*argv, "--set", "model.rank=3", "--set", "model.iterations=2"]))
    a, b = load_model(str(out), spark), load_model(str(tmp_path / "connect_job"), spark)
    assert a.users.ids.equals(b.users.ids) and a.items.ids.equals(b.items.ids)
    assert float(np.max(np.abs(a.factors.X - b.factors.X))) < 1e-4
    assert float(np.max(np.abs(a.factors.Y - b.factors.Y))) < 1e-4
