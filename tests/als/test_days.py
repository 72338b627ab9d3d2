"""Day biases (mf_spark.als.days, types.DayBiases): the per-(user, day) offsets fitted after the factors,
how they score, save and load, and that the train and tune jobs use them where the data has days."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import planted

from jobs import train as train_job
from mf_spark import evaluate
from mf_spark.als import days
from mf_spark.als import loop as als
from mf_spark.core import config
from mf_spark.core.errors import ConfigError, ModelError
from mf_spark.core.types import NO_TIME, DayBiases, Factors
from mf_spark.data import prepare
from mf_spark.data.ready import Triples
from mf_spark.model.factors import Scorer, load_model
from mf_spark.run import tune

DAY = 86400


def _factors(n_users=4, n_items=3, seed=0) -> Factors:
    g = np.random.default_rng(seed)
    return Factors(
        g.normal(size=(n_users, 2)).astype(np.float32),
        g.normal(size=(n_items, 2)).astype(np.float32),
        g.normal(size=n_users).astype(np.float32),
        g.normal(size=n_items).astype(np.float32),
        3.0,
    )


# ---- the offsets and their lookup ------------------------------------------------------------------------
def test_lookup_finds_the_users_day_and_nothing_else():
    d = DayBiases(DAY, np.array([0, 0, 2], np.int32), np.array([5, 9, 5], np.int64), np.array([0.5, -1, 2], np.float32))
    u = np.array([0, 0, 0, 2, 2, 1, -1, 0])
    t = np.array([5 * DAY, 9 * DAY + 86399, 7 * DAY, 5 * DAY + 1, 9 * DAY, 5 * DAY, 5 * DAY, NO_TIME])
    assert d.lookup(u, t).tolist() == [0.5, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert d.positions(u, t).tolist() == [0, 1, -1, 2, -1, -1, -1, -1]
    other = d.with_bias(np.array([1.0, 2.0, 3.0]))  # the same pairs: the same positions
    assert other.offsets(d.positions(u, t)).tolist() == [1.0, 2.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    assert d.lookup(u, None).tolist() == [0.0] * 8
    assert (
        DayBiases(DAY, *(np.zeros(0, t) for t in (np.int32, np.int64, np.float32))).lookup(u, t).tolist() == [0.0] * 8
    )


def test_days_before_1970_floor_to_their_own_day():
    d = DayBiases(DAY, np.array([0], np.int32), np.array([-1], np.int64), np.array([1.5], np.float32))
    assert d.lookup(np.array([0, 0]), np.array([-1, 0])).tolist() == [1.5, 0.0]


def test_unsorted_or_repeated_pairs_are_refused():
    with pytest.raises(ValueError, match="unique and sorted"):
        DayBiases(DAY, np.array([1, 0], np.int32), np.array([0, 0], np.int64), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="unique and sorted"):
        DayBiases(DAY, np.array([0, 0], np.int32), np.array([3, 3], np.int64), np.zeros(2, np.float32))


# ---- fitting them ----------------------------------------------------------------------------------------
def _ratings(seed=1, n=300, n_users=4, n_items=3):
    g = np.random.default_rng(seed)
    u = g.integers(0, n_users, n).astype(np.int32)
    i = g.integers(0, n_items, n).astype(np.int32)
    r = g.uniform(1, 5, n)
    t = (g.integers(0, 4, n) * DAY + g.integers(0, DAY, n)).astype(np.int64)
    t[::7] = NO_TIME  # ratings without a timestamp take no part
    return u, i, r, t


def test_each_offset_is_the_ridge_solution_of_its_users_day():
    u, i, r, t = _ratings()
    f = _factors()
    got = days.DayFitter(Triples(None, u, i, r, t), DAY)(f, 2.5)
    res = r - (f.mu + f.user_bias[u] + f.item_bias[i] + np.einsum("ij,ij->i", f.X[u], f.Y[i]))
    want = {}
    for a in range(4):
        for d in range(4):
            mine = (u == a) & (t != NO_TIME) & (t // DAY == d)
            if mine.any():
                want[(a, d)] = res[mine].sum() / (mine.sum() + 2.5)
    assert list(zip(got.users.tolist(), got.days.tolist())) == sorted(want)
    np.testing.assert_allclose(got.bias, [want[k] for k in sorted(want)], rtol=1e-5, atol=1e-6)


def test_day_bias_reg_0_means_none_and_no_timestamps_means_no_offsets(caplog):
    u, i, r, t = _ratings()
    f = _factors()
    assert days.DayFitter(Triples(None, u, i, r, t), DAY)(f, 0.0) is None
    untimed = days.DayFitter(Triples(None, u, i, r), DAY)
    assert untimed(f, 1.0).size == 0 and untimed(f, 3.0).size == 0
    said = [rec.getMessage() for rec in caplog.records if "no training rating has a timestamp" in rec.getMessage()]
    assert len(said) == 1  # said once, not every iteration


def test_spark_fits_the_same_offsets_as_the_driver(spark):
    u, i, r, t = _ratings(seed=3)
    f = _factors(seed=3)
    want = days.DayFitter(Triples(None, u, i, r, t), 3600)(f, 1.0)
    df = spark.createDataFrame(
        pa.table(
            {
                "user_idx": pa.array(u, pa.int32()),
                "item_idx": pa.array(i, pa.int32()),
                "rating": r,
                "timestamp": pa.array(t, pa.int64(), mask=t == NO_TIME),
            }
        )
    )
    fitter = days.DayFitter(df.repartition(3), 3600)
    assert not fitter.spark_free
    got = fitter(f, 1.0)
    assert np.array_equal(got.users, want.users) and np.array_equal(got.days, want.days)
    np.testing.assert_allclose(got.bias, want.bias, rtol=1e-5, atol=1e-6)
    driver = days.DayFitter(Triples(None, u, i, r, t), 3600)
    np.testing.assert_allclose(
        fitter.with_factors(f, got, 0.5).factors, driver.with_factors(f, want, 0.5).factors, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(fitter.unbiased(f).days, want.days)
    no_time = days.DayFitter(df.drop("timestamp"), 3600)(f, 1.0)
    assert no_time.size == 0


def _ridge_by_day(u, i, r, t, f, bias_of, reg, day=DAY):
    """{(user, day): ridge solution of the day's residuals less its bias on the item factors}, for
    pairs of two or more ratings (the others none)."""
    res = r - (f.mu + f.user_bias[u] + f.item_bias[i] + np.einsum("ij,ij->i", f.X[u], f.Y[i]))
    want = {}
    for a in np.unique(u):
        for d in np.unique(t[t != NO_TIME] // day):
            mine = (u == a) & (t != NO_TIME) & (t // day == d)
            if mine.sum() >= 2:
                Yd, e = f.Y[i[mine]].astype(np.float64), res[mine] - bias_of(a, d)
                want[(a, d)] = np.linalg.solve(Yd.T @ Yd + reg * np.eye(Yd.shape[1]), Yd.T @ e)
            elif mine.any():
                want[(a, d)] = np.zeros(f.Y.shape[1])
    return want


def test_each_factor_offset_is_the_ridge_solution_of_its_days_residuals_after_its_bias():
    u, i, r, t = _ratings()
    u[:3], i[:3], t[:3] = 3, [0, 1, 2], [9 * DAY, 10 * DAY, 10 * DAY + 5]  # a day of one rating gets none
    f = _factors()
    fitter = days.DayFitter(Triples(None, u, i, r, t), DAY)
    biases = fitter(f, 2.5)
    got = fitter.with_factors(f, biases, 1.5)
    assert np.array_equal(got.bias, biases.bias) and got.factors.shape == (biases.size, 2)
    bias_of = lambda a, d: biases.bias[biases.positions(np.array([a]), np.array([d * DAY]))[0]]
    want = _ridge_by_day(u, i, r, t, f, bias_of, 1.5)
    assert list(zip(got.users.tolist(), got.days.tolist())) == sorted(want)
    np.testing.assert_allclose(got.factors, [want[k] for k in sorted(want)], rtol=1e-4, atol=1e-5)
    assert not got.factors[got.positions(np.array([3]), np.array([9 * DAY]))[0]].any()
    assert fitter.with_factors(f, biases, 0.0) is biases
    assert got.with_bias(got.bias).factors is None  # a refit of the biases leaves the offsets behind
    # without day biases the offsets are fitted to the plain residuals
    alone = days.fit(fitter, f, config.ModelConfig(day_factor_reg=1.5))
    assert not alone.bias.any()
    want = _ridge_by_day(u, i, r, t, f, lambda a, d: 0.0, 1.5)
    np.testing.assert_allclose(alone.factors, [want[k] for k in sorted(want)], rtol=1e-4, atol=1e-5)
    assert days.fitter(Triples(None, u, i, r, t), config.ModelConfig()) is None


def test_the_scorer_adds_the_days_offset_before_clipping():
    f = _factors()
    d = DayBiases(DAY, np.array([1], np.int32), np.array([2], np.int64), np.array([0.25], np.float32))
    plain = Scorer("explicit", f, 3.0, None)
    with_days = Scorer("explicit", f, 3.0, None, d)
    u, i = np.array([1, 1, 0, -1]), np.array([0, 0, 0, 0])
    t = np.array([2 * DAY + 5, 3 * DAY, 2 * DAY, 2 * DAY])
    np.testing.assert_allclose(with_days.predict_idx(u, i, t) - plain.predict_idx(u, i), [0.25, 0, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(with_days.predict_idx(u, i), plain.predict_idx(u, i))  # no times: none
    clipped = Scorer(
        "explicit",
        f,
        3.0,
        (1.0, 5.0),
        DayBiases(DAY, np.array([1], np.int32), np.array([2], np.int64), np.array([50.0], np.float32)),
    )
    assert clipped.predict_idx(u[:1], i[:1], t[:1])[0] == 5.0
    # factor offsets add d . y_i on that day, for known items
    offsets = d.with_factors(np.array([[0.5, -2.0]], np.float32))
    with_factors = Scorer("explicit", f, 3.0, None, offsets)
    i = np.array([0, 2, 0, 0])
    added = with_factors.predict_idx(u, i, t) - plain.predict_idx(u, i)
    np.testing.assert_allclose(added, [0.25 + f.Y[0] @ [0.5, -2.0], 0, 0, 0], rtol=1e-6)
    unknown = with_factors.predict_idx(np.array([1]), np.array([-1]), t[:1]) - plain.predict_idx([1], [-1])
    np.testing.assert_allclose(unknown, [0.25])
    with pytest.raises(ValueError, match="factor offsets"):
        d.with_factors(np.zeros((2, 2), np.float32))


# ---- the jobs: planted day effects ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def day_csv(tmp_path_factory):
    """A planted rank-3 matrix rated over 4 days per user, each (user, day) with its own offset."""
    u, i, r, _ = planted(n_users=80, n_items=60, rank=3, density=0.5, noise=0.2, seed=11)
    g = np.random.default_rng(11)
    day = g.integers(0, 4, u.size)
    offset = g.normal(scale=0.6, size=(80, 4))
    r = r + offset[u, day]
    ts = (17_361 + day) * DAY + g.integers(0, DAY, u.size)  # 4 calendar days from 2017-07-14
    path = tmp_path_factory.mktemp("days") / "ratings.csv"
    path.write_text(
        "user,item,rating,timestamp\n" + "".join(f"u{a},i{b},{c:.3f},{d}\n" for a, b, c, d in zip(u, i, r, ts))
    )
    return str(path)


SETTINGS = [
    "--set",
    "model.rank=3",
    "--set",
    "model.biases=true",
    "--set",
    "model.reg=0.05",
    "--set",
    "model.iterations=8",
]


def test_the_train_job_fits_saves_and_scores_day_biases(spark, day_csv, tmp_path):
    got = {}
    for reg in (0, 2):
        out = tmp_path / f"out{reg}"
        assert (
            train_job.main(["--input", day_csv, "--output", str(out), *SETTINGS, "--set", f"model.day_bias_reg={reg}"])
            == 0
        )
        got[reg] = json.loads((out / "metrics.json").read_text())
    assert got[0]["n_user_days"] is None and not (tmp_path / "out0" / "factors" / "user_days").exists()
    assert "day biases (user, day pairs)" in (tmp_path / "out2" / "report.html").read_text()
    assert got[2]["n_user_days"] == 80 * 4
    assert got[2]["rmse"] < 0.8 * got[0]["rmse"]  # the planted offsets are most of the error
    # the history is the alternating fit's, the same factors with or without day biases after it
    assert [h["test_rmse"] for h in got[2]["history"]] == [h["test_rmse"] for h in got[0]["history"]]
    # the saved model scores the held-out rows as the job did, and a row's day decides its offset
    model = load_model(str(tmp_path / "out2"), spark)
    assert model.days.size == 80 * 4 and model.days.day_length == DAY
    rows = spark.read.csv(day_csv, header=True, inferSchema=True).limit(50)
    with_days = model.predict(rows, timestamp_col="timestamp").toPandas()
    without = model.predict(rows).toPandas()
    assert (with_days["prediction"] - without["prediction"]).abs().max() > 0.05
    shifted = model.predict(rows.withColumn("timestamp", rows["timestamp"] + 30 * DAY), timestamp_col="timestamp")
    assert np.allclose(shifted.toPandas()["prediction"], without["prediction"])  # an unseen day: no offset
    # date-time texts and timestamp types are read as the train job reads them: as seconds
    from pyspark.sql import functions as F

    for as_time in (F.from_unixtime("timestamp"), F.timestamp_seconds("timestamp")):
        other = model.predict(rows.withColumn("when", as_time), timestamp_col="when").toPandas()
        assert np.allclose(other["prediction"], with_days["prediction"])
    garbled = model.predict(rows.withColumn("when", F.lit("soon")), timestamp_col="when").toPandas()
    assert np.allclose(garbled["prediction"], without["prediction"])  # not a time: no offset
    # column names are names, not paths: dots and backticks in them
    odd = rows.toDF("user.id", "item `x`", "rating", "ts.0")
    got = model.predict(odd, "user.id", "item `x`", "pred.x", timestamp_col="ts.0").toPandas()
    assert list(got.columns) == ["user.id", "item `x`", "rating", "ts.0", "pred.x"]
    assert np.allclose(got["pred.x"], with_days["prediction"])


def test_the_train_job_fits_saves_and_loads_day_factor_offsets(spark, day_csv, tmp_path):
    out = tmp_path / "out"
    sets = ["--set", "model.day_bias_reg=2", "--set", "model.day_factor_reg=3"]
    assert train_job.main(["--input", day_csv, "--output", str(out), *SETTINGS, *sets]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_model(str(out), spark)
    assert model.days.size == metrics["n_user_days"] == 320 and model.days.factors.shape == (320, 3)
    assert np.abs(model.days.factors).max() > 0
    d = model.days
    u, t, i = d.users[:40], d.days[:40] * DAY, np.arange(40) % model.items.size
    biases_only = dataclasses.replace(model.scorer, days=d.with_bias(d.bias))
    added = model.scorer.predict_idx(u, i, t) - biases_only.predict_idx(u, i, t)
    np.testing.assert_allclose(added, np.einsum("ij,ij->i", d.factors[:40], model.factors.Y[i]), atol=1e-5)
    assert np.abs(added).max() > 1e-3
    rows = spark.read.csv(day_csv, header=True, inferSchema=True).limit(50)
    assert model.predict(rows, timestamp_col="timestamp").count() == 50


@pytest.mark.slow
def test_spark_front_end_gives_the_job_the_same_day_biases(spark, day_csv, tmp_path):
    """Timestamps through Spark's stages (index.encode_split, front.frame_held_out) and the day biases'
    Spark job after the fit."""
    got = []
    for front in ("driver", "spark"):
        out = tmp_path / front
        assert (
            train_job.main(
                [
                    "--input",
                    day_csv,
                    "--output",
                    str(out),
                    *SETTINGS,
                    "--set",
                    "model.day_bias_reg=2",
                    "--set",
                    f"data.front_end={front}",
                ]
            )
            == 0
        )
        got.append(json.loads((out / "metrics.json").read_text()))
    assert got[1]["front_end"] == "spark" and got[0]["n_user_days"] == got[1]["n_user_days"] == 320
    assert got[1]["rmse"] == pytest.approx(got[0]["rmse"], rel=1e-4)


def test_a_damaged_day_table_names_the_file(spark, day_csv, tmp_path):
    out = tmp_path / "out"
    assert train_job.main(["--input", day_csv, "--output", str(out), *SETTINGS, "--set", "model.day_bias_reg=2"]) == 0
    meta = json.loads((out / "model.json").read_text())
    meta["n_user_days"] += 1
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"user_days: 320 rows, model.json says 321"):
        load_model(str(out), spark)


def test_tune_scores_each_day_bias_reg_on_every_trials_factors(spark, day_csv):
    """day_bias_reg is applied after a fit: every trial scores each listed value on its own factors
    (no fit per value), keeps the best, and the refit takes it."""
    found = {}
    for values in ("[0.0]", "[0.0, 2.0]"):
        run = config.load(
            None,
            [
                "tune.method=grid",
                "tune.space.rank=[2, 3]",
                f"tune.space.day_bias_reg={values}",
                "tune.max_iterations=8",
                "tune.extend_rounds=0",
                "tune.seeds=1",
                "model.biases=true",
                "model.reg=0.05",
            ],
        )
        front = prepare.front_end(spark, run, input=day_csv)
        front.load()
        outer, inner = front.tuning_split(tune.validation_split(run))
        assert tune.settings(run) == [{"rank": 2}, {"rank": 3}]  # no trials of their own
        found[values] = tune.search(inner, run)
        inner.release()
        outer.release()
    without, with_days = found["[0.0]"], found["[0.0, 2.0]"]
    assert with_days.best_settings["day_bias_reg"] == 2.0 and without.best_settings["day_bias_reg"] == 0.0
    assert with_days.best_value < 0.9 * without.best_value
    # at every iteration the better of the two: never worse than without day biases
    for a, b in zip(without.trials, with_days.trials):
        assert all(y <= x + 1e-12 for x, y in zip(a.history, b.history))
    table = tune.trials_table(with_days)
    assert table.column("day_bias_reg").to_pylist() == [2.0, 2.0]
    assert tune.best_run(run, with_days).model.day_bias_reg == 2.0


def test_tune_scores_the_day_factor_offsets_on_the_best_trial_after_the_search(spark, day_csv):
    """The trials are scored with their day biases alone; then each listed day factor offsets'
    lambda (else [model]'s) is scored on the best trial's factors at its best iteration, over its
    seeds, and the best goes to the refit, so that validation scores what the refit fits."""
    run = config.load(
        None,
        [
            "tune.space.day_bias_reg=[0.0, 2.0]",
            "tune.space.rank=[2, 3]",
            "tune.space.day_factor_reg=[0.0, 3.0, 1000.0]",
            "model.biases=true",
            "tune.method=grid",
            "tune.max_iterations=4",
            "tune.extend_rounds=0",
            "tune.seeds=2",
        ],
    )
    front = prepare.front_end(spark, run, input=day_csv)
    front.load()
    outer, inner = front.tuning_split(tune.validation_split(run))
    try:
        assert all("day_factor_reg" not in d for d in tune.settings(run))  # no trials of their own
        found = tune.search(inner, run)
        validation = tune.Validation(inner, run)
        assert validation.factor_regs == [0.0, 3.0, 1000.0]
        fitter = days.DayFitter(inner.train, DAY)
        chosen = found.best.chosen(found.lower_is_better)
        each = {reg: [] for reg in (0.0, 3.0, 1000.0)}
        for seed in (0, 1):  # the best trial's factors at its best iteration, each seed it ran with
            cfg = dataclasses.replace(
                run.model, **{**chosen, "iterations": found.best_iteration}, seed=seed, checkpoint_interval=0
            )
            f = als.fit(inner.train, inner.users.size, inner.items.size, cfg)
            # a trial's own score is with its day biases alone
            value, post = validation(f.factors)
            assert post == {"day_bias_reg": chosen["day_bias_reg"]}
            for reg in each:
                fitted = days.fit(fitter, f.factors, dataclasses.replace(cfg, day_factor_reg=reg))
                scorer = Scorer("explicit", f.factors, inner.stats.mean, (inner.stats.lo, inner.stats.hi), fitted)
                each[reg].append(evaluate.error_metrics(scorer, inner.heldout)["rmse"])
            assert value == pytest.approx(each[0.0][-1], rel=1e-6)
        means = {reg: float(np.mean(v)) for reg, v in each.items()}
        assert found.offsets == pytest.approx(means, rel=1e-6)
        best_reg = min(means, key=means.get)
        assert best_reg != 0.0  # the planted days have offsets to find
        assert found.best_settings["day_factor_reg"] == best_reg
        assert found.validation == pytest.approx(means[best_reg], rel=1e-6)
        assert found.validation < found.best_value
        assert tune.best_run(run, found).model.day_factor_reg == best_reg
        assert "day_factor_reg" not in tune.trials_table(found).column_names
        assert f"lambda {best_reg:g}" in tune.offsets_note(found)
        assert f"with day factor offsets {best_reg:g}" in tune.chosen_header(run, found, inner)
        # [model]'s value, unlisted, is the only one scored, so the figure is the refit's
        own = config.load(
            None, ["tune.space.rank=[2, 3]", "model.biases=true", "model.day_factor_reg=3", "tune.seeds=1"]
        )
        assert tune.Validation(inner, own).factor_regs == [3.0]
        assert list(tune.search(inner, own).offsets) == [3.0]
        # none asked for: nothing fitted after the search
        plain = config.load(None, ["tune.space.rank=[2, 3]", "model.biases=true", "tune.seeds=1"])
        assert tune.search(inner, plain).offsets == {}
    finally:
        inner.release()
        outer.release()


def test_tune_fits_the_day_biases_of_ratings_spark_holds_on_the_driver(spark, day_csv):
    """Fitted after every iteration of every trial: a Spark job each would cost more than the search."""
    run_sets = ["data.front_end=spark", "tune.space.day_bias_reg=[0.0, 2.0]", "model.biases=true"]
    run = config.load(None, run_sets)
    front = prepare.front_end(spark, run, input=day_csv)
    front.load()
    outer, inner = front.tuning_split(tune.validation_split(run))
    assert not isinstance(inner.train, Triples)
    assert tune.Validation(inner, run).days.spark_free
    tiny_sets = [*run_sets, "data.front_end_max_mb=0.001"]
    tiny = config.load(None, tiny_sets)
    assert not tune.Validation(inner, tiny).days.spark_free  # too many for the driver: Spark's
    f = days.DayFitter(inner.train, DAY)
    fitted = (f, days.DayFitter(days.on_driver(inner.train, inner.stats.n, 2**30), DAY))
    factors = _factors(inner.users.size, inner.items.size)
    a, b = (x(factors, 2.0) for x in fitted)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.days, b.days)
    np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-6)
    # the day factor offsets scored after the search: Spark's ratings give the driver's figures
    listed = ["tune.space.day_factor_reg=[0.0, 3.0]"]
    on_spark = tune.Validation(inner, config.load(None, [*tiny_sets, *listed])).offsets(factors, 2.0)
    on_driver = tune.Validation(inner, config.load(None, [*run_sets, *listed])).offsets(factors, 2.0)
    assert on_spark == pytest.approx(on_driver, rel=1e-5) and on_driver[1] != pytest.approx(on_driver[0])
    # and in a search, whose resident stage holds every slot between its fits
    searched = config.load(None, [*tiny_sets, *listed, "tune.space.rank=[2]", "tune.seeds=1", "tune.max_iterations=3"])
    assert set(tune.search(inner, searched).offsets) == {0.0, 3.0}
    inner.release()
    outer.release()


def test_a_range_of_day_bias_reg_is_refused():
    run = config.load(None, ["tune.space.day_bias_reg={min = 1.0, max = 10.0}"])
    with pytest.raises(ConfigError, match="tune.space.day_bias_reg: a list of values"):
        tune.post_fit_values(run)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.day_bias_reg=-1"], "model.day_bias_reg"),
        (["model.day_length=0"], "model.day_length"),
    ],
)
def test_bad_day_settings_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, sets)


def test_the_estimator_fits_day_biases_from_timestampCol_and_transform_adds_them(spark, day_csv, tmp_path):
    """Through the spark front end: the driver's is the train job's above, and the two give a job the
    same day biases (test_spark_front_end_gives_the_job_the_same_day_biases)."""
    from mf_spark.ml import ALS, ALSModel

    df = spark.read.csv(day_csv, header=True, inferSchema=True)
    als = ALS(
        rank=3,
        maxIter=6,
        regParam=0.05,
        biases=True,
        dayBiasReg=2.0,
        timestampCol="timestamp",
        frontEnd="spark",
        coldStartStrategy="drop",
    )
    model = als.fit(df)
    assert model.factorModel.days.size == 80 * 4
    err = lambda m, d: m.transform(d).selectExpr("avg(pow(prediction - rating, 2))").first()[0]
    plain = ALS(rank=3, maxIter=6, regParam=0.05, biases=True, frontEnd="spark").fit(df)
    assert plain.factorModel.days is None
    assert err(model, df) < 0.6 * err(plain, df)
    assert err(model, df.drop("timestamp")) == pytest.approx(err(plain, df), rel=0.2)  # no day: no offset
    model.save(str(tmp_path / "m"))
    again = ALSModel.load(str(tmp_path / "m"))
    assert again.factorModel.days.size == 80 * 4 and err(again, df) == pytest.approx(err(model, df))
