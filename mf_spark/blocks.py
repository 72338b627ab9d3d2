"""Rating blocks: the ratings of one side's block as CSR arrays, built once from Arrow and cached.

Row u belongs to block u % num_blocks. Example, 2 user blocks, ratings (user_idx, item_idx, r):

    (0, 1, 4.0) (0, 3, 2.0) (1, 0, 5.0) (2, 0, 3.0) (2, 2, 1.0)

    user block 0: row_ids [0, 2]   indptr [0, 2, 4]   cols [1, 3, 0, 2]   values [4, 2, 3, 1]
    user block 1: row_ids [1]      indptr [0, 1]      cols [0]            values [5]

The item side is built from the same ratings with the roles swapped. The blocks are built from Arrow
batches (groupBy(block).applyInArrow: no per-rating Python objects), then kept as a cached RDD of
CsrBlock records, one block per partition, so each half-step is one plain RDD job: no SQL planning
and no Arrow round trip per iteration (measured: 0.07-0.10 s per half-step on ml-latest-small instead
of 0.16-0.26 s through mapInArrow over a cached DataFrame).
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.types import ITEM_IDX, RATING, USER_IDX

BLOCK_SCHEMA = ("block int, n_rows int, nnz long, row_ids binary, indptr binary, cols binary, "
                "values binary")
BLOCK_ARROW = pa.schema([("block", pa.int32()), ("n_rows", pa.int32()), ("nnz", pa.int64()),
                         ("row_ids", pa.binary()), ("indptr", pa.binary()), ("cols", pa.binary()),
                         ("values", pa.binary())])
SIDE_COLUMNS = {"user": (USER_IDX, ITEM_IDX), "item": (ITEM_IDX, USER_IDX)}


@dataclass(frozen=True, slots=True)
class CsrBlock:
    """Ratings of one block, one row per local user (or item)."""
    block: int
    row_ids: np.ndarray   # (n_rows,) int32, global indices, ascending
    indptr: np.ndarray    # (n_rows + 1,) int64
    cols: np.ndarray      # (nnz,) int32, global indices on the other side, ascending within a row
    values: np.ndarray    # (nnz,) float32

    def __post_init__(self) -> None:
        if self.indptr.shape != (self.row_ids.size + 1,) or self.cols.shape != self.values.shape:
            raise ValueError(f"bad block {self.block}: {self.row_ids.size} rows, indptr "
                             f"{self.indptr.shape}, cols {self.cols.shape}, values {self.values.shape}")
        if self.indptr.size and (self.indptr[0] != 0 or self.indptr[-1] != self.cols.size):
            raise ValueError(f"bad block {self.block}: indptr spans {self.indptr[0]}..{self.indptr[-1]}"
                             f" but there are {self.cols.size} entries")

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    @staticmethod
    def from_triples(block: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> "CsrBlock":
        """CSR from unsorted (row, col, value) triples of one block."""
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        row_ids, starts = np.unique(rows, return_index=True)
        indptr = np.append(starts, rows.size).astype(np.int64)
        return CsrBlock(block, row_ids.astype(np.int32), indptr, cols.astype(np.int32),
                        values.astype(np.float32))

    def to_record(self) -> dict:
        return {"block": self.block, "n_rows": int(self.row_ids.size), "nnz": int(self.cols.size),
                "row_ids": self.row_ids.tobytes(), "indptr": self.indptr.tobytes(),
                "cols": self.cols.tobytes(), "values": self.values.tobytes()}

    @staticmethod
    def from_record(rec: dict) -> "CsrBlock":
        return CsrBlock(int(rec["block"]), np.frombuffer(rec["row_ids"], dtype=np.int32),
                        np.frombuffer(rec["indptr"], dtype=np.int64),
                        np.frombuffer(rec["cols"], dtype=np.int32),
                        np.frombuffer(rec["values"], dtype=np.float32))


def _build_one(num_blocks: int):
    def build(table: pa.Table) -> pa.Table:
        rows = table.column(0).to_numpy()
        blk = CsrBlock.from_triples(int(rows[0]) % num_blocks, rows, table.column(1).to_numpy(),
                                    table.column(2).to_numpy())
        return pa.Table.from_pylist([blk.to_record()], schema=BLOCK_ARROW)
    return build


def _own_copy(row) -> tuple[int, CsrBlock]:
    blk = CsrBlock.from_record(row.asDict())
    return blk.block, CsrBlock(blk.block, blk.row_ids.copy(), blk.indptr.copy(), blk.cols.copy(),
                               blk.values.copy())


def build_blocks(ratings: DataFrame, side: str, num_blocks: int) -> RDD:
    """One CSR block per `side` block (index % num_blocks), built from Arrow batches.

    `ratings` has user_idx, item_idx (int) and rating. Returns an RDD of CsrBlock, block b in
    partition b. Performance note: one shuffle of the ratings (groupBy block, Arrow), one small
    shuffle of the finished blocks (one record each) to place them; the result is persisted (memory,
    spilling to disk) and materialized by one count, and every iteration reuses it.
    """
    if side not in SIDE_COLUMNS:
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    row_col, other_col = SIDE_COLUMNS[side]
    triples = ratings.select(F.col(row_col).cast("int").alias("row"), F.col(other_col).cast("int").alias("col"),
                             F.col(RATING).cast("float").alias("value"),
                             (F.col(row_col) % F.lit(num_blocks)).cast("int").alias("block"))
    built = triples.groupBy("block").applyInArrow(_build_one(num_blocks), BLOCK_SCHEMA)
    blocks = (built.rdd.map(_own_copy).partitionBy(num_blocks, lambda b: b).values()
              .persist(StorageLevel.MEMORY_AND_DISK))
    blocks.count()
    return blocks


def row_counts(blocks: RDD, n_rows: int) -> np.ndarray:
    """Ratings per global row, (n_rows,) int64, from the cached blocks (one small collect).

    Raises ValueError when a block names a row outside 0..n_rows-1.
    """
    counts = np.zeros(n_rows, dtype=np.int64)
    for ids, n in blocks.map(lambda b: (b.row_ids, b.counts)).collect():
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            raise ValueError(f"block rows {ids.min()}..{ids.max()} outside 0..{n_rows - 1}")
        counts[ids] = n
    return counts
