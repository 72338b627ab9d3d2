"""Rating blocks held by the process that runs the fit, solved by its threads: no Spark job per half-step.

A Spark Connect client has no SparkContext, and its executors may not reach it, so the frames
exchange costs it a Spark job per half-step, each a round trip to the server. When the training
ratings are few (model.driver_max_ratings), one collect brings them here instead, both sides' blocks
are built here, and every half-step runs in this process, on the kernels every engine runs
(halfstep.solve_rows), so the same factors:

    Spark: (user_idx, item_idx, rating) --one toArrow--> this process: blocks of both sides --threads--> X, Y

The kernels release the GIL, so the blocks of a half-step are solved by a thread each, up to the
cores this process sees.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pyspark.sql import DataFrame

from mf_spark.als.blocks import CsrBlock, buckets, gather_counts, rating_columns
from mf_spark.als.halfstep import Engine, assemble, fixed_side, solve_rows
from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX
from mf_spark.kernels.solve import SolveSpec


def side_blocks(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_blocks: int) -> list[CsrBlock]:
    """One side's CsrBlocks, row r in block r % n_blocks (blocks.build_all's layout)."""
    return [
        CsrBlock.from_triples(b, rows[at], cols[at], values[at])
        for b, at in enumerate(buckets(rows % n_blocks, n_blocks))
    ]


class Held(Engine):
    """Both sides' blocks of the ratings (u, i, r arrays) in this process; `collect` fetches them."""

    name = "driver"

    def __init__(self, u: np.ndarray, i: np.ndarray, r: np.ndarray, spec: SolveSpec, num_blocks: dict[str, int]):
        self.spec = spec
        r = np.asarray(r, np.float32)
        self.blocks = {
            "user": side_blocks(u, i, r, num_blocks["user"]),
            "item": side_blocks(i, u, r, num_blocks["item"]),
        }
        self.pool = ThreadPoolExecutor(max(1, min(max(num_blocks.values()), os.cpu_count() or 1)))

    @classmethod
    def collect(cls, ratings: DataFrame, spec: SolveSpec, num_blocks: dict[str, int]) -> "Held":
        t = rating_columns(ratings).toArrow()
        u, i, r = (t.column(c).to_numpy() for c in (USER_IDX, ITEM_IDX, RATING))
        return cls(u, i, r, spec, num_blocks)

    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        return gather_counts(n_rows, [(b.row_ids, b.counts) for b in self.blocks[side]])

    def half_step(self, side, n_rows, fixed, fixed_bias, previous):
        spec = self.spec.on(side)
        f = fixed_side(n_rows, fixed, fixed_bias, spec, previous)
        parts = list(self.pool.map(lambda blk: solve_rows(blk, f, spec), self.blocks[side]))
        return assemble(n_rows, f.factors.shape[1], spec, previous, parts)

    def close(self) -> None:
        self.pool.shutdown()
