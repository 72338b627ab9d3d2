"""Rating blocks held by the process that runs the fit, solved by its threads: no Spark job per half-step.

For few training ratings (model.driver_max_ratings) every other exchange costs more than the solves:
under a local master the executors share this machine's cores, so a stage to start and its task round
trips only add to the fit; a Spark Connect client, which has no SparkContext and whose executors may
not reach it, would run a Spark job per half-step (frames), each a round trip to the server. Here
the ratings are the driver front end's arrays, or one collect brings them; both sides' blocks are
built in this process, and every half-step and the top-N run on the kernels every engine runs
(halfstep.solve_rows, halfstep.block_tops), so the same factors and lists:

    (user_idx, item_idx, rating) --arrays, or one toArrow--> blocks of both sides --threads--> X, Y, top-N

The kernels release the GIL, so the blocks of a half-step are solved by a thread each, up to the
cores this process sees.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pyspark.sql import DataFrame

from mf_spark.als.blocks import gather_counts, rating_columns, side_blocks
from mf_spark.als.halfstep import Engine, assemble, block_tops, fixed_side, solve_rows
from mf_spark.core.types import ITEM_IDX, RATING, USER_IDX
from mf_spark.kernels.solve import SolveSpec


class Held(Engine):
    """Both sides' blocks of the ratings (u, i, r arrays) in this process; `collect` fetches them."""

    name = "driver"

    def __init__(self, u: np.ndarray, i: np.ndarray, r: np.ndarray, spec: SolveSpec, num_blocks: dict[str, int]):
        self.spec = spec
        r = np.asarray(r, np.float32)
        self.blocks = {
            "user": list(side_blocks(u, i, r, num_blocks["user"]).values()),
            "item": list(side_blocks(i, u, r, num_blocks["item"]).values()),
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

    def top(self, X, user_offset, Y, item_bias, n):
        """Every user's best n items, the items the user rated excluded (halfstep.block_tops)."""
        users = self.blocks["user"]
        offset = None if user_offset is None else [np.asarray(user_offset[b.row_ids], np.float32) for b in users]
        Y = np.ascontiguousarray(Y, np.float32)
        item_bias = None if item_bias is None else np.asarray(item_bias, np.float32)
        X_rows = [np.ascontiguousarray(X[b.row_ids], np.float32) for b in users]
        return tuple(block_tops(users, X_rows, offset, Y, item_bias, n, self.pool.map))

    def close(self) -> None:
        self.pool.shutdown()
