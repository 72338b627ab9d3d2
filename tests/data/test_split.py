"""Splits: sizes, disjoint and complete halves, per-user guarantees, and partition independence."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from chispa import assert_df_equality

from mf_spark.core.config import SplitConfig
from mf_spark.core.errors import InputError
from mf_spark.data import split

SCHEMA = "user long, item string, rating double, timestamp long"
from conftest import frame  # noqa: E402


@pytest.fixture(scope="module")
def ratings(spark):
    """80 users with 1..24 ratings each (users 0..4 have exactly one), timestamps unique per user."""
    g = np.random.default_rng(3)
    rows = []
    for u in range(80):
        n = 1 if u < 5 else int(g.integers(2, 25))
        items = g.choice(200, size=n, replace=False)
        stamps = g.permutation(n) * 10 + 1_000
        rows += [(u, f"i{int(i)}", float(g.integers(1, 6)), int(t)) for i, t in zip(items, stamps)]
    return frame(spark, rows, SCHEMA).cache()


def keys(df):
    return sorted((r.user, r.item) for r in df.select("user", "item").collect())


def halves(ratings, cfg):
    train, test = split.split(ratings, cfg)
    return keys(train), keys(test)


def per_user(pairs):
    return collections.Counter(u for u, _ in pairs)


def check_disjoint_and_complete(ratings, train, test):
    assert not set(train) & set(test)
    assert sorted(train + test) == keys(ratings)


def test_random_fraction_disjoint_complete_and_same_columns(ratings):
    cfg = SplitConfig(method="random", test_fraction=0.25, seed=1)
    train_df, test_df = split.split(ratings, cfg)
    assert train_df.columns == ratings.columns and test_df.columns == ratings.columns
    train, test = keys(train_df), keys(test_df)
    check_disjoint_and_complete(ratings, train, test)
    assert 0.18 < len(test) / (len(train) + len(test)) < 0.32
    assert_df_equality(train_df.unionByName(test_df), ratings, ignore_row_order=True)


def test_seed_changes_the_split(ratings):
    a = halves(ratings, SplitConfig(method="random", seed=1))[1]
    b = halves(ratings, SplitConfig(method="random", seed=2))[1]
    assert a != b


def test_per_user_counts_and_train_guarantee(ratings):
    f = 0.3
    train, test = halves(ratings, SplitConfig(method="per_user", test_fraction=f, seed=5))
    check_disjoint_and_complete(ratings, train, test)
    n_train, n_test = per_user(train), per_user(test)
    for u in set(n_train) | set(n_test):
        n = n_train[u] + n_test[u]
        assert n_test[u] == min(int(np.floor(n * f + 0.5)), n - 1)  # Spark's round is half-up
        assert n_train[u] >= 1
    assert all(n_test[u] == 0 for u in range(5))  # single-rating users


def test_temporal_puts_the_latest_in_test(ratings):
    f = 0.2
    train_df, test_df = split.split(ratings, SplitConfig(method="temporal", test_fraction=f))
    last_train = {
        r.user: r.t
        for r in train_df.groupBy("user").agg({"timestamp": "max"}).withColumnRenamed("max(timestamp)", "t").collect()
    }
    first_test = {
        r.user: r.t
        for r in test_df.groupBy("user").agg({"timestamp": "min"}).withColumnRenamed("min(timestamp)", "t").collect()
    }
    assert first_test and all(first_test[u] > last_train[u] for u in first_test)
    assert set(last_train) == set(range(80))  # every user keeps a train row
    n_test = per_user(keys(test_df))
    n_all = per_user(keys(ratings))
    assert all(n_test[u] == min(int(np.floor(n * f + 0.5)), n - 1) for u, n in n_all.items())


def test_temporal_without_timestamps(spark, ratings):
    with pytest.raises(InputError, match="every timestamp is null"):
        split.split(
            ratings.selectExpr("user", "item", "rating", "cast(null as long) as timestamp"),
            SplitConfig(method="temporal"),
        )
    with pytest.raises(InputError, match="needs a timestamp column"):
        split.split(ratings.drop("timestamp"), SplitConfig(method="temporal"))


@pytest.mark.parametrize("method", ["random", "per_user", "temporal"])
def test_same_split_for_1_and_8_partitions(ratings, method):
    cfg = SplitConfig(method=method, test_fraction=0.3, seed=11)

    def flags(df):  # split() is two filters of flag(): one collect checks both halves
        return sorted((r.user, r.item, r._split_test) for r in split.flag(df, cfg).collect())

    one, eight = flags(ratings.repartition(1)), flags(ratings.repartition(8, "item"))
    assert one == eight and any(t for *_, t in one)


def test_hash_ignores_id_type(spark):
    longs = frame(spark, [(7, 3)], "user long, item long")
    texts = frame(spark, [("7", "3")], "user string, item string")

    def h(df):
        return df.select(split.uniform_hash(42, df.user, df.item).alias("h")).first().h

    assert h(longs) == h(texts) and 0.0 <= h(longs) < 1.0
