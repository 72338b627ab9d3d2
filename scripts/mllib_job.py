"""The training job a Spark user writes today with MLlib's ALS: the peer of jobs/train.py in
scripts/benchmark_job.py.

    spark-submit scripts/mllib_job.py --train train.parquet --test test.parquet --output out/ \
        [--kind explicit|implicit] [--rank 10] [--iterations 10] [--reg 0.1] [--alpha 1.0] [--k 10]

Read Parquet (columns user, item, rating: integer IDs, as MLlib needs), `ALS.fit`, `transform` of
the test rows with `RegressionEvaluator` (RMSE; explicit only), NDCG@k of `recommendForAllUsers(k)`
against each user's held-out items with `RankingEvaluator` (MLlib does not exclude the items a user
trained on), both factor tables written, the top-k exploded to (user, rank, item, score) and written
as Parquet. Prints one JSON line: seconds per phase (session start to the last write), RMSE, NDCG@k.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--kind", choices=("explicit", "implicit"), default="explicit")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 4)
        return now

    from pyspark.ml.evaluation import RankingEvaluator, RegressionEvaluator
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("mllib-als-job").getOrCreate()
    if not os.environ.get("SPARK_REMOTE"):  # a Spark Connect client (benchmark_job.py --remote) has no SparkContext
        spark.sparkContext.setLogLevel("WARN")
    t = lap("session", started)
    train = spark.read.parquet(a.train).select("user", "item", F.col("rating").cast("float"))
    test = spark.read.parquet(a.test).select("user", "item", F.col("rating").cast("float"))
    extra = {"implicitPrefs": True, "alpha": a.alpha} if a.kind == "implicit" else {}
    als = ALS(
        rank=a.rank,
        maxIter=a.iterations,
        regParam=a.reg,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
        seed=a.seed,
        **extra,
    )
    model = als.fit(train)
    t = lap("fit", t)
    rmse = None
    if a.kind == "explicit":
        rmse = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction").evaluate(
            model.transform(test)
        )
    recs = model.recommendForAllUsers(a.k).cache()
    relevant = test.groupBy("user").agg(F.collect_list(F.col("item").cast("double")).alias("label"))
    predicted = recs.select("user", F.col("recommendations.item").cast("array<double>").alias("prediction"))
    ndcg = RankingEvaluator(metricName="ndcgAtK", k=a.k, labelCol="label", predictionCol="prediction").evaluate(
        predicted.join(relevant, "user")
    )
    t = lap("evaluate", t)
    model.userFactors.write.mode("overwrite").parquet(f"{a.output}/factors/users")
    model.itemFactors.write.mode("overwrite").parquet(f"{a.output}/factors/items")
    exploded = recs.select("user", F.posexplode("recommendations").alias("pos", "rec")).select(
        "user", (F.col("pos") + 1).alias("rank"), F.col("rec.item").alias("item"), F.col("rec.rating").alias("score")
    )
    exploded.write.mode("overwrite").parquet(f"{a.output}/recommendations")
    lap("recommend_write", t)
    timings["total"] = round(time.perf_counter() - started, 4)
    print(json.dumps({"timings": timings, "rmse": rmse, "ndcg_at_k": ndcg, "k": a.k}))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
