"""Rating blocks: the ratings of one side's block as CSR arrays, built once from Arrow and cached.

Row u belongs to block u % num_blocks. Example, 2 user blocks, ratings (user_idx, item_idx, r):

    (0, 1, 4.0) (0, 3, 2.0) (1, 0, 5.0) (2, 0, 3.0) (2, 2, 1.0)

    user block 0: row_ids [0, 2]   indptr [0, 2, 4]   cols [1, 3, 0, 2]   values [4, 2, 3, 1]
    user block 1: row_ids [1]      indptr [0, 1]      cols [0]            values [5]

The item side is built from the same ratings with the roles swapped. Both sides are built in one pass
over Arrow batches (no per-rating Python objects), then kept as cached RDDs of CsrBlock records, one
block per partition, so each half-step is one plain RDD job: no SQL planning and no Arrow round trip
per iteration, markedly faster than mapInArrow over a cached DataFrame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.core import session
from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX
from mf_spark.kernels.solve import entry_counts


@dataclass(frozen=True, slots=True)
class CsrBlock:
    """Ratings of one block, one row per local user (or item)."""

    block: int
    row_ids: np.ndarray  # (n_rows,) int32, global indices, ascending
    indptr: np.ndarray  # (n_rows + 1,) int64
    cols: np.ndarray  # (nnz,) int32, global indices on the other side, ascending within a row
    values: np.ndarray  # (nnz,) float32

    def __post_init__(self) -> None:
        if self.indptr.shape != (self.row_ids.size + 1,) or self.cols.shape != self.values.shape:
            raise ValueError(
                f"bad block {self.block}: {self.row_ids.size} rows, indptr "
                f"{self.indptr.shape}, cols {self.cols.shape}, values {self.values.shape}"
            )
        if self.indptr.size and (self.indptr[0] != 0 or self.indptr[-1] != self.cols.size):
            raise ValueError(
                f"bad block {self.block}: indptr spans {self.indptr[0]}..{self.indptr[-1]}"
                f" but there are {self.cols.size} entries"
            )

    @property
    def counts(self) -> np.ndarray:
        """(2, n_rows) int64: each row's entries, and its entries > 0 (kernels.solve.entry_counts)."""
        return entry_counts(self.indptr, self.values)

    @staticmethod
    def from_triples(block: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> "CsrBlock":
        """CSR from unsorted (row, col, value) triples of one block (indices >= 0); equal (row, col)
        pairs keep their input order.

        One sort of int64 keys row | col | position, packed (the position makes it stable and gives
        the permutation for the values): much faster than a stable argsort of row << 32 | col,
        whose argsort costs far more than a plain sort. Where the three do not fit in 63 bits (a
        block of 2^31 ratings, or indices near 2^31), that stable argsort.
        """
        n = rows.size
        if n == 0:
            return CsrBlock(
                block, np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
            )
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
        pos_bits, col_bits = int(n - 1).bit_length(), int(cols.max()).bit_length()
        if int(rows.max()).bit_length() + col_bits + pos_bits <= 63:
            key = np.sort((rows << (col_bits + pos_bits)) | (cols << pos_bits) | np.arange(n, dtype=np.int64))
            order = key & ((1 << pos_bits) - 1)
            rows, cols = key >> (col_bits + pos_bits), (key >> pos_bits) & ((1 << col_bits) - 1)
        else:
            order = np.argsort((rows << 32) | cols, kind="stable")
            rows, cols = rows[order], cols[order]
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        indptr = np.append(starts, n).astype(np.int64)
        return CsrBlock(
            block, rows[starts].astype(np.int32), indptr, cols.astype(np.int32), values[order].astype(np.float32)
        )


PARTIAL_SCHEMA = "side int, block int, rows binary, cols binary, values binary"
SIDE_CODES = {"user": 0, "item": 1}


def batch_table(batches) -> pa.Table | None:
    """The non-empty Arrow batches a mapInArrow body receives, as one table; None when there are none."""
    parts = [b for b in batches if b.num_rows]
    return pa.Table.from_batches(parts) if parts else None


def triples(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user int32, item int32, rating float32) arrays of the Arrow batches a mapInArrow body receives."""
    t = batch_table(batches)
    if t is None:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return (
        t.column(USER_IDX).to_numpy().astype(np.int32, copy=False),
        t.column(ITEM_IDX).to_numpy().astype(np.int32, copy=False),
        t.column(RATING).to_numpy().astype(np.float32, copy=False),
    )


def buckets(keys: np.ndarray, n: int) -> list[np.ndarray]:
    """Positions of each key 0..n-1 in `keys`, in input order, never a loop over entries: one mask
    per key for up to MASK_BUCKETS keys, else one stable sort (of int16 keys where they fit: numpy
    sorts those by radix, faster than int32 ones)."""
    if n <= MASK_BUCKETS:
        return [np.flatnonzero(keys == b) for b in range(n)]
    order = np.argsort(keys.astype(np.int16) if n < 2**15 else keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    return [order[bounds[b] : bounds[b + 1]] for b in range(n)]


# Up to this many keys a pass per key beats the stable sort.
MASK_BUCKETS = 8


def side_blocks(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_blocks: int) -> dict[int, CsrBlock]:
    """The non-empty CsrBlocks of one side's triples, row r in block r % n_blocks (build_all's
    layout); the triples are not copied when they all fall in one block."""
    out = {}
    for b, sel in enumerate(buckets(rows % n_blocks, n_blocks)):
        if sel.size == rows.size:
            out[b] = CsrBlock.from_triples(b, rows, cols, values)
        elif sel.size:
            out[b] = CsrBlock.from_triples(b, rows[sel], cols[sel], values[sel])
    return out


def _partials(num_blocks: dict[str, int]):
    """mapInArrow body: the (row, col, value) triples of one input partition, split per side and block."""

    def split(batches):
        u, i, v = triples(batches)
        if not u.size:
            return
        for side, nb in num_blocks.items():
            rows, cols = (u, i) if side == "user" else (i, u)
            out = []
            for b, sel in enumerate(buckets(rows % nb, nb)):  # a loop over blocks, never over rows
                if sel.size:
                    out.append(
                        {
                            "side": SIDE_CODES[side],
                            "block": b,
                            "rows": rows[sel].tobytes(),
                            "cols": cols[sel].tobytes(),
                            "values": v[sel].tobytes(),
                        }
                    )
            yield pa.RecordBatch.from_pylist(out, schema=_PARTIAL_ARROW)

    return split


_PARTIAL_ARROW = pa.schema(
    [("side", pa.int32()), ("block", pa.int32()), ("rows", pa.binary()), ("cols", pa.binary()), ("values", pa.binary())]
)


def rating_columns(ratings: DataFrame) -> DataFrame:
    """user_idx, item_idx as int and rating as float: the ratings as blocks store them."""
    return ratings.select(
        F.col(USER_IDX).cast("int").alias(USER_IDX),
        F.col(ITEM_IDX).cast("int").alias(ITEM_IDX),
        F.col(RATING).cast("float").alias(RATING),
    )


def pieces_frame(ratings: DataFrame, num_blocks: dict[str, int]) -> DataFrame:
    """side, block, rows, cols, values (packed bytes): the pieces of every input partition.

    The ratings cross from the JVM to Python once, as Arrow, whatever the number of sides: one
    mapInArrow per core splits each input partition into per-(side, block) packed int32/float32 arrays.
    """
    for side in num_blocks:
        if side not in SIDE_CODES:
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    # One Python task per core, whatever the input's partitioning: a per-user split leaves
    # spark.sql.shuffle.partitions (200) partitions, and each costs a Python worker round trip.
    # (A round-robin repartition to balance fewer, uneven partitions cost more than it gained.)
    ratings = ratings.coalesce(session.parallelism(ratings.sparkSession))
    return rating_columns(ratings).mapInArrow(_partials(num_blocks), PARTIAL_SCHEMA)


def pieces(ratings: DataFrame, num_blocks: dict[str, int]) -> RDD:
    """((side code, block), (rows, cols, values) packed bytes): `pieces_frame` as a pair RDD."""
    return pieces_frame(ratings, num_blocks).rdd.map(
        lambda r: ((r["side"], r["block"]), (bytes(r["rows"]), bytes(r["cols"]), bytes(r["values"])))
    )


def merge(key: tuple[int, int], parts) -> CsrBlock:
    """The CsrBlock of (side code, block) from its packed pieces."""
    parts = list(parts)
    rows = np.concatenate([np.frombuffer(p[0], dtype=np.int32) for p in parts])
    cols = np.concatenate([np.frombuffer(p[1], dtype=np.int32) for p in parts])
    vals = np.concatenate([np.frombuffer(p[2], dtype=np.float32) for p in parts])
    return CsrBlock.from_triples(key[1], rows, cols, vals)


def merge_all(keyed_pieces) -> dict[tuple[int, int], CsrBlock]:
    """Every (side code, block) -> CsrBlock from an iterable of (key, piece) in any order."""
    grouped: dict[tuple[int, int], list] = {}
    for key, piece in keyed_pieces:
        grouped.setdefault(tuple(key), []).append(piece)
    return {key: merge(key, parts) for key, parts in sorted(grouped.items())}


def _only_block(b: int, merged: dict[tuple[int, int], CsrBlock]) -> CsrBlock:
    """Partition b's block; an empty one when no rating falls in it (every partition holds one record)."""
    if len(merged) > 1:
        raise ValueError(f"partition {b} holds blocks {sorted(merged)}")
    if merged:
        return next(iter(merged.values()))
    return CsrBlock(b, np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))


def build_all(ratings: DataFrame, num_blocks: dict[str, int]) -> dict[str, RDD]:
    """CSR blocks of each side in `num_blocks` ({"user": nu, "item": ni}, either may be omitted).

    `ratings` has user_idx, item_idx (int) and rating. Returns, per side, an RDD of CsrBlock with
    block b in partition b, exactly one record per partition (row r in block r % n). Performance note:
    one Arrow pass (see `pieces`), persisted while each side is placed by one shuffle of the packed
    pieces (partitionBy block) and merged in place; each side is persisted (memory, spilling to disk)
    and materialized by one count. Every iteration reuses it.
    """
    packed = pieces(ratings, num_blocks).persist(StorageLevel.MEMORY_AND_DISK)
    out = {}
    try:
        for side, nb in num_blocks.items():
            code = SIDE_CODES[side]
            out[side] = (
                packed.filter(lambda kv, c=code: kv[0][0] == c)
                .map(lambda kv: (kv[0][1], kv))
                .partitionBy(nb, lambda b: b)
                .mapPartitionsWithIndex(
                    lambda b, it: [_only_block(b, merge_all(kv for _, kv in it))], preservesPartitioning=True
                )
                .persist(StorageLevel.MEMORY_AND_DISK)
            )
        for rdd in out.values():
            rdd.count()
    finally:
        packed.unpersist()
    return out


def build_blocks(ratings: DataFrame, side: str, num_blocks: int) -> RDD:
    """The blocks of one side; see build_all."""
    return build_all(ratings, {side: num_blocks})[side]


def row_counts(blocks: RDD, n_rows: int) -> np.ndarray:
    """`gather_counts` of the cached blocks (one small collect)."""
    return gather_counts(n_rows, blocks.map(lambda b: (b.row_ids, b.counts)).collect())


def gather_counts(n_rows: int, parts) -> np.ndarray:
    """The `CsrBlock.counts` of every global row, (2, n_rows) int64 (0 for rows no block holds), from
    each block's (row_ids, counts). Raises ValueError when a block names a row outside 0..n_rows-1
    or its counts do not match its rows."""
    counts = np.zeros((2, n_rows), dtype=np.int64)
    for ids, n in parts:
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            raise ValueError(f"block rows {ids.min()}..{ids.max()} outside 0..{n_rows - 1}")
        if n.shape != (2, ids.size):
            raise ValueError(f"block counts of shape {n.shape} for {ids.size} rows")
        counts[:, ids] = n
    return counts
