"""Side information: feature tables encoded, the map from features to factors, new items and users
placed by it (model.features, FactorModel.learn_features / with_features, the jobs' --*-features)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import train as train_job
from mf_spark import load_model
from mf_spark.core.errors import InputError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel
from mf_spark.model.features import Encoding, FeatureMap
from mf_spark.run import cli

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def test_numbers_categories_and_tags_become_columns():
    table = pa.table(
        {
            "item": [1, 2, 3],
            "year": [1990.0, None, 2010.0],
            "country": ["fr", "us", None],
            "genres": ["Action|Comedy", "Drama", ""],
        }
    )
    enc = Encoding.fit(table, "item")
    assert enc.names == ["year", "country=fr", "country=us", "genres=Action", "genres=Comedy", "genres=Drama"]
    X = enc.matrix(table)
    np.testing.assert_allclose(X[:, 0], [-1.0, 0.0, 1.0])  # standardized; a missing number is the mean
    np.testing.assert_array_equal(X[:, 1:], [[1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    unseen = pa.table({"item": [9], "year": [2000.0], "country": ["jp"], "genres": ["Drama|Western"]})
    np.testing.assert_array_equal(enc.matrix(unseen)[0, 1:], [0, 0, 0, 0, 1])  # unseen values count as none
    with pytest.raises(InputError, match="besides its ID column"):
        Encoding.fit(pa.table({"item": [1]}), "item")
    with pytest.raises(InputError, match="feature column 'when' has type"):
        Encoding.fit(pa.table({"item": [1], "when": pa.array([b"x"], pa.binary())}), "item")


def _genre_table(n: int, rng: np.random.Generator, first: int = 0) -> pa.Table:
    picks = ["|".join(sorted(rng.choice(GENRES, size=rng.integers(1, 3), replace=False))) for _ in range(n)]
    return pa.table({"movieId": pa.array(np.arange(first, first + n), pa.int64()), "genres": picks})


def test_the_map_recovers_factors_that_follow_the_features():
    rng = np.random.default_rng(3)
    table = _genre_table(400, rng)
    enc = Encoding.fit(table, "movieId")
    truth = rng.normal(size=(enc.width, 4))
    Y = enc.matrix(table) @ truth + 0.5 + rng.normal(scale=0.05, size=(400, 4))
    fmap = FeatureMap.fit(enc, table, np.arange(400), Y, None, 0.0)
    assert fmap.r2 > 0.98 and fmap.fit_rows == 400 and fmap.reg in (0.001, 0.01, 0.1, 1.0)
    new = _genre_table(50, rng, first=1000)
    ids, got, bias = fmap.place(new)
    np.testing.assert_allclose(got, enc.matrix(new) @ truth + 0.5, atol=0.05)
    assert bias is None and ids.to_pylist() == list(range(1000, 1050))
    with pytest.raises(InputError, match="no ID of the feature table"):
        FeatureMap.fit(enc, table, np.full(400, -1), Y, None, 0.0)


def _model(rng, n_users=40, n_items=60, rank=4) -> tuple[FactorModel, pa.Table, np.ndarray]:
    table = _genre_table(n_items, rng)
    enc = Encoding.fit(table, "movieId")
    truth = rng.normal(size=(enc.width, rank))
    Y = (enc.matrix(table) @ truth).astype(np.float32)
    X = rng.normal(size=(n_users, rank)).astype(np.float32)
    users = IdMap(pa.array([f"u{k:02d}" for k in range(n_users)]), "user")
    items = IdMap(pa.array(np.arange(n_items), pa.int64()), "item")
    model = FactorModel("implicit", Factors(X, Y, None, None, 0.0), users, items, 0.0, None)
    return model, table, truth


def test_new_items_get_the_maps_factors_and_warm_ones_keep_theirs(spark, tmp_path):
    rng = np.random.default_rng(5)
    model, table, truth = _model(rng)
    with pytest.raises(InputError, match="has no item features: train it with --item-features"):
        model.with_features("items", table)
    learned = model.learn_features("items", table)
    learned.save(str(tmp_path / "m"), spark)
    loaded = load_model(str(tmp_path / "m"), spark)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["features"]["items"]["fit_rows"] == 60
    new = _genre_table(5, rng, first=500)
    both = pa.concat_tables([table.slice(0, 3), new])  # 3 known items: they keep their factors
    grown = loaded.with_features("items", both)
    assert grown.items.size == 65 and grown.users.size == 40
    at = grown.items.index_of(pa.array(np.arange(500, 505), pa.int64()))
    enc = learned.features["items"].encoding
    np.testing.assert_allclose(grown.factors.Y[at], enc.matrix(new) @ truth, atol=0.05)
    np.testing.assert_array_equal(grown.factors.Y[grown.items.index_of(pa.array([0, 1, 2]))], model.factors.Y[:3])
    # The new items compete in every list: one made to score highest for every user is first everywhere.
    best = pa.table({"movieId": pa.array([999], pa.int64()), "genres": ["Action"]})
    tops = loaded.with_features("items", best)
    recs = tops.recommend(None, 70).toPandas()
    assert (recs.groupby("user")["item"].apply(lambda s: 999 in set(s))).all()


def test_a_missing_feature_file_is_refused_before_the_input_is_read(spark, tmp_path):
    """(The train and recommend jobs with --item-features run end to end in scripts/benchmark_cold.py's
    test, tests/jobs/test_scripts.py.)"""
    args = cli.parse_train(
        ["--input", str(tmp_path / "never_read.csv"), "--output", str(tmp_path / "x")]
        + ["--item-features", str(tmp_path / "nope.parquet")]
    )
    with pytest.raises(InputError, match="--item-features .*nope.parquet: does not exist"):
        train_job.run(spark, args)
