"""The floor of a training job on a given master: everything a Spark job of ours costs there but the
model. It starts a session, reads and counts the train and test Parquet files, and writes outputs of
the train job's size (a factor table per side, rank floats a row, and top-k recommendations for
every user), as Parquet. scripts/benchmark_job.py --floor runs it beside our job and MLlib's: the
time a job spends above this floor is the time its model costs.

    spark-submit scripts/floor_job.py --train train.parquet --test test.parquet --output out/ [--rank 10] [--k 10]

Prints one JSON line: seconds per phase and the rows it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    a = p.parse_args(argv)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 4)
        return now

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("floor-job").getOrCreate()
    if not os.environ.get("SPARK_REMOTE"):  # a Spark Connect client (benchmark_job.py --remote) has no SparkContext
        spark.sparkContext.setLogLevel("WARN")
    t = lap("session", started)
    train, test = spark.read.parquet(a.train), spark.read.parquet(a.test)
    n_train, n_test = train.count(), test.count()
    sizes = train.agg(F.max("user").alias("u"), F.max("item").alias("i")).first()
    n_users, n_items = int(sizes["u"]) + 1, int(sizes["i"]) + 1
    t = lap("read_count", t)
    vector = F.array(*[F.rand(seed).cast("float") for seed in range(a.rank)])
    for side, n in (("users", n_users), ("items", n_items)):
        spark.range(n).select(F.col("id").cast("int"), vector.alias("factors")).write.mode("overwrite").parquet(
            f"{a.output}/factors/{side}"
        )
    recs = spark.range(n_users * a.k).select(
        (F.col("id") / a.k).cast("int").alias("user"),
        (F.col("id") % a.k + 1).cast("int").alias("rank"),
        (F.col("id") % n_items).cast("int").alias("item"),
        F.rand(7).cast("float").alias("score"),
    )
    recs.write.mode("overwrite").parquet(f"{a.output}/recommendations")
    lap("write", t)
    timings["total"] = round(time.perf_counter() - started, 4)
    rows = {
        "n_train": n_train,
        "n_test": n_test,
        "factor_rows": n_users + n_items,
        "recommendation_rows": n_users * a.k,
    }
    print(json.dumps({"timings": timings, **rows}))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
