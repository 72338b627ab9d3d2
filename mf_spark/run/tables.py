"""A run's outputs as catalog tables partitioned by its date (--output-table PREFIX, --run-date):

    PREFIX_recommendations   user, rank, item, score, run_date
    PREFIX_user_factors      id, [bias,] factors, run_date
    PREFIX_item_factors      id, [bias,] factors, run_date
    PREFIX_metrics           run_date, rmse, mae, precision_at_k, recall_at_k, ndcg_at_k, map_at_k, k,
                             n_train, n_test, metrics_json (metrics.json as it was published)

Each is read back from the published output folder, so a table holds what the folder holds. A table
that does not exist is created (format [output] table_format, partitioned by run_date); one that
exists gets its run date's partition replaced by a dynamic partition overwrite: Spark writes the
new rows to a staging folder and swaps the partition in at the job's commit, so a failed or killed
write leaves the partition as it was (or, killed inside the swap itself, absent), never half
written, and other dates are untouched. Delta and Iceberg tables replace a partition the same way
when their jars are on the classpath (table_format "delta" / "iceberg").
"""

from __future__ import annotations

import json
import logging
import posixpath

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mf_spark.core.errors import ConfigError, fault_point

log = logging.getLogger("mf_spark")

RUN_DATE = "run_date"
PARTS = {  # table suffix -> the output folder's Parquet it holds
    "recommendations": "recommendations",
    "user_factors": "factors/users",
    "item_factors": "factors/items",
}
METRIC_COLUMNS = ("rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "k", "n_train", "n_test")


def names(prefix: str) -> list[str]:
    return [f"{prefix}_{suffix}" for suffix in (*PARTS, "metrics")]


def metrics_frame(spark: SparkSession, metrics: dict) -> DataFrame:
    row = {c: metrics.get(c) for c in METRIC_COLUMNS}
    schema = (
        "rmse double, mae double, precision_at_k double, recall_at_k double, ndcg_at_k double, map_at_k double, "
        "k int, n_train long, n_test long, metrics_json string"
    )
    return spark.createDataFrame([(*row.values(), json.dumps(metrics, default=str))], schema)


def replace_partition(df: DataFrame, table: str, run_date: str, fmt: str) -> None:
    """`df`'s rows as `table`'s partition run_date = `run_date` (created when missing), replacing
    that partition only. ConfigError for an existing table not partitioned by run_date, or whose
    columns differ from `df`'s."""
    spark = df.sparkSession
    dated = df.withColumn(RUN_DATE, F.lit(run_date).cast("date"))
    if not spark.catalog.tableExists(table):
        log.info("creating table %s (%s, partitioned by %s)", table, fmt, RUN_DATE)
        dated.write.format(fmt).partitionBy(RUN_DATE).saveAsTable(table)
        return
    existing = spark.table(table).columns
    parts = [c.name for c in spark.catalog.listColumns(table) if c.isPartition]
    if parts != [RUN_DATE] or sorted(existing) != sorted(dated.columns):
        raise ConfigError(
            f"table {table} exists with columns {existing} partitioned by {parts or 'nothing'}; "
            f"expected {dated.columns} partitioned by [{RUN_DATE!r}] (drop it, or choose another --output-table)"
        )
    # insertInto matches columns by position (the table's order, its partition column last) and
    # takes the overwrite mode from the session's conf only (not from a writer option).
    key = "spark.sql.sources.partitionOverwriteMode"
    was = spark.conf.get(key, None)
    spark.conf.set(key, "dynamic")
    try:
        dated.select(*existing).write.insertInto(table, overwrite=True)
    finally:
        if was is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, was)


def write(spark: SparkSession, prefix: str, output: str, run_date: str, metrics: dict, fmt: str) -> list[str]:
    """Every table of the published output folder `output` as its `run_date` partition; returns their
    names. The tables are written one after the other: each is complete for the date or as it was."""
    written = []
    for suffix, folder in PARTS.items():
        table = f"{prefix}_{suffix}"
        replace_partition(spark.read.parquet(posixpath.join(output, folder)), table, run_date, fmt)
        written.append(table)
        fault_point("tables")
    table = f"{prefix}_metrics"
    replace_partition(metrics_frame(spark, metrics), table, run_date, fmt)
    written.append(table)
    log.info("tables %s: partition %s = %s written", ", ".join(written), RUN_DATE, run_date)
    return written
