"""What the data stage hands on: training ratings the driver holds (Triples) or executor tasks hold
with their IDs as read (Keyed), their statistics (TrainStats) and the held-out split as driver arrays
(HeldOut: all of it, or a sample of users' rows with the rest in executor tasks, HeldRows). Both
front ends (prepare) make them; the fit, the evaluation and the reports read them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, ITEM_IDX, NO_TIME, RATING, TIMESTAMP, USER, USER_IDX
from mf_spark.data.index import IdMap


def timestamps(column: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    """A timestamp column as int64 with NO_TIME for nulls (all NO_TIME without a column)."""
    if column is None or pa.types.is_null(column.type):
        return np.full(n, NO_TIME, np.int64)
    return np.asarray(column.cast(pa.int64()).fill_null(NO_TIME).to_numpy(zero_copy_only=False), np.int64)


PACKED = "_packed"  # a binary column: each value a piece of rows as one Arrow IPC stream (`pack`)
# Rows per packed piece: Spark moves and caches a few large values instead of a row per rating (its
# row format costs more than the ratings themselves), and a piece stays far below Arrow's 2 GB.
PACK_ROWS = 1 << 20


def pack(table: pa.Table, rows: int = PACK_ROWS) -> list[bytes]:
    """`table` as pieces of at most `rows` rows, each an Arrow IPC stream."""
    out = []
    for lo in range(0, table.num_rows, rows):
        sink = pa.BufferOutputStream()
        part = table.slice(lo, rows)
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        out.append(sink.getvalue().to_pybytes())
    return out


def unpack(pieces: pa.Array | pa.ChunkedArray) -> list[pa.Table]:
    """The tables of packed pieces (`pack`), read in place."""
    return [pa.ipc.open_stream(p.as_buffer()).read_all() for p in pieces if p.is_valid]


def unpacked(batches: Iterable[pa.RecordBatch]) -> pa.Table | None:
    """The rows of the Arrow batches a mapInArrow body receives, as they are or from their PACKED
    pieces, as one table; None when there are none."""
    tables = []
    for b in batches:
        if PACKED in b.schema.names:
            tables += unpack(b.column(PACKED))
        elif b.num_rows:
            tables.append(pa.Table.from_batches([b]))
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


@dataclass(eq=False)
class Triples:
    """Training ratings held by the driver (user_idx, item_idx, rating as arrays), as the driver's
    front end (mf_spark.data.local) leaves them: the resident stage takes them from the driver, and
    `to_df` gives the DataFrame the Spark stages take (made on first use, then cached)."""

    spark: SparkSession
    u: np.ndarray  # (n,) int32
    i: np.ndarray  # (n,) int32
    r: np.ndarray  # (n,) float64
    t: np.ndarray | None = None  # (n,) int64 timestamps, types.NO_TIME where none (None: no timestamps)
    _df: DataFrame | None = None

    def to_df(self) -> DataFrame:
        if self._df is None:
            table = pa.table(
                {
                    USER_IDX: pa.array(self.u, pa.int32()),
                    ITEM_IDX: pa.array(self.i, pa.int32()),
                    RATING: pa.array(self.r, pa.float64()),
                }
            )
            self._df = self.spark.createDataFrame(table).cache()
        return self._df

    def unpersist(self) -> None:
        if self._df is not None:
            self._df.unpersist()


@dataclass(eq=False)
class Keyed:
    """Training ratings in executor tasks' cache with their IDs as read (user, item, rating, timestamp;
    typed as the maps), and the maps that index them, as the Spark front end leaves them: the resident
    stage looks the indices up as its tasks read the rows (`indices`), so no indexed copy is built for
    it; `to_df` gives the indexed DataFrame other Spark stages take (`index` makes it on first use,
    cached)."""

    rows: DataFrame
    users: IdMap
    items: IdMap
    index: Callable[[], DataFrame]
    packed: DataFrame | None = None  # the same rows as PACKED pieces (IDs as read), where the tasks keep them
    _df: DataFrame | None = None

    @property
    def spark(self) -> SparkSession:
        return self.rows.sparkSession

    def to_df(self) -> DataFrame:
        if self._df is None:
            self._df = self.index()
        return self._df

    def unpersist(self) -> None:
        if self._df is not None:
            self._df.unpersist()

    def pairs_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user_idx, item_idx) of the ratings of these users (indices): a filter on their IDs as read
        and one collect; no indexed copy is made (with `packed`, the pieces are filtered as they are
        read: only these users' rows become Spark rows)."""
        ids = self.users.ids.take(pa.array(np.asarray(users, np.int64)))
        if self.packed is None:
            t = self.rows.where(F.col(USER).isin(ids.to_pylist())).select(USER, ITEM).toArrow()
        else:
            types = pa.schema([(USER, self.users.ids.type), (ITEM, self.items.ids.type)])

            def pick(batches):
                for piece in (typed(t, types) for b in batches for t in unpack(b.column(PACKED))):
                    yield from (
                        piece.filter(pc.is_in(piece.column(USER), value_set=ids)).select([USER, ITEM]).to_batches()
                    )

            t = self.packed.mapInArrow(pick, from_arrow_schema(types)).toArrow()
        return self.users.index_of(t.column(USER)), self.items.index_of(t.column(ITEM))


def typed(table: pa.Table, types: pa.Schema) -> pa.Table:
    """`table` with the columns `types` names cast to its types (IDs read as text whose every value is
    a canonical long are int64 in the maps)."""
    for f in types:
        at = table.column_names.index(f.name)
        if table.schema.field(at).type != f.type:
            table = table.set_column(at, f.name, table.column(at).cast(f.type))
    return table


def indices(table: pa.Table | None, users: IdMap, items: IdMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user int32, item int32, rating float32) of training rows with their IDs as read (Keyed.rows'
    columns): the maps' indices, looked up where the rows are. Every ID must be in its map."""
    if table is None:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    table = typed(table, pa.schema([(USER, users.ids.type), (ITEM, items.ids.type)]))
    u, i = _positions(users, table.column(USER)), _positions(items, table.column(ITEM))
    return u, i, table.column(RATING).to_numpy().astype(np.float32, copy=False)


def _positions(ids: IdMap, values: pa.ChunkedArray) -> np.ndarray:
    """Each value's index in the map, every value being in it (ValueError otherwise). Integer IDs by
    a binary search of the sorted map, which needs no hash table of it; strings by IdMap.index_of."""
    if pa.types.is_integer(values.type) and ids.ids.type == pa.int64():
        keys = ids.ids.to_numpy()
        v = np.asarray(values.to_numpy(), np.int64)
        at = np.searchsorted(keys, v)
        found = at < keys.size
        found[found] = keys[at[found]] == v[found]
        idx = at.astype(np.int32)
    else:
        idx = ids.index_of(values)
        found = idx >= 0
    if not found.all():
        raise ValueError(f"a training rating's {ids.name} ID is missing from the map built from those ratings")
    return idx


def rated(ratings: DataFrame | Keyed) -> DataFrame:
    """A DataFrame of Spark-held training ratings with their rating column, for what needs no
    indices (Keyed: its rows as read, so that no indexed copy is made for it)."""
    return ratings.rows if isinstance(ratings, Keyed) else ratings


def session_of(ratings: "DataFrame | Triples | Keyed") -> SparkSession:
    return ratings.spark if isinstance(ratings, (Triples, Keyed)) else ratings.sparkSession


def as_df(ratings: "DataFrame | Triples | Keyed") -> DataFrame:
    return ratings.to_df() if isinstance(ratings, (Triples, Keyed)) else ratings


# TrainStats keeps the training ratings' distinct values and their counts when there are at most this
# many (star ratings): the report's histogram then needs no pass over the ratings.
FEW_VALUES = 64


@dataclass(frozen=True)
class TrainStats:
    """Count, mean and range of the training ratings, how many are <= 0, and (when there are few)
    their distinct values with the count of each, ascending."""

    n: int
    mean: float
    lo: float
    hi: float
    n_nonpositive: int = 0
    values: tuple[tuple[float, int], ...] | None = field(default=None, compare=False)


def value_counts(r: np.ndarray, limit: int = FEW_VALUES) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct values of `r` (ascending) and how many times each occurs, or None when there are
    more than `limit`; in linear time: a strided sample settles that there are many without sorting
    every value."""
    values = np.unique(r[:: max(1, r.size // 100_000)])
    if values.size > limit:
        return None
    pos = np.minimum(np.searchsorted(values, r), max(values.size - 1, 0))
    if values.size == 0 or not np.array_equal(values[pos], r):  # values the sample missed
        values = np.unique(r)
        if values.size > limit:
            return None
        pos = np.searchsorted(values, r)
    return values, np.bincount(pos, minlength=values.size).astype(np.int64)


def train_stats(train: DataFrame | Triples | Keyed) -> TrainStats:
    """Count, mean and range of the training ratings. Performance note: one aggregate job (none for
    ratings the driver holds)."""
    if isinstance(train, Triples):
        if not train.r.size:
            raise InputError("the training split is empty: nothing to fit")
        r = train.r
        few = value_counts(r)
        values = None if few is None else tuple(zip(few[0].tolist(), few[1].tolist()))
        return TrainStats(int(r.size), float(r.mean()), float(r.min()), float(r.max()), int(np.sum(r <= 0)), values)
    row = (
        rated(train)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.avg(RATING).alias("mean"),
            F.min(RATING).alias("lo"),
            F.max(RATING).alias("hi"),
            F.count(F.when(F.col(RATING) <= 0, 1)).alias("nonpositive"),
        )
        .first()
    )
    if not row["n"]:
        raise InputError("the training split is empty: nothing to fit")
    return TrainStats(int(row["n"]), float(row["mean"]), float(row["lo"]), float(row["hi"]), int(row["nonpositive"]))


@dataclass(frozen=True)
class HeldRows:
    """Held-out rows where executor tasks keep them: packed pieces (IDs as read), every user's rows
    in one partition, so that a task holds whole users."""

    packed: DataFrame  # one PACKED column
    types: pa.Schema  # user, item as the ID maps type them
    n: int


def typed_pieces(batches: Iterable[pa.RecordBatch], types: pa.Schema) -> Iterator[pa.Table]:
    """The tables of the PACKED pieces a mapInArrow body receives, typed as `types`."""
    for b in batches:
        for t in unpack(b.column(PACKED)):
            yield typed(t, types)


@dataclass(frozen=True)
class HeldOut:
    """The test split as driver arrays; -1 marks a user or item never seen in train (cold).

    With `rest` the arrays hold only the rows of a seeded sample of the users (more rows were held out
    than eval.driver_rows): they serve the per-iteration history and the tune job's validation, and
    the final metrics run where `rest` keeps every row (evaluate.in_tasks)."""

    u: np.ndarray  # (m,) int32
    i: np.ndarray  # (m,) int32
    r: np.ndarray  # (m,) float64
    t: np.ndarray | None = None  # (m,) int64 timestamps, types.NO_TIME where none (for day biases)
    rest: HeldRows | None = None
    all_cold: int | None = None  # with `rest`: the cold rows among all of them

    @property
    def whole(self) -> bool:
        return self.rest is None

    @property
    def n(self) -> int:
        return int(self.r.size) if self.rest is None else self.rest.n

    @property
    def n_cold(self) -> int:
        if self.rest is not None:
            return int(self.all_cold)
        return int(np.count_nonzero((self.u < 0) | (self.i < 0)))


def heldout_of(test: pa.Table, users: IdMap, items: IdMap) -> HeldOut:
    """HeldOut of test rows the driver holds (columns user, item, rating[, timestamp])."""
    ts = test.column(TIMESTAMP) if TIMESTAMP in test.column_names else None
    return HeldOut(
        users.index_of(test.column(USER)),
        items.index_of(test.column(ITEM)),
        test.column(RATING).to_numpy().astype(np.float64),
        timestamps(ts, test.num_rows),
    )
