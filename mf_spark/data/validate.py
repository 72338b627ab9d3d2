"""Parse and check raw ratings: typed clean rows, rejected rows with a reason, and the counts.

Input: the raw DataFrame of `read.ratings` (user, item, rating, timestamp, _source, _row).
Output (`Cleaned`):
    ratings    user, item (LongType when every valid ID of that column is an integer whose text
               round-trips, e.g. "42" but not "007"; else StringType), rating double,
               timestamp long (nullable); at most one row per (user, item)
    rejected   _source, _row, user, item, rating, timestamp (raw values as strings), reason
    counts     n_read == n_clean + n_rejected + n_dropped + n_duplicates_merged

Example (explicit, duplicates = "mean"):
    raw       u1,i1,4 | u1,i1,2 | u2,,5 | u3,i2,x
    ratings   u1,i1,3.0
    rejected  u2,,5 "missing item ID" | u3,i2,x "rating is not a number"
    counts    n_read 4, n_rejected 2, n_dropped 0, n_duplicates_merged 1, n_clean 1
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ByteType, IntegerType, LongType, NumericType, ShortType, StringType

from mf_spark.core.config import DataConfig
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.core.types import ITEM, MALFORMED, PART, RATING, REASON, ROW, SOURCE, TIMESTAMP, USER

KINDS = ("explicit", "implicit")
SHOWN = 5  # bad rows / duplicated pairs quoted in an error message

MISSING_USER = "missing user ID"
MISSING_ITEM = "missing item ID"
MISSING_RATING = "missing rating"
RATING_NOT_NUMBER = "rating is not a number"
RATING_NAN = "rating is NaN"
RATING_INFINITE = "rating is infinite"
RATING_TOO_LARGE = "rating is beyond float32's range"
RATING_OUT_OF_RANGE = "rating is outside data.rating_range"
FLOAT32_MAX = 3.4028234663852886e38  # the factors and the blocks' values are float32
TIMESTAMP_NOT_NUMBER = "timestamp is not a number"
NONPOSITIVE = "rating <= 0 in implicit data"

_VALID, _REJECTED, _DROPPED = "valid", "rejected", "dropped"
_INTEGRAL = (ByteType, ShortType, IntegerType, LongType)


@dataclass
class Cleaned:
    ratings: DataFrame  # user, item, rating double, timestamp long; one row per (user, item)
    rejected: DataFrame  # _source, _row, user, item, rating, timestamp (strings), reason
    counts: dict[str, int]  # n_read, n_rejected, n_dropped, n_duplicates_merged, n_clean
    _cache: DataFrame | None = None  # the cached pairs `ratings` reads

    def release(self) -> None:
        """Drop the cache behind `ratings` (after whatever derives from it is cached or written)."""
        if self._cache is not None:
            self._cache.unpersist()


def quoted(name: str) -> str:
    """A column name as an exact reference in Spark's syntax: dots and backticks in it are not paths."""
    return "`" + name.replace("`", "``") + "`"


def exact_column(name: str) -> Column:
    """A top-level column by its exact name (see `quoted`)."""
    return F.col(quoted(name))


def _text(raw: DataFrame, name: str) -> Column:
    """The raw value as a string, as it is kept in `rejected`."""
    dtype = raw.schema[name].dataType
    return exact_column(name) if isinstance(dtype, StringType) else exact_column(name).cast("string")


def _present(text: Column, nulls: tuple[str, ...]) -> Column:
    """Whether a trimmed text is a value: not null and not one of data.null_values."""
    return text.isNotNull() & ~text.isin(*nulls) if nulls else text.isNotNull()


def _id_key(raw: DataFrame, name: str, nulls: tuple[str, ...]) -> tuple[Column, Column]:
    """(the ID or null when missing, whether it is a canonical long): integer columns as they are,
    others as their trimmed text."""
    dtype = raw.schema[name].dataType
    if isinstance(dtype, _INTEGRAL):  # grouped as numbers: cheaper than their text
        return F.col(name).cast("long"), F.lit(True)
    text = F.trim(_text(raw, name))
    key = F.when(_present(text, nulls) & (text != ""), text)
    # "007" -> 7 -> "7" differs: such IDs keep their text, so "007" and "7" stay distinct users.
    return key, F.coalesce(key.try_cast("long").cast("string") == key, F.lit(False))


def _number(raw: DataFrame, name: str, to: str, nulls: tuple[str, ...]) -> tuple[Column, Column]:
    """(value is missing, parsed value or null when it is not a number)."""
    dtype = raw.schema[name].dataType
    if isinstance(dtype, NumericType):
        return exact_column(name).isNull(), exact_column(name).try_cast(to)
    text = F.trim(_text(raw, name))
    return ~_present(text, nulls) | (text == ""), text.try_cast(to)


def _timestamp(raw: DataFrame, nulls: tuple[str, ...], name: str = TIMESTAMP) -> tuple[Column, Column]:
    """(timestamp missing, epoch value): integers, decimals (truncated) or ISO date-times."""
    missing, as_long = _number(raw, name, "long", nulls)
    if isinstance(raw.schema[name].dataType, NumericType):
        return missing, as_long
    text = F.trim(_text(raw, name))
    # try_cast, not floor: floor(NaN) is 0 and floor(1e30) raises under ANSI; these give null.
    decimal = text.try_cast("double").try_cast("long")
    iso = F.unix_seconds(F.try_to_timestamp(text))  # "2015-02-19 21:11:52"
    return missing, F.coalesce(as_long, decimal, iso)


def epoch_value(df: DataFrame, name: str) -> Column:
    """Column `name` of `df` read as validation reads timestamps (integers, decimals truncated, ISO
    date-times and timestamp types as unix seconds); null where it is none of these."""
    return _timestamp(df, (), name)[1]


def _flag(raw: DataFrame, cfg: DataConfig, kind: str) -> DataFrame:
    """One row per input row: raw texts, parsed values, reason (null if fine) and status."""
    nulls = tuple(cfg.null_values)
    user, user_int = _id_key(raw, USER, nulls)
    item, item_int = _id_key(raw, ITEM, nulls)
    r_missing, rating = _number(raw, RATING, "double", nulls)
    t_missing, ts = _timestamp(raw, nulls)
    nonpositive = F.lit(kind == "implicit") & ((rating == 0) if cfg.nonpositive == "negative" else (rating <= 0))
    malformed = F.col(MALFORMED) if MALFORMED in raw.columns else F.lit(None).cast("string")
    reason = (
        F.when(malformed.isNotNull(), malformed)
        .when(user.isNull(), MISSING_USER)
        .when(item.isNull(), MISSING_ITEM)
        .when(r_missing, MISSING_RATING)
        .when(rating.isNull(), RATING_NOT_NUMBER)
        .when(F.isnan(rating), RATING_NAN)
        .when(F.abs(rating) == float("inf"), RATING_INFINITE)
        .when(F.abs(rating) > FLOAT32_MAX, RATING_TOO_LARGE)
    )
    if kind == "explicit" and cfg.rating_range is not None:
        lo, hi = cfg.rating_range
        reason = reason.when((rating < lo) | (rating > hi), f"{RATING_OUT_OF_RANGE} [{lo:g}, {hi:g}]")
    reason = reason.when(~t_missing & ts.isNull(), TIMESTAMP_NOT_NUMBER)
    if cfg.nonpositive == "reject":
        reason = reason.when(nonpositive, NONPOSITIVE)
    status = F.when(reason.isNotNull(), _REJECTED).when(nonpositive, _DROPPED).otherwise(_VALID)
    return raw.select(
        F.col(PART),
        F.col(SOURCE),
        F.col(ROW),
        _text(raw, USER).alias("_user_raw"),
        _text(raw, ITEM).alias("_item_raw"),
        _text(raw, RATING).alias("_rating_raw"),
        _text(raw, TIMESTAMP).alias("_ts_raw"),
        user.alias("_user"),
        item.alias("_item"),
        user_int.alias("_user_int"),
        item_int.alias("_item_int"),
        rating.alias("_rating"),
        ts.alias("_ts"),
        reason.alias(REASON),
        status.alias("_status"),
    )


def _rating_agg(policy: str) -> tuple[Column, Column]:
    """(rating, timestamp) of one valid (user, item) group under a duplicates policy."""
    if policy == "last":
        # Latest timestamp wins; rows without one lose to rows with one; then the last row read.
        best = F.max_by(F.struct(F.col("_rating").alias(RATING), F.col("_ts").alias(TIMESTAMP)), F.struct("_ts", ROW))
        return best[RATING], best[TIMESTAMP]
    agg = F.sum("_rating") if policy == "sum" else F.avg("_rating")  # "error" fails before use
    return agg, F.max("_ts")


def _pairs(flagged: DataFrame, policy: str) -> DataFrame:
    """One row per valid (part, user, item) with its merged rating and how many rows it merged, and
    one row per (part, status) for the other rows: everything the counts, the ID types and the
    clean ratings need, from one shuffle. Cached by the caller."""
    is_valid = F.col("_status") == _VALID
    rating, ts = _rating_agg(policy)
    return flagged.groupBy(
        PART,
        "_status",
        F.when(is_valid, F.col("_user")).alias("_u"),
        F.when(is_valid, F.col("_item")).alias("_i"),
    ).agg(
        F.count(F.lit(1)).alias("n"),
        F.min(F.col("_user_int").cast("int")).alias("ui"),
        F.min(F.col("_item_int").cast("int")).alias("ii"),
        rating.alias(RATING),
        ts.alias(TIMESTAMP),
    )


def _count(pairs: DataFrame) -> dict[int, dict[str, int | bool]]:
    """Per part: n_read, n_rejected, n_dropped, n_valid, n_clean and whether every valid user (item)
    ID is a canonical integer. One small aggregate over the cached pairs."""
    is_valid = F.col("_status") == _VALID

    def total(status: str) -> Column:
        return F.coalesce(F.sum(F.when(F.col("_status") == status, F.col("n"))), F.lit(0))

    rows = (
        pairs.groupBy(PART)
        .agg(
            F.coalesce(F.sum("n"), F.lit(0)).alias("n_read"),
            total(_REJECTED).alias("n_rejected"),
            total(_DROPPED).alias("n_dropped"),
            total(_VALID).alias("n_valid"),
            F.count(F.when(is_valid, 1)).alias("n_clean"),
            F.min(F.when(is_valid, F.col("ui"))).alias("user_int"),
            F.min(F.when(is_valid, F.col("ii"))).alias("item_int"),
        )
        .collect()
    )
    out = {}
    for row in rows:
        c: dict[str, int | bool] = {k: int(row[k]) for k in ("n_read", "n_rejected", "n_dropped", "n_valid", "n_clean")}
        c["user_int"], c["item_int"] = row["user_int"] == 1, row["item_int"] == 1
        out[int(row[PART])] = c
    return out


def _name(source: str | None) -> str:
    return os.path.basename(unquote(urlparse(source).path)) if source else "?"


def _describe(row) -> str:
    text = f"row user={row[USER]!r} item={row[ITEM]!r} rating={row[RATING]!r}"
    if row[TIMESTAMP] is not None:
        text += f" timestamp={row[TIMESTAMP]!r}"
    return f"{text}: {row[REASON]}"


def too_dirty_error(files: list[str], first: list, n_rejected: int, n_read: int, cfg: DataConfig) -> InputError:
    """The error for too many rejected rows: `files` the rejected rows' sources (any 4 of them),
    `first` the first rejected rows in read order (rows or dicts with the `rejected` columns)."""
    names = sorted(_name(f) for f in files)
    where = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return InputError(
        f"{where}: {n_rejected} of {n_read} rows rejected ({n_rejected / n_read:.1%} > "
        f"{cfg.max_bad_fraction:.1%} allowed, data.max_bad_fraction); first: "
        + "; ".join(_describe(r) for r in first[:SHOWN])
    )


def duplicate_error(files: list[str], pairs: list[tuple], n_extra: int) -> InputError:
    """The error for repeated pairs under data.duplicates = "error": `pairs` the first repeated
    (user, item, times) by first occurrence, `files` their sources."""
    where = ", ".join(sorted({_name(f) for f in files}))
    shown = ", ".join(f"(user={u!r}, item={i!r}) x{n}" for u, i, n in pairs[:SHOWN])
    return InputError(
        f"{where}: {n_extra} rows repeat an earlier (user, item) pair and data.duplicates = "
        f"'error'; first: {shown}; set data.duplicates to last, mean or sum to merge them"
    )


def _too_dirty(rejected: DataFrame, n_rejected: int, n_read: int, cfg: DataConfig) -> InputError:
    """Performance note: two small actions (first rows by _row, distinct files); failure path."""
    first = rejected.orderBy(ROW).limit(SHOWN).collect()
    files = [r[SOURCE] for r in rejected.select(SOURCE).distinct().limit(4).collect()]
    return too_dirty_error(files, first, n_rejected, n_read, cfg)


def _duplicate_error(flagged: DataFrame, n_extra: int) -> InputError:
    """Performance note: one action (a shuffle by (part, user, item)), failure path only."""
    dups = (
        flagged.where(F.col("_status") == _VALID)
        .groupBy(PART, "_user", "_item")
        .agg(F.count(F.lit(1)).alias("n"), F.min(ROW).alias("first"), F.min(SOURCE).alias("src"))
        .where(F.col("n") > 1)
    )
    first = dups.orderBy("first").limit(SHOWN).collect()
    return duplicate_error([r["src"] for r in first], [(r["_user"], r["_item"], r["n"]) for r in first], n_extra)


def clean(raw: DataFrame, cfg: DataConfig, kind: str) -> Cleaned:
    """Validate raw ratings of model kind `kind` (explicit | implicit) against `cfg`.

    Reasons a row is rejected (the first that applies): a text row with another number of fields
    than the header (read._malformed), missing user ID, missing item ID, missing rating (a field
    whose trimmed text is one of cfg.null_values is missing), rating is not a number, rating is
    NaN, rating is infinite, beyond float32's range, outside cfg.rating_range (explicit data, when
    set), timestamp is not a number
    (a non-empty value that is neither an integer, a decimal nor an ISO date-time), and for implicit
    data a rating <= 0 (rejected, or dropped and counted when cfg.nonpositive = "drop"). Explicit
    ratings may be negative. Repeated (user, item) pairs follow cfg.duplicates_policy(kind).

    `raw` may carry an int column `_part` (types.PART): rows of different parts are never merged,
    each part is held to max_bad_fraction on its own, and `ratings` keeps the column (a given
    train/test split validated in one pass). The counts are totals over the parts.

    Raises InputError when the input (or a part) has no rows, when n_rejected / n_read >
    cfg.max_bad_fraction (naming the files, the fraction and the first bad rows), when no valid row
    is left, or on duplicates with policy "error" (naming the first pairs).

    Performance note: one shuffle, by (part, status, user, item), whose result is cached: the counts,
    the ID types and the merged ratings all come from it, so the input is read and parsed once.
    `ratings` reads that cache (call `release` when done with it); `rejected` is lazy and re-reads
    `raw` when used (it is written only when some row was rejected).
    """
    if kind not in KINDS:
        raise ConfigError(f"config key model.kind: got {kind!r}, expected one of {KINDS}")
    missing = [c for c in (USER, ITEM, RATING, TIMESTAMP, SOURCE, ROW) if c not in raw.columns]
    if missing:
        raise ValueError(f"raw ratings lack columns {missing}; got {raw.columns}")
    parted = PART in raw.columns
    flagged = _flag(raw if parted else raw.withColumn(PART, F.lit(0)), cfg, kind)
    policy = cfg.duplicates_policy(kind)
    pairs = _pairs(flagged, policy).cache()
    try:
        return _checked(flagged, pairs, cfg, policy, parted)
    except BaseException:
        pairs.unpersist()
        raise


def _checked(flagged: DataFrame, pairs: DataFrame, cfg: DataConfig, policy: str, parted: bool) -> Cleaned:
    per_part = _count(pairs)
    rejected_all = flagged.where(F.col("_status") == _REJECTED)

    def rejected_rows(df: DataFrame) -> DataFrame:
        return df.select(
            F.col(SOURCE).cast("string").alias(SOURCE),
            F.col(ROW).cast("long").alias(ROW),
            F.col("_user_raw").alias(USER),
            F.col("_item_raw").alias(ITEM),
            F.col("_rating_raw").alias(RATING),
            F.col("_ts_raw").alias(TIMESTAMP),
            REASON,
        )

    if not per_part:
        raise InputError("the input has no data rows")
    for part, c in sorted(per_part.items()):
        if c["n_rejected"] / c["n_read"] > cfg.max_bad_fraction:
            raise _too_dirty(rejected_rows(rejected_all.where(F.col(PART) == part)), c["n_rejected"], c["n_read"], cfg)
    c = {k: sum(p[k] for p in per_part.values()) for k in ("n_read", "n_rejected", "n_dropped", "n_valid", "n_clean")}
    empty = [part for part, p in per_part.items() if p["n_valid"] == 0]
    if c["n_valid"] == 0 or empty:
        raise InputError(
            f"no valid rows left: {c['n_read']} read, {c['n_rejected']} rejected, "
            f"{c['n_dropped']} dropped (ratings <= 0, data.nonpositive = 'drop')"
        )
    user_int = all(p["user_int"] for p in per_part.values())
    item_int = all(p["item_int"] for p in per_part.values())
    n_duplicates = c["n_valid"] - c["n_clean"]
    if n_duplicates and policy == "error":
        raise _duplicate_error(flagged, n_duplicates)

    def typed(col: str, name: str, as_long: bool) -> Column:
        return (F.col(col).try_cast("long") if as_long else F.col(col)).alias(name)

    ratings = pairs.where(F.col("_status") == _VALID).select(
        typed("_u", USER, user_int),
        typed("_i", ITEM, item_int),
        RATING,
        F.col(TIMESTAMP).cast("long").alias(TIMESTAMP),
        *([PART] if parted else []),
    )
    counts = {
        "n_read": c["n_read"],
        "n_rejected": c["n_rejected"],
        "n_dropped": c["n_dropped"],
        "n_duplicates_merged": n_duplicates,
        "n_clean": c["n_clean"],
    }
    return Cleaned(ratings=ratings, rejected=rejected_rows(rejected_all), counts=counts, _cache=pairs)
