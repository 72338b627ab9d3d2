"""Reject reasons, the bad-row budget, duplicate policies, the counts identity and ID typing."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from mf_spark.core.config import DataConfig
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.data import read, validate

LENIENT = DataConfig(max_bad_fraction=1.0)
CLEAN = "user {u}, item {i}, rating double, timestamp long"
from conftest import frame  # noqa: E402


def raw(spark, rows, source="file:/data/ratings.csv"):
    """Raw rows (user, item, rating[, timestamp]) as text, _row = position in `rows`."""
    rows = [tuple(r) + (None,) * (4 - len(r)) for r in rows]
    data = [(*r, source, n) for n, r in enumerate(rows)]
    return frame(spark, data, "user string, item string, rating string, timestamp string, _source string, _row long")


def clean_rows(spark, rows, u="string", i="string"):
    return frame(spark, rows, CLEAN.format(u=u, i=i))


def assert_identity(counts):
    assert counts["n_read"] == (
        counts["n_clean"] + counts["n_rejected"] + counts["n_dropped"] + counts["n_duplicates_merged"]
    )


BAD = [
    ((None, "i1", "4"), "missing user ID"),
    (("  ", "i1", "4"), "missing user ID"),
    (("u1", "", "4"), "missing item ID"),
    (("u1", "i1", None), "missing rating"),
    (("u1", "i1", " "), "missing rating"),
    (("u1", "i1", "four"), "rating is not a number"),
    (("u1", "i1", "NaN"), "rating is NaN"),
    (("u1", "i1", "-Infinity"), "rating is infinite"),
    (("u1", "i1", "-1e39"), "rating is beyond float32's range"),
    (("u1", "i1", "4", "yesterday"), "timestamp is not a number"),
    (("u1", "i1", "4", "NaN"), "timestamp is not a number"),
    (("u1", "i1", "4", "1e30"), "timestamp is not a number"),
    ((None, "", "x", "y"), "missing user ID"),  # the first reason that applies
]


def test_each_reject_reason_keeps_the_raw_values(spark):
    rows = [("u0", "i0", "3")] + [row for row, _ in BAD]
    cleaned = validate.clean(raw(spark, rows), LENIENT, "explicit")
    want = frame(
        spark,
        [
            ("file:/data/ratings.csv", n + 1, *row, *(None,) * (4 - len(row)), reason)
            for n, (row, reason) in enumerate(BAD)
        ],
        "_source string, _row long, user string, item string, rating string, timestamp string, reason string",
    )
    assert_df_equality(cleaned.rejected, want, ignore_nullable=True, ignore_row_order=True)
    assert cleaned.counts == {"n_read": 14, "n_rejected": 13, "n_dropped": 0, "n_duplicates_merged": 0, "n_clean": 1}


def test_explicit_keeps_negative_ratings_and_parses_timestamps(spark):
    rows = [
        ("1", "1", "-2.5", "100"),
        ("1", "2", "0", "1.9e2"),
        ("2", "1", " 4 ", "2020-01-01 00:00:00"),
        ("2", "2", "1", "12.9"),
    ]
    cleaned = validate.clean(raw(spark, rows), DataConfig(), "explicit")
    want = clean_rows(
        spark, [(1, 1, -2.5, 100), (1, 2, 0.0, 190), (2, 1, 4.0, 1577836800), (2, 2, 1.0, 12)], u="long", i="long"
    )
    assert_df_equality(cleaned.ratings, want, ignore_nullable=True, ignore_row_order=True)


def test_implicit_nonpositive_rejected_or_dropped(spark):
    rows = [("u1", "i1", "3"), ("u1", "i2", "0"), ("u2", "i1", "-1")]
    rejected = validate.clean(raw(spark, rows), LENIENT, "implicit")
    assert [r.reason for r in rejected.rejected.collect()] == ["rating <= 0 in implicit data"] * 2
    assert rejected.counts["n_rejected"] == 2 and rejected.counts["n_clean"] == 1
    dropped = validate.clean(raw(spark, rows), DataConfig(nonpositive="drop"), "implicit")
    assert dropped.rejected.count() == 0
    assert dropped.counts == {"n_read": 3, "n_rejected": 0, "n_dropped": 2, "n_duplicates_merged": 0, "n_clean": 1}


def test_max_bad_fraction_pass_and_fail(spark):
    good = [(f"u{n}", "i1", "4") for n in range(99)]
    one_bad = validate.clean(raw(spark, good + [("u1", "", "4")]), DataConfig(), "explicit")
    assert one_bad.counts["n_rejected"] == 1 and one_bad.counts["n_clean"] == 99  # 1.0% is allowed
    rows = [(f"u{n}", "i1", "4") for n in range(7)]
    rows += [("u1", "", "4"), ("u2", "i2", "x"), (None, "i", "1")]
    with pytest.raises(InputError) as err:
        validate.clean(raw(spark, rows), DataConfig(), "explicit")
    msg = str(err.value)
    assert msg.startswith(
        "ratings.csv: 3 of 10 rows rejected (30.0% > 1.0% allowed, "
        "data.max_bad_fraction); first: row user='u1' item='' rating='4': "
        "missing item ID; row user='u2' item='i2' rating='x': rating is not a number"
    )


def test_no_rows_and_no_valid_rows(spark):
    with pytest.raises(InputError, match="no data rows"):
        validate.clean(raw(spark, []), DataConfig(), "explicit")
    with pytest.raises(InputError, match="no valid rows left"):
        validate.clean(raw(spark, [("u", "i", "-1")]), DataConfig(nonpositive="drop"), "implicit")
    with pytest.raises(ConfigError, match="model.kind"):
        validate.clean(raw(spark, [("u", "i", "1")]), DataConfig(), "ordinal")


# u1: latest timestamp wins; u2: no timestamps, last row wins; u4: equal timestamps, last row wins;
# u5: a row with a timestamp beats one without.
DUPS = [
    ("u1", "i1", "4", "10"),
    ("u1", "i1", "2", "30"),
    ("u1", "i1", "5", "20"),
    ("u2", "i1", "1"),
    ("u2", "i1", "3"),
    ("u3", "i2", "2", "5"),
    ("u4", "i3", "1", "50"),
    ("u4", "i3", "2", "50"),
    ("u5", "i4", "9", "1"),
    ("u5", "i4", "6"),
]


@pytest.mark.parametrize(
    "policy, want",
    [
        (
            "last",
            [
                ("u1", "i1", 2.0, 30),
                ("u2", "i1", 3.0, None),
                ("u3", "i2", 2.0, 5),
                ("u4", "i3", 2.0, 50),
                ("u5", "i4", 9.0, 1),
            ],
        ),
        (
            "mean",
            [
                ("u1", "i1", 11 / 3, 30),
                ("u2", "i1", 2.0, None),
                ("u3", "i2", 2.0, 5),
                ("u4", "i3", 1.5, 50),
                ("u5", "i4", 7.5, 1),
            ],
        ),
        (
            "sum",
            [
                ("u1", "i1", 11.0, 30),
                ("u2", "i1", 4.0, None),
                ("u3", "i2", 2.0, 5),
                ("u4", "i3", 3.0, 50),
                ("u5", "i4", 15.0, 1),
            ],
        ),
    ],
)
def test_duplicate_policies(spark, policy, want):
    cleaned = validate.clean(raw(spark, DUPS), DataConfig(duplicates=policy), "explicit")
    assert_df_equality(cleaned.ratings, clean_rows(spark, want), ignore_nullable=True, ignore_row_order=True)
    assert cleaned.counts["n_duplicates_merged"] == 5 and cleaned.counts["n_clean"] == 5
    assert_identity(cleaned.counts)


def test_default_policy_by_kind(spark):
    rows = [("u", "i", "1"), ("u", "i", "3")]
    assert validate.clean(raw(spark, rows), DataConfig(), "explicit").ratings.first().rating == 2.0
    assert validate.clean(raw(spark, rows), DataConfig(), "implicit").ratings.first().rating == 4.0


def test_duplicates_error_names_pairs(spark):
    with pytest.raises(InputError) as err:
        validate.clean(raw(spark, DUPS), DataConfig(duplicates="error"), "explicit")
    msg = str(err.value)
    assert "ratings.csv: 5 rows repeat" in msg
    assert "(user='u1', item='i1') x3, (user='u2', item='i1') x2, (user='u4', item='i3') x2" in msg


def test_counts_identity_on_mixed_input(spark):
    rows = DUPS + [("u9", "", "1"), ("u9", "i9", "0"), ("u9", "i8", "0"), ("u8", "i8", "x")]
    cleaned = validate.clean(raw(spark, rows), DataConfig(max_bad_fraction=0.5, nonpositive="drop"), "implicit")
    assert cleaned.counts == {"n_read": 14, "n_rejected": 2, "n_dropped": 2, "n_duplicates_merged": 5, "n_clean": 5}
    assert_identity(cleaned.counts)
    assert cleaned.ratings.count() == 5 and cleaned.rejected.count() == 2


@pytest.mark.parametrize(
    "users, items, user_type, item_type",
    [
        (["1", "22", "-3"], ["1", "007", "3"], "bigint", "string"),
        (["1", "u2", "3"], ["3000000000", "1", "2"], "string", "bigint"),  # > int32 is still a long
        (["99999999999999999999", "1", "2"], ["+5", "5", "6"], "string", "string"),  # > int64; "+5"
    ],
)
def test_id_typing(spark, users, items, user_type, item_type):
    rows = [(u, i, "1") for u, i in zip(users, items)] + [("x", "y", "bad")]  # rejected: ignored
    cleaned = validate.clean(raw(spark, rows), LENIENT, "explicit")
    types = dict(cleaned.ratings.dtypes)
    assert (types["user"], types["item"]) == (user_type, item_type)
    got = sorted((str(r.user), str(r.item)) for r in cleaned.ratings.collect())
    assert got == sorted(zip(users, items))


def test_native_types_from_parquet_like_input(spark):
    df = frame(
        spark,
        [(1, 2, 4.0, 5), (1, 2, None, 6), (3, 4, float("nan"), 7)],
        "user int, item int, rating double, timestamp long",
    )
    df = df.select("*", F.lit("file:/d/r.parquet").alias("_source"), F.monotonically_increasing_id().alias("_row"))
    cleaned = validate.clean(df, LENIENT, "explicit")
    assert_df_equality(cleaned.ratings, clean_rows(spark, [(1, 2, 4.0, 5)], u="long", i="long"), ignore_nullable=True)
    reasons = sorted(r.reason for r in cleaned.rejected.collect())
    assert reasons == ["missing rating", "rating is NaN"]
    assert cleaned.rejected.where("rating = 'NaN'").count() == 1


def test_sample_end_to_end(spark):
    cleaned = validate.clean(read.ratings(spark, read.sample_path(), "auto", DataConfig()), DataConfig(), "explicit")
    assert cleaned.counts == {
        "n_read": 1501,
        "n_rejected": 0,
        "n_dropped": 0,
        "n_duplicates_merged": 0,
        "n_clean": 1501,
    }
    assert cleaned.ratings.dtypes == [
        ("user", "bigint"),
        ("item", "bigint"),
        ("rating", "double"),
        ("timestamp", "bigint"),
    ]
