"""mf_spark.ml: a drop-in for pyspark.ml.recommendation.ALS (params, fit, transform, top-N, persistence,
pipelines and tuning). Data is tiny and iterations few: this file's fits are its cost."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from chispa.schema_comparer import assert_schema_equality
from conftest import frame, planted
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.feature import StringIndexer
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions as F

from mf_spark.als import checkpoint
from mf_spark.core.errors import ConfigError, InputError, ModelError
from mf_spark.data.read import sample_path
from mf_spark.ml import ALS, ALSModel


def tiny(spark, ddl="userId int, movieId int, rating double", n_users=24, n_items=16, density=0.45, map_ids=None):
    """A planted rank-3 matrix, ~170 ratings, IDs mapped by `map_ids` (user, item) -> (user id, item id)."""
    u, i, r, _ = planted(n_users=n_users, n_items=n_items, rank=3, density=density)
    map_ids = map_ids or (lambda a, b: (int(a), int(b)))
    return frame(spark, [(*map_ids(a, b), float(x)) for a, b, x in zip(u, i, r)], ddl)


def factors_of(df, id_col="id", col="features"):
    """{id: factor vector} of a factor DataFrame (chispa skips array<float>: compare in numpy)."""
    return {row[id_col]: np.asarray(row[col], np.float64) for row in df.collect()}


def rec_lists(df, key, other):
    """{key: [(other, rating), ...]} of MLlib-shaped recommendations."""
    return {row[key]: [(e[other], e["rating"]) for e in row["recommendations"]] for row in df.collect()}


@pytest.fixture(scope="module")
def planted_fit(spark):
    """(ratings with int IDs, an explicit model with biases fitted on them), shared by several tests."""
    df = tiny(spark).cache()
    return df, ALS(rank=3, maxIter=3, regParam=0.05, biases=True, userCol="userId", itemCol="movieId").fit(df)


@pytest.fixture(scope="module")
def implicit_fit(spark):
    """(counts with long IDs past the int range, an implicit model that keeps its training pairs)."""
    big = 2**40
    df = tiny(spark, "user long, item long, rating double", map_ids=lambda a, b: (big + int(a), big * 2 + int(b)))
    df = df.withColumn("rating", F.abs("rating") + 1.0).cache()  # implicit counts are > 0
    return df, ALS(rank=3, maxIter=2, implicitPrefs=True, alpha=2.0, excludeSeen=True).fit(df)


# ---- the MLlib guide example, unchanged but for the import ----------------------------------------


@pytest.fixture(scope="module")
def guide(spark):
    """https://spark.apache.org/docs/latest/ml-collaborative-filtering.html (python), as written."""
    from pyspark.sql import Row

    lines = spark.read.text(sample_path()).rdd
    parts = lines.map(lambda row: row.value.split("::"))
    ratingsRDD = parts.map(lambda p: Row(userId=int(p[0]), movieId=int(p[1]), rating=float(p[2]), timestamp=int(p[3])))
    ratings = spark.createDataFrame(ratingsRDD)
    (training, test) = ratings.randomSplit([0.8, 0.2])

    als = ALS(
        maxIter=5, regParam=0.01, userCol="userId", itemCol="movieId", ratingCol="rating", coldStartStrategy="drop"
    )
    model = als.fit(training)

    predictions = model.transform(test)
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction")
    rmse = evaluator.evaluate(predictions)

    userRecs = model.recommendForAllUsers(10)
    movieRecs = model.recommendForAllItems(10)
    users = ratings.select(als.getUserCol()).distinct().limit(3)
    userSubsetRecs = model.recommendForUserSubset(users, 10)
    movies = ratings.select(als.getItemCol()).distinct().limit(3)
    movieSubSetRecs = model.recommendForItemSubset(movies, 10)
    return dict(
        ratings=ratings,
        training=training,
        test=test,
        als=als,
        model=model,
        rmse=rmse,
        userRecs=userRecs,
        movieRecs=movieRecs,
        users=users,
        userSubsetRecs=userSubsetRecs,
        movies=movies,
        movieSubSetRecs=movieSubSetRecs,
    )


def test_guide_example_runs_and_gives_mllib_shaped_results(guide):
    # MLlib's model, which is ours (test_the_same_input_and_seed_give_mllibs_model), scored 1.82-2.56 on
    # 12 such random splits: regParam 0.01 leaves rank 10 to fit the noise of 1,501 ratings
    assert 0.5 < guide["rmse"] < 3.5
    user_recs = rec_lists(guide["userRecs"], "userId", "movieId")
    n_users = guide["training"].select("userId").distinct().count()
    n_items = guide["training"].select("movieId").distinct().count()
    assert len(user_recs) == n_users
    assert all(len(v) == 10 for v in user_recs.values())
    assert all([s for _, s in v] == sorted((s for _, s in v), reverse=True) for v in user_recs.values())
    movie_recs = rec_lists(guide["movieRecs"], "movieId", "userId")
    assert len(movie_recs) == n_items and all(len(v) == 10 for v in movie_recs.values())
    assert len(guide["userSubsetRecs"].collect()) == 3 and len(guide["movieSubSetRecs"].collect()) == 3
    assert guide["userRecs"].columns == ["userId", "recommendations"]


def _factors(frame) -> dict:
    return {r.id: np.array(r.features) for r in frame.collect()}


@pytest.mark.parametrize(("implicit", "seed", "blocks"), [(True, 5, 3)])  # explicit: the examples below
def test_the_same_input_and_seed_give_mllibs_model(spark, implicit, seed, blocks):
    """model.init = auto starts from MLlib's initial factors, so MLlib's settings give its factors
    (float rounding apart): negative IDs, blocks other than MLlib's default, implicit values < 0
    (dislikes, which MLlib leaves out of a row's lambda count). PySpark's own examples (the next test)
    print an explicit model's numbers."""
    from pyspark.ml.recommendation import ALS as MLlibALS

    rng = np.random.default_rng(seed)
    low = -3 if implicit else 1  # no 0: it tells nothing, so ours drops it where MLlib keeps its row
    values = [v for v in range(low, 6) if v]
    rows = {(int(u), int(i)): float(rng.choice(values)) for u, i in rng.integers((-40, 0), (160, 90), (2500, 2))}
    frame = spark.createDataFrame([(u, i, r) for (u, i), r in rows.items()], "user int, item int, rating double")
    kw = dict(rank=6, maxIter=6, regParam=0.1, seed=seed, numUserBlocks=blocks, numItemBlocks=blocks)
    theirs, ours = MLlibALS(implicitPrefs=implicit, **kw).fit(frame), ALS(implicitPrefs=implicit, **kw).fit(frame)
    for side in ("userFactors", "itemFactors"):
        a, b = _factors(getattr(theirs, side)), _factors(getattr(ours, side))
        assert a.keys() == b.keys()
        assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) < 1e-4, side


def test_pysparks_own_als_doctest_passes_with_ours(spark, tmp_path):
    """The examples of pyspark.ml.recommendation.ALS's docstring, their printed numbers included, run
    against mf_spark.ml's ALS and ALSModel (tests/connect runs them on Spark Connect)."""
    from pyspark_examples import run_als_examples

    failed, attempted = run_als_examples(spark, str(tmp_path))
    assert attempted > 30 and failed == 0


def test_pysparks_own_als_test_cases_pass_with_ours(spark, tmp_path):
    from pyspark_examples import run_als_suite_cases

    run_als_suite_cases(spark, str(tmp_path))


def test_init_index_and_ids_mllib_cannot_draw_from(spark):
    ratings = [("a", 1, 4.0), ("b", 1, 2.0), ("b", 2, 3.0), ("c", 2, 5.0)]
    strings = spark.createDataFrame(ratings, "user string, item int, rating double")
    ALS(rank=2, maxIter=1).fit(strings)  # auto: (seed, index) for string IDs
    with pytest.raises(InputError, match="model.init = 'mllib'.*user IDs are string"):
        ALS(rank=2, maxIter=1, init="mllib").fit(strings)
    wide = spark.createDataFrame([(2**40, 1, 4.0), (1, 2, 3.0)], "user long, item int, rating double")
    with pytest.raises(InputError, match="int's range"):
        ALS(rank=2, maxIter=1, init="mllib").fit(wide)
    ints = spark.createDataFrame(
        [(i, j, 1.0 + (i * j) % 5) for i in range(8) for j in range(5)], "user int, item int, rating double"
    )
    index, mllib = (_factors(ALS(rank=3, maxIter=1, init=v).fit(ints).userFactors) for v in ("index", "mllib"))
    assert max(float(np.max(np.abs(index[k] - mllib[k]))) for k in index) > 0.1


def test_recommendations_score_as_transform_predicts(guide):
    """A pair scores the same in the top lists and in transform, as in MLlib (neither clips: the guide's
    low regParam scores some pairs above the 5-star top)."""
    model = guide["model"]
    top = guide["userRecs"].select("userId", F.inline("recommendations"))
    pred = model.transform(top.withColumnRenamed("rating", "top_rating")).collect()
    assert len(pred) == top.count() and all(abs(r["top_rating"] - r["prediction"]) < 1e-5 for r in pred)
    assert max(r["prediction"] for r in pred) > 5.0


def test_subset_recommendations_equal_the_all_users_lists(guide):
    every = rec_lists(guide["userRecs"], "userId", "movieId")
    subset = rec_lists(guide["userSubsetRecs"], "userId", "movieId")  # 3 users (which: limit's choice)
    assert len(subset) == 3
    for user, recs in subset.items():
        assert [m for m, _ in recs] == [m for m, _ in every[user]]


def test_recommend_schemas_equal_mllibs(planted_fit):
    """Same column names and types as pyspark.ml.recommendation.ALS (values differ: not compared)."""
    from pyspark.ml.recommendation import ALS as MLlibALS

    df, ours = planted_fit
    theirs = MLlibALS(rank=3, maxIter=1, userCol="userId", itemCol="movieId", seed=1).fit(df)
    for make in (
        lambda m: m.recommendForAllUsers(3),
        lambda m: m.recommendForAllItems(3),
        lambda m: m.recommendForUserSubset(df.limit(2), 3),
        lambda m: m.recommendForItemSubset(df.limit(2), 3),
        lambda m: m.userFactors.select("id", "features"),
        lambda m: m.itemFactors.select("id", "features"),
    ):
        assert_schema_equality(make(ours).schema, make(theirs).schema, ignore_nullable=True)
    assert ours.userFactors.columns == ["id", "features", "bias"]  # ours carries the biases
    assert_schema_equality(ours.transform(df).schema, theirs.transform(df).schema)
    for make in (
        lambda m: m.userFactors.select("id", "features"),
        lambda m: m.transform(df),
        lambda m: m.recommendForAllUsers(3),
        lambda m: m.recommendForItemSubset(df.limit(2), 3),
    ):
        assert_schema_equality(make(ours).schema, make(theirs).schema)  # nullability too
    assert ours.rank == theirs.rank == 3


@pytest.mark.parametrize(
    "ddl, ids",
    [
        ("userId long, movieId long, rating double", lambda a, b: (int(a), int(b))),
        ("userId double, movieId float, rating double", lambda a, b: (float(a), float(b))),
    ],
)
def test_numeric_ids_come_out_as_int_as_in_mllib(spark, ddl, ids):
    """MLlib casts numeric IDs to int (a StringIndexer's doubles, longs in int's range) everywhere."""
    from pyspark.ml.recommendation import ALS as MLlibALS

    df = tiny(spark, ddl, map_ids=ids)
    ours = ALS(rank=2, maxIter=1, userCol="userId", itemCol="movieId").fit(df)
    theirs = MLlibALS(rank=2, maxIter=1, userCol="userId", itemCol="movieId", seed=1).fit(df)
    for make in (
        lambda m: m.userFactors.select("id", "features"),
        lambda m: m.transform(df),
        lambda m: m.recommendForAllUsers(2),
        lambda m: m.recommendForAllItems(2),
    ):
        assert_schema_equality(make(ours).schema, make(theirs).schema, ignore_nullable=True)
    assert sorted(r.id for r in ours.userFactors.collect()) == sorted(r.id for r in theirs.userFactors.collect())


def test_transform_refuses_an_id_beyond_int_as_mllib_does(spark, planted_fit):
    df, model = planted_fit
    far = df.limit(1).select(F.lit(2**40).alias("userId"), "movieId")
    with pytest.raises(Exception, match="is not a whole number in int's range"):
        model.transform(far).collect()


def test_mllib_spellings_of_params(spark):
    als = ALS(coldStartStrategy="DROP", seed=None, rank=None)
    assert als.getColdStartStrategy() == "drop"
    assert als.getSeed() == 0 and als.getRank() == 10  # None leaves the default, as in MLlib


def test_implicit_zeros_and_negatives_as_mllib_reads_them(spark):
    """A 0 tells nothing (dropped, counted): the fit with zeros on unrated pairs equals the fit without
    them. A negative value is a negative preference: those pairs score lower than as positives."""
    u, i, r, _ = planted(n_users=24, n_items=16, rank=3, density=0.45)
    rows = [(int(a), int(b), float(abs(c)) + 1.0) for a, b, c in zip(u, i, r)]
    rated = {(a, b) for a, b, _ in rows}
    zeros = [(a, b, 0.0) for a in range(24) for b in range(16) if (a, b) not in rated][:40]
    ddl = "user int, item int, rating double"
    fit = lambda rs: ALS(rank=3, maxIter=3, implicitPrefs=True, alpha=2.0).fit(frame(spark, rs, ddl))  # noqa: E731
    plain = fit(rows)
    assert len(zeros) == 40
    np.testing.assert_allclose(fit(rows + zeros).factorModel.factors.X, plain.factorModel.factors.X, atol=1e-6)
    flipped = {n for n in range(0, len(rows), 5)}
    negative = fit([(a, b, -c if n in flipped else c) for n, (a, b, c) in enumerate(rows)])
    pairs = frame(spark, [rows[n][:2] for n in sorted(flipped)], "user int, item int")
    mean = lambda m: m.transform(pairs).agg(F.avg("prediction")).first()[0]  # noqa: E731
    assert mean(negative) < mean(plain) - 0.1


# ---- params --------------------------------------------------------------------------------------

MLLIB_DEFAULTS = {
    "rank": 10,
    "maxIter": 10,
    "regParam": 0.1,
    "alpha": 1.0,
    "implicitPrefs": False,
    "nonnegative": False,
    "coldStartStrategy": "nan",
    "userCol": "user",
    "itemCol": "item",
    "ratingCol": "rating",
    "predictionCol": "prediction",
    "checkpointInterval": 10,
    "blockSize": 4096,
    "numUserBlocks": 10,
    "numItemBlocks": 10,
    "intermediateStorageLevel": "MEMORY_AND_DISK",
    "finalStorageLevel": "MEMORY_AND_DISK",
}


def test_mllib_param_names_and_defaults_hold(spark):
    from pyspark.ml.recommendation import ALS as MLlibALS

    ours, theirs = ALS(), MLlibALS()
    assert {p.name for p in theirs.params} <= {p.name for p in ours.params}
    for name, value in MLLIB_DEFAULTS.items():
        assert ours.getOrDefault(name) == theirs.getOrDefault(name) == value, name
    assert ours.getSeed() == 0  # ours: reproducible (MLlib's is a salted hash of the class name)


def test_our_params_come_from_the_config_with_its_defaults():
    als = ALS()
    for name, value in {
        "biases": False,
        "unobservedWeight": 1.0,
        "confidence": "linear",
        "epsilon": 1.0,
        "regScaling": "count",
        "solver": "auto",
        "excludeSeen": False,
        "target": "preference",
        "cgSteps": 3,
        "strategy": "auto",
        "exchange": "auto",
        "maxBadFraction": 0.01,
    }.items():
        assert als.getOrDefault(name) == value, name
    assert "config key model.unobserved_weight" in als.explainParam("unobservedWeight")
    assert "Hu-Koren-Volinsky" in als.explainParam("unobservedWeight")  # the field's comment
    assert "one of 'auto', 'exact', 'cg'" in als.explainParam(als.solver)


def test_params_by_kwargs_setters_getters_copy_and_grid():
    als = ALS(maxIter=5, rank=4, userCol="u", biases=True, unobservedWeight=0.5)
    assert (als.getMaxIter(), als.getRank(), als.getUserCol(), als.getBiases(), als.getUnobservedWeight()) == (
        5,
        4,
        "u",
        True,
        0.5,
    )
    assert als.setRegParam(0.2) is als and als.getRegParam() == 0.2
    assert als.setNumBlocks(3).getNumUserBlocks() == als.getNumItemBlocks() == 3
    other = als.copy({als.rank: 7})
    assert other.getRank() == 7 and als.getRank() == 4 and other.getMaxIter() == 5 and other.uid == als.uid
    grid = ParamGridBuilder().addGrid(als.rank, [2, 3]).addGrid(als.regParam, [0.1, 1.0]).build()
    assert len(grid) == 4 and {m[als.rank] for m in grid} == {2, 3}
    cfg = als.copy(grid[0]).run_config().model
    assert (cfg.rank, cfg.reg, cfg.iterations, cfg.kind, cfg.unobserved_weight) == (2, 0.1, 5, "explicit", 0.5)
    assert ALS(implicitPrefs=True, checkpointInterval=-1).run_config().model.kind == "implicit"
    assert "maxIter: maximum number of iterations" in als.explainParams()


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"rank": 0}, ["param rank", "model.rank"]),
        ({"maxIter": 0}, ["param maxIter", "model.iterations"]),
        ({"regParam": -1.0}, ["param regParam", "model.reg"]),
        ({"alpha": float("nan")}, ["param alpha", "finite"]),
        ({"solver": "newton"}, ["param solver", "model.solver", "'cg'"]),
        ({"coldStartStrategy": "zero"}, ["coldStartStrategy", "'nan', 'drop', 'mean'"]),
        ({"maxBadFraction": 2.0}, ["param maxBadFraction", "data.max_bad_fraction"]),
    ],
)
def test_bad_param_values_raise_the_config_error_naming_the_param(kwargs, names):
    with pytest.raises(ConfigError) as err:
        ALS(**kwargs)
    assert all(n in str(err.value) for n in names), str(err.value)
    ((name, value),) = kwargs.items()
    with pytest.raises(ConfigError):  # the setter checks too
        getattr(ALS(), "set" + name[0].upper() + name[1:])(value)


def test_unknown_param_and_wrong_type_raise():
    with pytest.raises(TypeError, match="unknown param.*ranks"):
        ALS(ranks=3)
    with pytest.raises(TypeError, match="rank"):
        ALS(rank="three")


# ---- fit: input checks, ID types, kinds -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, missing", [({"userCol": "uid"}, "uid"), ({"itemCol": "iid"}, "iid"), ({"ratingCol": "stars"}, "stars")]
)
def test_fit_names_a_missing_column(spark, kwargs, missing):
    df = frame(spark, [(1, 2, 3.0)], "user int, item int, rating double")
    with pytest.raises(InputError, match=f"'{missing}'.*missing.*columns are"):
        ALS(**kwargs).fit(df)


def test_fit_rejects_a_frame_of_mostly_bad_rows_like_the_jobs(spark):
    df = frame(spark, [(1, 2, 3.0), (1, 3, None), (2, 2, float("nan"))], "user int, item int, rating double")
    with pytest.raises(InputError, match="ALS.fit.*2 of 3 rows rejected.*missing rating"):
        ALS(maxIter=1).fit(df)


def test_transform_and_subset_name_a_missing_column(guide):
    model, test = guide["model"], guide["test"]
    with pytest.raises(InputError, match="'userId'.*userCol"):
        model.transform(test.withColumnRenamed("userId", "uid"))
    with pytest.raises(InputError, match="'movieId'.*itemCol"):
        model.recommendForItemSubset(test.select("userId"), 2)
    with pytest.raises(ValueError, match=">= 1"):
        model.recommendForAllUsers(0)


def test_the_driver_validates_small_frames_only(spark):
    """frontEnd 'auto' (a local master here): the driver for a frame Spark sizes within frontEndMaxMb,
    or, where Spark cannot size it (a Python RDD's), one whose rows fit; Spark otherwise."""
    from mf_spark.core.config import DataConfig
    from mf_spark.data.prepare import _driver_table
    from mf_spark.data.prepare import raw_frame as raw_ratings

    df = tiny(spark)
    n = len(planted(n_users=24, n_items=16, rank=3, density=0.45)[0])
    known = raw_ratings(df, "userId", "movieId", "rating")
    unknown = raw_ratings(spark.createDataFrame(df.rdd, df.schema), "userId", "movieId", "rating")
    assert _driver_table(known, DataConfig()).num_rows == n
    assert _driver_table(unknown, DataConfig()).num_rows == n
    tight = DataConfig(front_end_max_mb=0.001)  # 1 kB: fewer rows than the frame has
    assert _driver_table(known, tight) is None and _driver_table(unknown, tight) is None
    assert _driver_table(known, DataConfig(front_end="spark")) is None
    assert _driver_table(unknown, DataConfig(front_end="driver", front_end_max_mb=0.001)).num_rows == n


def test_string_ids_with_biases(spark):
    df = tiny(spark, "user string, item string, rating double", map_ids=lambda a, b: (f"u{a:02d}", f"i{b}"))
    model = ALS(rank=3, maxIter=3, biases=True, regParam=0.05).fit(df)
    users = model.userFactors
    assert users.columns == ["id", "features", "bias"]
    assert users.schema["id"].dataType.simpleString() == "string"
    assert sorted(factors_of(users)) == sorted({r["user"] for r in df.select("user").distinct().collect()})
    recs = rec_lists(model.recommendForAllUsers(3), "user", "item")
    assert all(isinstance(i, str) and i.startswith("i") for v in recs.values() for i, _ in v)
    assert RegressionEvaluator(labelCol="rating").evaluate(model.transform(df)) < 0.5  # planted rank 3, low noise


def test_long_ids_implicit_excluding_seen(implicit_fit):
    df, model = implicit_fit
    assert model.factorModel.kind == "implicit"
    assert model.itemFactors.schema["id"].dataType.simpleString() == "bigint"
    seen = {(r["user"], r["item"]) for r in df.collect()}
    recs = rec_lists(model.recommendForAllUsers(4), "user", "item")
    assert recs and all(u >= 2**40 and (u, i) not in seen for u, v in recs.items() for i, _ in v)
    audiences = rec_lists(model.recommendForAllItems(3), "item", "user")
    assert audiences and all((u, i) not in seen for i, v in audiences.items() for u, _ in v)
    pred = [r["prediction"] for r in model.transform(df).collect()]
    assert all(math.isfinite(p) for p in pred) and np.mean(pred) > 0.5  # observed pairs: preference ~1


def test_implicit_without_a_rating_column(spark):
    """ratingCol "" (as MLlib): every row is one unit of preference."""
    df = tiny(spark, n_users=12, n_items=10, density=0.3).select("userId", "movieId")
    model = ALS(rank=2, maxIter=2, implicitPrefs=True, ratingCol="", userCol="userId", itemCol="movieId").fit(df)
    assert model.factorModel.kind == "implicit" and model.factorModel.users.size == 12
    observed = [r["prediction"] for r in model.transform(df).collect()]
    assert np.mean(observed) > 0.3  # the preference of an observed pair is 1


def test_cold_start_strategies(spark, guide):
    model = guide["model"].copy()
    known = [(r["userId"], r["movieId"]) for r in guide["training"].limit(3).collect()]
    u, i = known[0]
    df = frame(spark, known + [(9999, i), (u, 9999)], "userId long, movieId long")

    def predicted(strategy):
        out = model.setColdStartStrategy(strategy).transform(df).collect()
        return {(r["userId"], r["movieId"]): r["prediction"] for r in out}

    nan, dropped, mean = predicted("nan"), predicted("drop"), predicted("mean")
    assert len(nan) == 5 and math.isnan(nan[(9999, i)]) and math.isnan(nan[(u, 9999)])
    assert set(dropped) == set(known)
    assert mean[(9999, i)] == pytest.approx(model.factorModel.global_mean)  # no biases: the mean
    assert all(nan[k] == dropped[k] == pytest.approx(mean[k]) for k in known)
    with pytest.raises(ConfigError, match="coldStartStrategy"):
        model.setColdStartStrategy("zero")


# ---- equal to the train job ----------------------------------------------------------------------


def test_fit_equals_the_train_jobs_factors(spark, planted_fit, tmp_path):
    from jobs import train as train_job
    from mf_spark.run import cli

    df, model = planted_fit  # rank 3, 3 iterations, reg 0.05, biases; MLlib's 10 blocks, the job's auto
    table = df.toArrow()
    pq.write_table(table, tmp_path / "train.parquet")
    pq.write_table(table.slice(0, 10), tmp_path / "test.parquet")
    out = tmp_path / "out"
    args = cli.parse_train(
        [
            "--train",
            str(tmp_path / "train.parquet"),
            "--test",
            str(tmp_path / "test.parquet"),
            "--output",
            str(out),
            "--set",
            "model.rank=3",
            "--set",
            "model.iterations=3",
            "--set",
            "model.reg=0.05",
            "--set",
            "model.biases=true",
            "--set",
            "eval.every_iteration=false",
        ]
    )
    train_job.run(spark, args)
    by_spark = ALS(
        rank=3, maxIter=3, regParam=0.05, biases=True, userCol="userId", itemCol="movieId", frontEnd="spark"
    ).fit(df)  # planted_fit's frame is small: the driver validated it
    for side, ours in (
        ("users", model.userFactors),
        ("items", model.itemFactors),
        ("users", by_spark.userFactors),
        ("items", by_spark.itemFactors),
    ):
        want = {
            r["id"]: (np.asarray(r["factors"]), r["bias"]) for r in pq.read_table(out / "factors" / side).to_pylist()
        }
        got = {r["id"]: (np.asarray(r["features"]), r["bias"]) for r in ours.collect()}
        assert set(got) == set(want)
        for key, (vec, bias) in want.items():
            np.testing.assert_allclose(got[key][0], vec, atol=1e-5)
            assert got[key][1] == pytest.approx(bias, abs=1e-5)


def test_checkpoints_go_under_the_checkpoint_dir_only_and_are_removed(spark, tmp_path, monkeypatch):
    from mf_spark.core.config import ModelConfig
    from mf_spark.ml import _checkpoint_store

    assert _checkpoint_store(spark, ModelConfig(checkpoint_interval=1)) is None  # no dir: ignored, as in MLlib
    saved = []
    real_save = checkpoint.CheckpointStore.save

    def spy(self, iteration, factors, state):
        saved.append((self.root, iteration))
        real_save(self, iteration, factors, state)

    monkeypatch.setattr(checkpoint.CheckpointStore, "save", spy)
    monkeypatch.setattr(type(spark.sparkContext), "getCheckpointDir", lambda sc: str(tmp_path / "ckpt"))
    assert _checkpoint_store(spark, ModelConfig(checkpoint_interval=0)) is None
    ALS(rank=2, maxIter=3, checkpointInterval=1).fit(tiny(spark, "user int, item int, rating double", 10, 8, 0.6))
    assert [it for _, it in saved] == [1, 2] and all(root.startswith(f"file:{tmp_path}/ckpt/") for root, _ in saved)
    assert not any((tmp_path / "ckpt").iterdir())  # removed after the fit


# ---- persistence ---------------------------------------------------------------------------------


def test_model_save_load_round_trip(guide, tmp_path):
    model = guide["model"].copy().setColdStartStrategy("nan")
    path = str(tmp_path / "model")
    model.save(path)
    loaded = ALSModel.load(path)
    assert loaded.uid == model.uid and loaded.getUserCol() == "userId" and loaded.getColdStartStrategy() == "nan"
    assert loaded.rank == model.rank
    test = guide["test"]
    assert_df_equality(loaded.transform(test), model.transform(test), ignore_row_order=True, allow_nan_equality=True)
    for side in ("users", "items"):
        assert getattr(loaded.factorModel, side).ids.equals(getattr(model.factorModel, side).ids)
    np.testing.assert_array_equal(loaded.factorModel.factors.Y, model.factorModel.factors.Y)
    assert loaded.userFactors.schema == model.userFactors.schema
    with pytest.raises(FileExistsError, match="overwrite"):
        model.save(path)
    model.setPredictionCol("p").write().overwrite().save(path)
    assert ALSModel.load(path).getPredictionCol() == "p"
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*pickle*"))
    with pytest.raises(ModelError, match="not a saved ALSModel"):
        ALSModel.load(str(tmp_path / "nothing"))


def test_excluded_pairs_are_saved_and_a_saved_model_is_a_factor_model_folder(implicit_fit, tmp_path):
    from mf_spark import load_model

    df, model = implicit_fit
    path = str(tmp_path / "m")
    model.save(path)
    assert (tmp_path / "m" / "seen").is_dir() and (tmp_path / "m" / "model.json").is_file()
    loaded = ALSModel.load(path)
    assert loaded.getExcludeSeen() and loaded.itemFactors.schema["id"].dataType.simpleString() == "bigint"
    seen = {(r["user"], r["item"]) for r in df.collect()}
    recs = rec_lists(loaded.recommendForAllUsers(3), "user", "item")
    assert len(recs) == len({u for u, _ in seen}) and all((u, i) not in seen for u, v in recs.items() for i, _ in v)
    assert load_model(path).rank == 3  # jobs/recommend.py --model reads it too
    loaded.setColdStartStrategy("mean").write().overwrite().save(path)  # over its own folder
    assert ALSModel.load(path)._seen.count() == len(seen)
    everything = model.copy().setExcludeSeen(False).recommendForAllUsers(16)
    assert everything.count() == df.select("user").distinct().count()
    with pytest.raises(ConfigError, match="kept no training pairs"):
        ALSModel.fromFactorModel(model.factorModel, excludeSeen=True).recommendForAllUsers(2)


def test_estimator_save_load_keeps_params(tmp_path):
    als = ALS(rank=3, maxIter=2, implicitPrefs=True, unobservedWeight=0.3, userCol="u")
    path = str(tmp_path / "als")
    als.save(path)
    loaded = ALS.load(path)
    assert loaded.uid == als.uid and loaded.extractParamMap() == {
        loaded.getParam(p.name): v for p, v in als.extractParamMap().items()
    }
    with pytest.raises(FileExistsError):
        als.save(path)
    als.setRank(4).write().overwrite().save(path)
    assert ALS.load(path).getRank() == 4


# ---- extras: candidates, fold-in -----------------------------------------------------------------


def test_include_and_exclude_candidates(spark, guide):
    model = guide["model"]
    allowed = [1, 2, 3, 4, 5]
    recs = rec_lists(model.recommendForAllUsers(3, include=allowed), "userId", "movieId")
    assert recs and all(m in allowed for v in recs.values() for m, _ in v)
    banned = frame(spark, [(m,) for m in range(50)], "movieId long")
    recs = rec_lists(model.recommendForUserSubset(guide["users"], 3, exclude=banned), "userId", "movieId")
    assert recs and all(m >= 50 for v in recs.values() for m, _ in v)
    audiences = rec_lists(model.recommendForAllItems(2, include=[0, 1]), "movieId", "userId")
    assert all(u in (0, 1) for v in audiences.values() for u, _ in v)


def test_fold_in_users_and_items(guide):
    """Folding in trained users' own rows gives (close to) their factors: the fit's last half-step."""
    model, training = guide["model"], guide["training"]
    some = training.where(F.col("userId") < 3)
    folded = model.foldInUsers(some)
    assert isinstance(folded, ALSModel) and folded.getUserCol() == "userId"
    got, want = factors_of(folded.userFactors), factors_of(model.userFactors)
    assert set(got) == {r["userId"] for r in some.select("userId").distinct().collect()}
    for user, vec in got.items():
        np.testing.assert_allclose(vec, want[user], atol=1e-3)
    new_item = some.withColumn("movieId", F.col("movieId") + 1000)
    items = model.foldInItems(new_item)
    assert {r["id"] for r in items.itemFactors.collect()} == {r["movieId"] for r in new_item.collect()}


# ---- pipelines and tuning ------------------------------------------------------------------------


def test_pipeline_with_a_string_indexer_and_its_persistence(spark, tmp_path):
    df = tiny(spark, "name string, movieId int, rating double", map_ids=lambda a, b: (f"user-{a}", int(b)))
    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="name", outputCol="userId"),
            ALS(rank=3, maxIter=3, regParam=0.05, userCol="userId", itemCol="movieId"),
        ]
    )
    fitted = pipeline.fit(df)
    pred = fitted.transform(df)
    assert pred.schema["prediction"].dataType.simpleString() == "float"
    assert RegressionEvaluator(labelCol="rating").evaluate(pred) < 1.0
    assert fitted.stages[-1].userFactors.schema["id"].dataType.simpleString() == "int"  # as MLlib
    path = str(tmp_path / "pipeline")
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path).stages[-1]
    assert isinstance(loaded, ALSModel) and loaded.getUserCol() == "userId"
    np.testing.assert_array_equal(loaded.factorModel.factors.X, fitted.stages[-1].factorModel.factors.X)


def test_cross_validator_and_train_validation_split(planted_fit):
    df, _ = planted_fit
    als = ALS(rank=3, maxIter=2, userCol="userId", itemCol="movieId", coldStartStrategy="drop")
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating")
    grid = ParamGridBuilder().addGrid(als.rank, [1, 3]).addGrid(als.regParam, [0.05]).build()
    cv = CrossValidator(estimator=als, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=3).fit(df)
    assert len(cv.avgMetrics) == 2 and all(math.isfinite(m) for m in cv.avgMetrics)
    assert isinstance(cv.bestModel, ALSModel) and cv.bestModel.rank in (1, 3)
    grid = ParamGridBuilder().addGrid(als.regParam, [0.05, 5.0]).build()
    tvs = TrainValidationSplit(
        estimator=als, estimatorParamMaps=grid, evaluator=evaluator, trainRatio=0.75, seed=3
    ).fit(df)
    assert tvs.validationMetrics[0] < tvs.validationMetrics[1]  # heavy regularization underfits
    assert isinstance(tvs.bestModel, ALSModel) and tvs.bestModel.getColdStartStrategy() == "drop"  # params copied


def test_item_features_place_new_items_through_the_estimator(spark, tmp_path):
    """itemFeaturesPath: fit learns the map (saved and loaded with the model); placeItems adds the
    new items of a features DataFrame, which then have factors and take part in recommendations."""
    g = np.random.default_rng(6)
    genres = ["a", "b", "c"]
    item_genre = {i: genres[i % 3] for i in range(30)}
    fans = {x: set(g.choice(25, size=10, replace=False).tolist()) for x in genres}
    rows = [(u, i, 1.0) for i in range(30) for u in range(25) if u in fans[item_genre[i]] and g.random() < 0.7]
    features = tmp_path / "items.csv"
    features.write_text("item,genre\n" + "".join(f"{i},{item_genre[i]}\n" for i in range(30)))
    df = spark.createDataFrame(rows, "user int, item int, rating double")
    als = ALS(rank=4, maxIter=5, implicitPrefs=True, itemFeaturesPath=str(features), seed=1)
    assert als.getFeatureReg() == 0.0 and als.getUserFeaturesPath() == ""
    model = als.fit(df)
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = ALSModel.load(str(tmp_path / "m"))
    new = spark.createDataFrame([(100, "a"), (101, "c")], "item int, genre string")
    placed = loaded.placeItems(new)
    assert placed.itemFactors.count() == 32 and placed.userFactors.count() == model.userFactors.count()
    vectors = {r["id"]: np.array(r["features"]) for r in placed.itemFactors.collect()}
    mean_a = np.mean([vectors[i] for i in range(30) if item_genre[i] == "a"], axis=0)
    cosine = vectors[100] @ mean_a / np.linalg.norm(vectors[100]) / np.linalg.norm(mean_a)
    assert cosine > 0.95  # one-hot genres: a new item sits at (a shrunk) mean of its genre's items
    lists = placed.recommendForAllUsers(40).collect()
    assert {x["item"] for r in lists for x in r["recommendations"]} >= {100, 101}
    with pytest.raises(InputError, match="has no user features"):
        loaded.placeUsers(spark.createDataFrame([(7, "x")], "user int, age string"))
    with pytest.raises(InputError, match="param itemFeaturesPath .*: does not exist"):
        ALS(rank=2, maxIter=1, itemFeaturesPath=str(tmp_path / "nope.csv")).fit(df)
