"""Scheduled runs: a catalog table in (--input-table, --where), the outputs by run date in folders
(--output/run_date=DATE) and catalog tables (--output-table), reruns replacing their date only,
a failed write leaving every partition complete or absent, and --init-previous."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from jobs import train as train_job
from mf_spark.core.errors import ConfigError, InputError, UsageError
from mf_spark.run import cli, tables

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def db(spark, tmp_path_factory):
    """A database of the built-in catalog, its warehouse under a temporary folder, with a ratings
    table of two days."""
    where = tmp_path_factory.mktemp("warehouse")
    name = f"mf_tables_{os.getpid()}"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {name} LOCATION '{where.as_uri()}'")
    g = np.random.default_rng(4)
    n = 3000
    rows = [
        (f"u{int(u)}", int(i), float(r), "2026-12-04" if k % 2 else "2026-12-05")
        for k, (u, i, r) in enumerate(zip(g.integers(0, 120, n), g.integers(0, 80, n), g.integers(1, 6, n)))
    ]
    spark.createDataFrame(rows, "userId string, movieId long, rating double, day string").write.saveAsTable(
        f"{name}.ratings"
    )
    yield name
    spark.sql(f"DROP DATABASE {name} CASCADE")


def _args(*argv: str) -> cli.TrainArgs:
    return cli.parse_train(list(argv) + ["--set", "model.iterations=3", "--set", "model.rank=4"])


def test_run_date_and_tables_arguments_are_checked():
    with pytest.raises(UsageError, match="--run-date '2026-13-01': expected a date as YYYY-MM-DD"):
        _args("--input", "x.csv", "--output", "o", "--run-date", "2026-13-01")
    with pytest.raises(UsageError, match="either --input-table or files"):
        _args("--input", "x.csv", "--input-table", "db.t", "--output", "o")
    with pytest.raises(UsageError, match="--where filters --input-table's rows"):
        _args("--input", "x.csv", "--where", "day > '2026'", "--output", "o")
    with pytest.raises(UsageError, match="--init-previous needs --run-date"):
        _args("--input", "x.csv", "--output", "o", "--init-previous")
    got = _args("--input", "x.csv", "--output", "out/", "--run-date", "2026-12-05")
    assert got.output == "out/run_date=2026-12-05" and got.output_root == "out/" and got.run_date == "2026-12-05"


def test_a_missing_table_or_a_bad_filter_exits_2_naming_it(spark, db, tmp_path):
    with pytest.raises(InputError, match=f"--input-table table {db}.nope: "):
        train_job.run(spark, _args("--input-table", f"{db}.nope", "--output", str(tmp_path / "a")))
    with pytest.raises(InputError, match="where no_such_column > 1: "):
        train_job.run(
            spark, _args("--input-table", f"{db}.ratings", "--where", "no_such_column > 1", "--output", str(tmp_path))
        )


def test_two_dates_a_rerun_and_a_failed_write_keep_every_partition_whole(spark, db, tmp_path, monkeypatch):
    out, prefix = tmp_path / "out", f"{db}.mf"

    def run(date: str, where: str, **env) -> dict:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            return train_job.run(
                spark,
                _args(
                    "--input-table",
                    f"{db}.ratings",
                    "--where",
                    where,
                    "--output",
                    str(out),
                    "--run-date",
                    date,
                    "--output-table",
                    prefix,
                ),
            )
        finally:
            for k in env:
                monkeypatch.delenv(k)

    first = run("2026-12-04", "day = '2026-12-04'")
    assert first["run_date"] == "2026-12-04" and first["output"].endswith(str(out / "run_date=2026-12-04"))
    assert first["output_tables"] == tables.names(prefix)
    second = run("2026-12-05", "day <= '2026-12-05'")
    assert second["n_read"] > first["n_read"]
    recs = spark.table(f"{prefix}_recommendations")
    by_date = {r["run_date"].isoformat(): r["count"] for r in recs.groupBy("run_date").count().collect()}
    folder_rows = {d: pq.read_table(out / f"run_date={d}" / "recommendations").num_rows for d in by_date}
    assert by_date == folder_rows and set(by_date) == {"2026-12-04", "2026-12-05"}

    # A rerun of the first date replaces that date only.
    rerun = run("2026-12-04", "day = '2026-12-04' and rating >= 2")
    by_date_2 = {r["run_date"].isoformat(): r["count"] for r in recs.groupBy("run_date").count().collect()}
    assert by_date_2["2026-12-05"] == by_date["2026-12-05"]
    assert by_date_2["2026-12-04"] == pq.read_table(out / "run_date=2026-12-04" / "recommendations").num_rows
    metrics = spark.table(f"{prefix}_metrics").where("run_date = '2026-12-04'").collect()
    assert len(metrics) == 1 and json.loads(metrics[0]["metrics_json"])["n_read"] == rerun["n_read"]

    # The second date again, killed after its first table: that table has the new partition whole,
    # the others keep the previous run's, and no table has a partial one.
    before = {t: spark.table(t).where("run_date = '2026-12-05'").count() for t in tables.names(prefix)}
    with pytest.raises(Exception, match="injected failure at stage 'tables'"):
        run("2026-12-05", "day <= '2026-12-05' and rating >= 3", MF_SPARK_FAIL_AT="tables")
    spark.catalog.refreshTable(f"{prefix}_recommendations")
    new = pq.read_table(out / "run_date=2026-12-05" / "recommendations").num_rows
    after = {t: spark.table(t).where("run_date = '2026-12-05'").count() for t in tables.names(prefix)}
    assert after[f"{prefix}_recommendations"] == new
    assert {t: after[t] for t in before if not t.endswith("recommendations")} == {
        t: before[t] for t in before if not t.endswith("recommendations")
    }
    # Readable by Spark SQL and by pandas (the table's files, as a downstream job reads them).
    assert spark.sql(f"SELECT count(*) FROM {prefix}_recommendations WHERE run_date = '2026-12-04'").first()[0] > 0
    location = spark.sql(f"DESCRIBE TABLE EXTENDED {prefix}_recommendations").where("col_name = 'Location'").first()
    frame = pq.read_table(location["data_type"].replace("file:", "")).to_pandas()
    assert {"user", "rank", "item", "score", "run_date"} <= set(frame.columns) and len(frame) == sum(
        after[f"{prefix}_recommendations"] if d == "2026-12-05" else by_date_2[d] for d in by_date_2
    )
    # The folders: a Spark reader gets the date as a column.
    dated = spark.read.option("basePath", str(out)).parquet(str(out / "run_date=*" / "recommendations"))
    assert {r[0].isoformat() for r in dated.select("run_date").distinct().collect()} == set(by_date)


def test_a_failing_write_leaves_the_partition_as_it_was(spark, db):
    """A task failing in the middle of a partition's write: the partition keeps its previous rows."""
    table = f"{db}.half"
    good = spark.range(100).select(F.col("id").alias("x"))
    tables.replace_partition(good, table, "2026-12-01", "parquet")
    tables.replace_partition(good, table, "2026-12-02", "parquet")
    boom = F.udf(lambda x: x if x < 150 else 1 // 0, "long")
    with pytest.raises(Exception, match="ZeroDivisionError"):
        tables.replace_partition(spark.range(300).select(boom("id").alias("x")), table, "2026-12-01", "parquet")
    counts = {r[0].isoformat(): r[1] for r in spark.table(table).groupBy("run_date").count().collect()}
    assert counts == {"2026-12-01": 100, "2026-12-02": 100}
    with pytest.raises(ConfigError, match="partitioned by"):
        tables.replace_partition(spark.range(3).select(F.col("id").alias("y")), table, "2026-12-03", "parquet")


def test_init_previous_warm_starts_from_the_latest_earlier_date(spark, db, tmp_path, caplog):
    out = tmp_path / "daily"
    base = ["--input-table", f"{db}.ratings", "--output", str(out)]
    with caplog.at_level("INFO", logger="mf_spark"):
        train_job.run(spark, _args(*base, "--run-date", "2026-12-03", "--init-previous"))
        assert any("no earlier run date with a model" in r.getMessage() for r in caplog.records)
        train_job.run(spark, _args(*base, "--run-date", "2026-12-05"))
        caplog.clear()
        got = train_job.run(spark, _args(*base, "--run-date", "2026-12-04", "--init-previous"))
    assert any(f"warm start from {out}/run_date=2026-12-03" in r.getMessage() for r in caplog.records)
    assert got["output"].endswith(str(out / "run_date=2026-12-04"))


def test_the_command_line_reads_a_table_and_writes_dated_tables(spark, db, tmp_path):
    """The train job's main() (its argv, as spark-submit gives it) on the built-in catalog's table."""
    argv = ["--input-table", f"{db}.ratings", "--where", "rating >= 2", "--output", str(tmp_path / "o")]
    argv += ["--run-date", "2026-12-05", "--output-table", f"{db}.cli", "--set", "model.iterations=2"]
    assert train_job.main(argv) == 0
    assert (tmp_path / "o" / "run_date=2026-12-05" / "_SUCCESS").exists()
    assert {t.name for t in spark.catalog.listTables(db)} >= {n.split(".")[1] for n in tables.names(f"{db}.cli")}
    assert train_job.main([*argv[:4], "--where", "no such column", *argv[6:]]) == 2
