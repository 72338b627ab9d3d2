"""mf_spark on a Spark Connect session: the estimator (PySpark's own ALS examples, save and load, Pipeline
and CrossValidator) and the jobs, through the DataFrame API only. tests/test_connect.py holds what they
write to a classic session's results."""

from __future__ import annotations

import json
import math

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import functions as F

from mf_spark import load_model
from mf_spark.core import session
from mf_spark.ml import ALS, ALSModel

# The fit tests/test_connect.py repeats on a classic session.
FIT = dict(rank=3, maxIter=5, regParam=0.05, seed=3, userCol="userId", itemCol="movieId")


@pytest.fixture(scope="module")
def ratings(spark, shared):
    return spark.read.parquet(str(shared / "ratings.parquet"))


def test_the_session_is_connect(spark):
    assert session.is_connect(spark)


def test_fit_save_load(spark, shared, ratings):
    """What PySpark's own examples (below) leave out: the save the classic side compares, a save that
    refuses an existing folder, and the params a load brings back. The fit runs in this client (few
    ratings); with driverMaxRatings = 0 it runs a Spark job per half-step instead, to the same factors."""
    model = ALS(**FIT).fit(ratings)
    by_jobs = ALS(**FIT, driverMaxRatings=0).fit(ratings)
    for ours, theirs in ((model.userFactors, by_jobs.userFactors), (model.itemFactors, by_jobs.itemFactors)):
        a, b = (sorted((r.id, r.features) for r in f.collect()) for f in (ours, theirs))
        assert [i for i, _ in a] == [i for i, _ in b]
        assert max(abs(x - y) for (_, fa), (_, fb) in zip(a, b) for x, y in zip(fa, fb)) < 1e-4
    folder = str(shared / "connect_model")
    model.write().overwrite().save(folder)  # the classic side compares these factors
    with pytest.raises(FileExistsError):
        model.write().save(folder)
    loaded = ALSModel.load(folder)
    assert loaded.getUserCol() == "userId" and loaded.rank == 3
    predicted = loaded.transform(ratings)
    assert predicted.where(F.isnan("prediction")).count() == 0


def test_pipeline_and_cross_validator(ratings):
    als = ALS(**{**FIT, "maxIter": 1}, coldStartStrategy="drop")
    fitted = Pipeline(stages=[als]).fit(ratings)
    assert fitted.transform(ratings).count() == ratings.count()
    grid = ParamGridBuilder().addGrid(als.regParam, [0.01]).build()  # one setting: each fold's fit and score
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating")
    cv = CrossValidator(estimator=als, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=1).fit(ratings)
    assert len(cv.avgMetrics) == 1 and all(math.isfinite(m) for m in cv.avgMetrics)
    assert isinstance(cv.bestModel, ALSModel)


def test_train_and_recommend_jobs_under_spark_remote(shared, monkeypatch):
    """The jobs as a user runs them with SPARK_REMOTE set (here on the server this process runs)."""
    from jobs import recommend, train

    monkeypatch.setenv("SPARK_REMOTE", "local[2]")
    out = shared / "connect_job"
    args = ["--train", str(shared / "train.csv"), "--test", str(shared / "test.csv"), "--output", str(out)]
    assert train.main([*args, "--set", "model.rank=3", "--set", "model.iterations=2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["exchange"] == "driver"
    assert (out / "model.json").is_file()
    recs = shared / "connect_recs"
    assert recommend.main(["--model", str(out), "--output", str(recs), "--n", "3"]) == 0
    assert any((recs / "recommendations").glob("*.parquet"))


def test_a_table_in_dated_tables_out_and_item_features_on_connect(spark, shared, ratings, monkeypatch):
    """--input-table, --run-date, --output-table and --item-features through the DataFrame API: the
    catalog calls, the partition overwrite and the feature table all work on a Connect session."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import recommend, train

    monkeypatch.setenv("SPARK_REMOTE", "local[2]")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS connect_db LOCATION '{(shared / 'warehouse').as_uri()}'")
    ratings.write.mode("overwrite").saveAsTable("connect_db.ratings")
    movies = sorted({r.movieId for r in ratings.select("movieId").distinct().collect()})
    features = shared / "movies.parquet"
    pq.write_table(pa.table({"movieId": movies + [10**6], "genre": [f"g{m % 3}" for m in movies] + ["g1"]}), features)
    out = shared / "connect_dated"
    argv = ["--input-table", "connect_db.ratings", "--output", str(out), "--run-date", "2026-12-05"]
    argv += ["--output-table", "connect_db.als", "--item-features", str(features)]
    assert train.main([*argv, "--set", "model.rank=3", "--set", "model.iterations=2"]) == 0
    table = spark.table("connect_db.als_recommendations").where("run_date = '2026-12-05'")
    assert table.count() == pq.read_table(out / "run_date=2026-12-05" / "recommendations").num_rows > 0
    recs = shared / "connect_new_items"
    model = str(out / "run_date=2026-12-05")
    assert recommend.main(["--model", model, "--output", str(recs), "--item-features", str(features), "--n", "3"]) == 0
    assert load_model(model).features["items"].fit_rows == len(movies)
    assert any((recs / "recommendations").glob("*.parquet"))


def test_pysparks_own_als_examples_and_test_cases_pass_on_connect(spark, tmp_path):
    """PySpark's own ALS examples, printed numbers included, and its ALS test suite's cases (which Spark
    runs on Connect too), on this Connect session."""
    from pyspark_examples import run_als_examples, run_als_suite_cases

    failed, attempted = run_als_examples(spark, str(tmp_path / "examples"))
    assert attempted > 30 and failed == 0
    run_als_suite_cases(spark, str(tmp_path / "cases"))
