"""Dense int32 indices for IDs of any type: a sorted, persisted map, the same for the same IDs.

    ids (sorted, distinct)   "u07"  "u1"  "u10"  "u2"       index = position in `ids`
    idx                        0      1     2      3

Strings sort by their UTF-8 bytes ("u10" < "u2"), integers numerically; either way the map depends
only on the set of IDs, never on partitioning or read order. The driver holds the whole map
(8 bytes per integer ID, ~ID length + 4 bytes per string ID), which also lets `encode` broadcast it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType

from mf_spark.core.errors import ModelError
from mf_spark.core.types import ITEM, ITEM_IDX, RATING, TIMESTAMP, USER, USER_IDX
from mf_spark.data.validate import quoted

MAX_IDS = 2**31 - 1  # indices are int32
MAX_ID_TEXT_BYTES = 2**31 - 1  # string IDs are held as Arrow strings (int32 offsets)
ID, IDX = "id", "idx"  # columns of the saved map
NAME_KEY = "mf_spark.id_name"  # Parquet column metadata: the name the map was fitted on
_SPARK_TYPES = {pa.int64(): LongType(), pa.string(): StringType()}


def _normalize(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """int8..int64 -> int64, (large_)string -> string, one chunk."""
    if isinstance(ids, pa.ChunkedArray):
        if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
            ids = ids.cast(pa.large_string())  # combining string chunks past 2 GiB would overflow
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64())
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        text_bytes = pc.sum(pc.binary_length(ids)).as_py() or 0
        if text_bytes > MAX_ID_TEXT_BYTES:
            raise TypeError(
                f"the IDs' text is {text_bytes} bytes; an ID map holds at most "
                f"{MAX_ID_TEXT_BYTES} bytes of ID text (int32 offsets): map the IDs to integers "
                f"(e.g. with a hash or a dictionary table) before training"
            )
        return ids.cast(pa.string())
    raise TypeError(f"IDs must be integers (kept as int64) or strings, got Arrow type {ids.type}")


@dataclass(frozen=True)
class IdMap:
    """Sorted distinct IDs of one column; the index of an ID is its position."""

    ids: pa.Array  # (n,) int64 or string, strictly ascending, no nulls
    name: str  # column the map was fitted on ("user", "item", ...)

    def __post_init__(self) -> None:
        try:  # other integer widths, large_string and chunked arrays are accepted and normalized
            object.__setattr__(self, "ids", _normalize(self.ids))
        except TypeError as exc:
            raise ValueError(f"IdMap {self.name!r}: {exc}") from None
        if self.ids.null_count:
            raise ValueError(f"IdMap {self.name!r}: {self.ids.null_count} null IDs")
        if len(self.ids) > MAX_IDS:
            raise ValueError(f"IdMap {self.name!r}: {len(self.ids)} IDs exceed the int32 range")
        if len(self.ids) > 1:
            ascending = pc.all(pc.less(self.ids[:-1], self.ids[1:])).as_py()
            if not ascending:
                raise ValueError(f"IdMap {self.name!r}: ids are not sorted and distinct")

    @property
    def size(self) -> int:
        """Number of distinct IDs n; indices are 0..n-1."""
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, values: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        """(m,) int32 indices of `values` on the driver, -1 for unknown or null IDs.

        Vectorized with `pc.index_in` (a hash of `ids`, O(n + m)). As in `encode`, when the values
        and the map differ in type and either is a string, IDs compare as text ("007" is not 7);
        other values are cast to the map's type (TypeError when they cannot be).
        """
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        ids = self.ids
        if arr.type != ids.type and (
            pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or ids.type == pa.string()
        ):
            arr, ids = arr.cast(pa.string()), ids.cast(pa.string())
        try:
            arr = arr.cast(ids.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TypeError(
                f"IdMap {self.name!r}: cannot look up {arr.type} values in {self.ids.type} IDs: {exc}"
            ) from None
        found = pc.index_in(arr, value_set=ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def _table(self, id_col: str, idx_col: str) -> pa.Table:
        return pa.table({id_col: self.ids, idx_col: pa.array(np.arange(self.size, dtype=np.int32))})

    def to_df(self, spark: SparkSession, idx_col: str) -> DataFrame:
        """DataFrame [`name` (long | string), `idx_col` int], one row per ID, made on the driver."""
        return spark.createDataFrame(self._table(self.name, idx_col))

    def encode(self, df: DataFrame, col: str, idx_col: str) -> DataFrame:
        """df plus `idx_col` (int, null for IDs not in the map); `col` is kept, row order kept.

        When df[col] and the map differ in type, IDs compare as text if either side is a string
        ("007" stays distinct from 7, and no string is ever cast to a number, which fails under
        ANSI SQL), else numerically.

        Performance note: a broadcast hash join; the map is shipped once, `df` is not shuffled.
        """
        if idx_col in df.columns:
            raise ValueError(f"encode: {idx_col!r} is already a column of {df.columns}")
        dtype = df.schema[col].dataType
        side = lambda c: F.col("_l." + quoted(c))
        left, right = side(col), F.col("_r._id")
        if isinstance(dtype, StringType) or self.ids.type == pa.string():
            left, right = left.cast("string"), right.cast("string")
        elif dtype != _SPARK_TYPES[self.ids.type]:
            right = right.try_cast(dtype)
        m = F.broadcast(df.sparkSession.createDataFrame(self._table("_id", "_idx")))
        joined = df.alias("_l").join(m.alias("_r"), left == right, "left")
        return joined.select(*[side(c) for c in df.columns], F.col("_r._idx").alias(idx_col))

    def decode(self, df: DataFrame, idx_col: str, col: str) -> DataFrame:
        """df with `idx_col` replaced, in place, by the original ID `col` (null if unknown).

        Performance note: a broadcast hash join; `df` is not shuffled.
        """
        if col in df.columns:
            raise ValueError(f"decode: {col!r} is already a column of {df.columns}")
        m = F.broadcast(df.sparkSession.createDataFrame(self._table(col, "_idx")))
        joined = df.alias("_l").join(m.alias("_r"), F.col(f"_l.`{idx_col}`") == F.col("_r._idx"), "left")
        cols = [F.col(f"_r.`{col}`") if c == idx_col else F.col(f"_l.`{c}`") for c in df.columns]
        return joined.select(*cols)

    def save(self, spark: SparkSession, path: str) -> None:
        """Write the map as Parquet (columns id, idx) to `path`, replacing what is there.

        Performance note: one Spark write job, one file.
        """
        df = spark.createDataFrame(self._table(ID, IDX))
        df = df.select(F.col(ID).alias(ID, metadata={NAME_KEY: self.name}), IDX)
        df.coalesce(1).write.mode("overwrite").parquet(path)

    @classmethod
    def load(cls, spark: SparkSession, path: str, name: str | None = None) -> IdMap:
        """Read a map written by `save`; `name` defaults to the name it was saved with.

        Raises ModelError naming `path` when it is missing, lacks the id/idx columns, or its idx
        column is not exactly 0..n-1 over strictly ascending IDs.
        Performance note: one action (the whole map is collected to the driver as Arrow).
        """
        try:
            df = spark.read.parquet(path)
        except AnalysisException as exc:
            raise ModelError(f"ID map {path} cannot be read: {exc}") from None
        if ID not in df.columns or IDX not in df.columns:
            raise ModelError(f"ID map {path}: expected columns id, idx; found {df.columns}")
        saved = df.schema[ID].metadata.get(NAME_KEY, ID)
        table = df.select(ID, IDX).toArrow()
        idx = table.column(IDX)
        if idx.null_count or not pa.types.is_integer(idx.type):
            raise ModelError(
                f"ID map {path}: idx must be non-null integers, got {idx.type} with {idx.null_count} nulls"
            )
        table = table.sort_by(IDX)
        got = table.column(IDX).to_numpy()
        if not np.array_equal(got, np.arange(len(got))):
            bad = int(np.flatnonzero(got != np.arange(len(got)))[0])
            raise ModelError(
                f"ID map {path}: idx must be exactly 0..{len(got) - 1}; position {bad} holds {int(got[bad])}"
            )
        try:
            return cls(ids=_normalize(table.column(ID)), name=name or saved)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"ID map {path}: {exc}") from None


def _check_id_column(df: DataFrame, col: str) -> None:
    dtype = df.schema[col].dataType
    if not isinstance(dtype, (LongType, IntegerType, StringType)):
        raise TypeError(f"fit: column {col!r} must hold integer or string IDs, got {dtype.simpleString()}")


def sorted_map(ids: pa.Array | pa.ChunkedArray, name: str) -> IdMap:
    """IdMap of distinct, non-null values in any order (sorted here)."""
    ids = _normalize(ids)
    return IdMap(ids=ids.take(pc.sort_indices(ids)), name=name)


def fit(df: DataFrame, col: str) -> IdMap:
    """IdMap of the distinct non-null values of df[col] (LongType/IntegerType or StringType).

    Performance note: one action, a shuffle for `distinct`, then the distinct IDs are collected to
    the driver as Arrow and sorted there.
    """
    _check_id_column(df, col)
    return sorted_map(df.select(col).where(F.col(col).isNotNull()).distinct().toArrow().column(0), col)


def fit_columns(df: DataFrame, cols: tuple[str, ...]) -> tuple[IdMap, ...]:
    """`fit` of several columns in one action: the distinct values of every column, as text tagged
    with the column, are collected together and split on the driver (integer columns go back to
    int64 there: the text of an integer round-trips exactly).

    Performance note: one action (one distinct over the union of the columns), not one per column.
    """
    for col in cols:
        _check_id_column(df, col)
    tagged = [
        df.select(F.lit(n).alias("_col"), F.col(col).cast("string").alias("_id")).where(F.col(col).isNotNull())
        for n, col in enumerate(cols)
    ]
    union = tagged[0]
    for t in tagged[1:]:
        union = union.unionByName(t)
    table = union.distinct().toArrow()
    which = table.column("_col").to_numpy()
    out = []
    for n, col in enumerate(cols):
        ids = table.column("_id").filter(pa.array(which == n))
        if not isinstance(df.schema[col].dataType, StringType):
            ids = ids.cast(pa.int64())
        out.append(sorted_map(ids, col))
    return tuple(out)


@dataclass(frozen=True)
class EncodedSplit:
    users: IdMap
    items: IdMap
    train_idx: DataFrame  # user_idx, item_idx, rating[, timestamp]; cached


def encode_split(train: DataFrame) -> EncodedSplit:
    """ID maps fitted on `train` (columns user, item, rating) and `train` encoded with them (held-out
    rows are looked up apart: front.frame_held_out).

    Performance note: one action (the distinct users and items, `fit_columns`) on `train` (cache it,
    or what it filters); `train_idx` is cached and materialized by the first action that uses it.
    """
    users, items = fit_columns(train, (USER, ITEM))
    keep = [USER_IDX, ITEM_IDX, RATING] + ([TIMESTAMP] if TIMESTAMP in train.columns else [])  # days.DayFitter's
    train_idx = items.encode(users.encode(train, USER, USER_IDX), ITEM, ITEM_IDX).select(*keep).cache()
    return EncodedSplit(users, items, train_idx)


def load(spark: SparkSession, path: str, name: str | None = None) -> IdMap:
    """Module-level alias of `IdMap.load`."""
    return IdMap.load(spark, path, name)
