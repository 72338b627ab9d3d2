"""Train / test splits of validated ratings, the same for a given seed whatever the partitioning.

Every row gets a uniform number h in [0, 1) from xxhash64(seed, user, item), so where a row goes
depends only on (seed, user, item) (and, for `temporal`, the user's timestamps), never on partition
count, read order or executor count.

    method     a row goes to test when ...
    random     h < test_fraction                                  (~ test_fraction of the rows)
    per_user   it is among the user's first t_u rows by h         t_u = min(round(n_u * f), n_u - 1)
    temporal   it is among the user's t_u latest rows (ties by h)

For per_user and temporal, a user with n_u >= 2 ratings keeps >= 1 in train and a user with a single
rating stays in train. Example, f = 0.25, user u1 with 6 ratings: round(1.5) = 2 rows go to test
(Spark's round is half-up); user u2 with 1 rating: min(round(0.25), 0) = 0.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mf_spark.core.config import SplitConfig
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.core.types import ITEM, RATING, TIMESTAMP, USER

METHODS = ("random", "per_user", "temporal")
_H, _N, _RANK, _TEST = "_split_h", "_split_n", "_split_rank", "_split_test"


def uniform_hash(seed: int, user: Column, item: Column) -> Column:
    """Uniform double in [0, 1) from xxhash64(seed, user, item); IDs hashed as text, so user 7 and
    user "7" land in the same place whether or not validation typed the column as long."""
    h = F.xxhash64(F.lit(int(seed)), user.cast("string"), item.cast("string"))
    return F.shiftrightunsigned(h, 11) / float(2**53)  # top 53 bits: exact in a double


def _ranked(df: DataFrame, order: list[Column]) -> DataFrame:
    """Add the user's row count and each row's 1-based rank in `order`.

    Performance note: one shuffle (a window partitioned by user), lazy.
    """
    by_user = Window.partitionBy(USER)
    return df.withColumn(_N, F.count(F.lit(1)).over(by_user)).withColumn(
        _RANK, F.row_number().over(by_user.orderBy(*order))
    )


def _n_test(f: float) -> Column:
    """min(round(n_u * f), n_u - 1) test rows for a user with n_u ratings."""
    return F.least(F.round(F.col(_N) * F.lit(f)), F.col(_N) - 1)


def _check_timestamps(df: DataFrame) -> None:
    """Performance note: one action (stops at the first non-null timestamp; scans all if none)."""
    if TIMESTAMP not in df.columns:
        raise InputError(
            f"split.method = 'temporal' needs a timestamp column; the ratings have "
            f"{df.columns}; set data.timestamp_col or use split.method = per_user"
        )
    if df.where(F.col(TIMESTAMP).isNotNull()).isEmpty():
        raise InputError(
            "split.method = 'temporal' needs timestamps, but every timestamp is null; "
            "set data.timestamp_col or use split.method = per_user"
        )


def flag(df: DataFrame, cfg: SplitConfig) -> DataFrame:
    """df plus a boolean `_split_test` column (true = test), per `cfg.method`.

    Performance note: random adds no shuffle; per_user and temporal add one (window by user);
    temporal first runs one action to check that timestamps exist. Lazy otherwise.
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"config key split.method: got {cfg.method!r}, expected one of {METHODS}")
    for col in (USER, ITEM):
        if col not in df.columns:
            raise ValueError(f"split: the ratings lack column {col!r}; got {df.columns}")
    f = cfg.test_fraction
    hashed = df.withColumn(_H, uniform_hash(cfg.seed, F.col(USER), F.col(ITEM)))
    if cfg.method == "random":
        return hashed.withColumn(_TEST, F.col(_H) < F.lit(f)).drop(_H)
    # Ties of h (hash collisions, or duplicate pairs in unvalidated data) fall back to the item
    # text and the rating, so the order is total and the same on any partitioning.
    tail = [F.col(ITEM).cast("string")] + ([F.col(RATING)] if RATING in df.columns else [])
    if cfg.method == "per_user":
        order = [F.col(_H).asc(), *tail]
    else:
        _check_timestamps(df)
        # Latest first; rows without a timestamp rank after the user's timestamped rows.
        order = [F.col(TIMESTAMP).desc_nulls_last(), F.col(_H).desc(), *tail]
    ranked = _ranked(hashed, order)
    return ranked.withColumn(_TEST, F.col(_RANK) <= _n_test(f)).drop(_H, _N, _RANK)


def split(df: DataFrame, cfg: SplitConfig) -> tuple[DataFrame, DataFrame]:
    """(train, test) of validated ratings (original IDs), disjoint, together exactly `df`.

    Both halves keep the columns of `df`. Raises InputError for temporal without timestamps and
    ConfigError for an unknown method.

    Performance note: see `flag`. train and test are two lazy filters of the same flagged rows,
    so each recomputes `df` and the window (one shuffle) when used: cache both (or cache
    `flag(df, cfg)` and filter it) when the data is large.
    """
    flagged = flag(df, cfg)
    train = flagged.where(~F.col(_TEST)).drop(_TEST)
    test = flagged.where(F.col(_TEST)).drop(_TEST)
    return train, test
