"""PySpark's own examples and tests of pyspark.ml.recommendation.ALS (its docstring's doctest, printed numbers
included, and the cases of its test suite), run against mf_spark.ml's ALS and ALSModel on any session, classic or
Spark Connect."""

from __future__ import annotations

import doctest


def run_als_examples(spark, folder: str) -> tuple[int, int]:
    """(failed, attempted) examples; the failures are printed, as doctest prints them."""
    import pyspark.ml.recommendation as mllib

    from mf_spark.ml import ALS, ALSModel

    names = {"spark": spark, "ALS": ALS, "ALSModel": ALSModel, "temp_path": folder}
    test = doctest.DocTestParser().get_doctest(mllib.ALS.__doc__, names, "pyspark.ml.recommendation.ALS", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return runner.summarize(verbose=False)[:2]


def run_als_suite_cases(spark, folder: str) -> None:
    """The cases of PySpark's own ALS test suite (python/pyspark/ml/tests/test_als.py, which Spark also
    runs on Connect), against mf_spark.ml's ALS and ALSModel: params, estimator and model save and load,
    the output columns and row counts of transform and the four recommend calls, and a loaded model
    scoring the cross join of its own factors with ambiguous self-joins allowed and refused."""
    from pyspark.sql import functions as F

    from mf_spark.ml import ALS, ALSModel

    data = spark.createDataFrame([[1, 15, 1], [1, 2, 2], [2, 3, 4], [2, 2, 5]], ["user", "item", "rating"])
    df = data.coalesce(1).sortWithinPartitions("user", "item")
    als = ALS(userCol="user", itemCol="item", rank=10, seed=1)
    als.setMaxIter(2)
    params = (als.getUserCol(), als.getItemCol(), als.getRank(), als.getSeed(), als.getMaxIter())
    assert params == ("user", "item", 10, 1, 2)
    als.write().overwrite().save(f"{folder}/estimator")
    assert str(ALS.load(f"{folder}/estimator")) == str(als)

    model = als.fit(df)
    assert model.rank == 10
    for factors, n in ((model.userFactors, 2), (model.itemFactors, 3)):
        assert factors.columns == ["id", "features"] and factors.count() == n
    scored = model.transform(df)
    assert scored.columns == ["user", "item", "rating", "prediction"] and scored.count() == 4
    for recs, key, n in (
        (model.recommendForAllUsers(3), "user", 2),
        (model.recommendForAllItems(3), "item", 3),
        (model.recommendForUserSubset(df, 3), "user", 2),
        (model.recommendForItemSubset(df, 3), "item", 3),
    ):
        assert recs.columns == [key, "recommendations"] and recs.count() == n
    model.write().overwrite().save(f"{folder}/model")
    assert str(ALSModel.load(f"{folder}/model")) == str(model)

    blocked = ALS(
        userCol="user", itemCol="item", ratingCol="rating", numUserBlocks=10, numItemBlocks=10, maxIter=1, seed=42
    )
    blocked.fit(data).write().overwrite().save(f"{folder}/blocked")
    loaded = ALSModel().load(f"{folder}/blocked")  # an instance's load, as the suite calls it
    key = "spark.sql.analyzer.failAmbiguousSelfJoin"
    before = spark.conf.get(key, None)
    try:
        for refuse in ("false", "true"):
            spark.conf.set(key, refuse)
            users = loaded.userFactors.select(F.col("id").alias("user"))
            items = loaded.itemFactors.select(F.col("id").alias("item"))
            assert loaded.transform(users.crossJoin(items)).count() > 0, f"{key}={refuse}"
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
