"""Rating blocks in a cached DataFrame, one Spark job per half-step, the DataFrame API only.

What Spark Connect leaves a client: no SparkContext, no RDDs, no broadcasts, and executors that may
not reach the client's process. The blocks are rows of a cached DataFrame (side, block and the CSR
arrays as bytes), built by mapInArrow and a grouped applyInArrow; every half-step sends the fixed
side with the task closure of one mapInArrow over the solved side's blocks and collects the solved
rows through Arrow:

    client: Y (+ biases, Gramian) --closure--> block rows of side "user" --mapInArrow--> rows, X --toArrow--> X

The same kernels as every engine (kernels.solve.solve_block), so the same factors. Chosen by
model.exchange = auto on a Connect session for more training ratings than model.driver_max_ratings
(fewer are fitted in the client: engines.held), or by model.exchange = frames.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.als.blocks import SIDE_CODES, CsrBlock, gather_counts, pieces_frame
from mf_spark.als.halfstep import Engine, assemble, fixed_side, solve_rows
from mf_spark.core import session
from mf_spark.kernels.solve import SolveSpec

BLOCKS = "side int, block int, row_ids binary, indptr binary, cols binary, values binary"
SOLVED = "row_ids binary, factors binary, bias binary, losses binary"
COUNTED = "row_ids binary, counts binary"


def _merged(pieces: pa.Table) -> pa.Table:
    """applyInArrow body: one (side, block)'s packed pieces as its CSR block's row."""
    rows = np.concatenate([np.frombuffer(b, np.int32) for b in pieces.column("rows").to_pylist()])
    cols = np.concatenate([np.frombuffer(b, np.int32) for b in pieces.column("cols").to_pylist()])
    vals = np.concatenate([np.frombuffer(b, np.float32) for b in pieces.column("values").to_pylist()])
    side, block = pieces.column("side")[0].as_py(), pieces.column("block")[0].as_py()
    b = CsrBlock.from_triples(block, rows, cols, vals)
    return pa.table(
        {
            "side": pa.array([side], pa.int32()),
            "block": pa.array([block], pa.int32()),
            "row_ids": [b.row_ids.tobytes()],
            "indptr": [b.indptr.tobytes()],
            "cols": [b.cols.tobytes()],
            "values": [b.values.tobytes()],
        }
    )


def _block(row: dict) -> CsrBlock:
    return CsrBlock(
        row["block"],
        np.frombuffer(row["row_ids"], np.int32),
        np.frombuffer(row["indptr"], np.int64),
        np.frombuffer(row["cols"], np.int32),
        np.frombuffer(row["values"], np.float32),
    )


def _solve(batches, f, spec: SolveSpec):
    """mapInArrow body: every block of the batches solved against the fixed side `f` (halfstep.Fixed)."""
    for batch in batches:
        out = {"row_ids": [], "factors": [], "bias": [], "losses": []}
        for row in batch.to_pylist():
            ids, factors, bias, losses = solve_rows(_block(row), f, spec)
            out["row_ids"].append(ids.tobytes())
            out["factors"].append(np.ascontiguousarray(factors, np.float32).tobytes())
            out["bias"].append(None if bias is None else np.asarray(bias, np.float32).tobytes())
            out["losses"].append(np.array(losses, np.float64).tobytes())
        yield pa.RecordBatch.from_pydict(out, schema=_SOLVED)


_SOLVED = pa.schema(
    [("row_ids", pa.binary()), ("factors", pa.binary()), ("bias", pa.binary()), ("losses", pa.binary())]
)


def _count(batches):
    """mapInArrow body: every block's row ids and CsrBlock.counts, so the values stay in the tasks."""
    for batch in batches:
        blocks = [_block(row) for row in batch.to_pylist()]
        yield pa.RecordBatch.from_pydict(
            {"row_ids": [b.row_ids.tobytes() for b in blocks], "counts": [b.counts.tobytes() for b in blocks]},
            schema=_COUNTED,
        )


_COUNTED = pa.schema([("row_ids", pa.binary()), ("counts", pa.binary())])


class Frames(Engine):
    """The blocks of both sides of `ratings` (user_idx, item_idx, rating) as a cached DataFrame; one
    mapInArrow job per half-step. Closing unpersists the blocks."""

    name = "frames"

    def __init__(self, ratings: DataFrame, spec: SolveSpec, num_blocks: dict[str, int]):
        self.spec = spec
        merged = pieces_frame(ratings, num_blocks).groupBy("side", "block").applyInArrow(_merged, BLOCKS)
        # As many partitions as tasks run at once, not spark.sql.shuffle.partitions: each partition is a
        # Python task in every half-step.
        self.blocks = merged.coalesce(session.parallelism(ratings.sparkSession)).cache()

    def _side(self, side: str) -> DataFrame:
        return self.blocks.where(F.col("side") == SIDE_CODES[side])

    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        parts = []
        for row in self._side(side).mapInArrow(_count, COUNTED).toArrow().to_pylist():
            ids = np.frombuffer(row["row_ids"], np.int32)
            parts.append((ids, np.frombuffer(row["counts"], np.int64).reshape(2, ids.size)))
        return gather_counts(n_rows, parts)

    def half_step(self, side, n_rows, fixed, fixed_bias, previous):
        spec = self.spec.on(side)
        f = fixed_side(n_rows, fixed, fixed_bias, spec, previous)
        k = f.factors.shape[1]
        solved = self._side(side).mapInArrow(lambda it: _solve(it, f, spec), SOLVED).toArrow()
        parts = []
        for row in solved.to_pylist():
            ids = np.frombuffer(row["row_ids"], np.int32)
            factors = np.frombuffer(row["factors"], np.float32).reshape(ids.size, k)
            bias = None if row["bias"] is None else np.frombuffer(row["bias"], np.float32)
            parts.append((ids, factors, bias, np.frombuffer(row["losses"], np.float64)))
        return assemble(n_rows, k, spec, previous, parts)

    def close(self) -> None:
        self.blocks.unpersist()
