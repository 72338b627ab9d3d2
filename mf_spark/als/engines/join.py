"""Join strategy: each fixed-side block sends a destination block only the factor rows it rates.

For when the fixed side's factors are too big to broadcast (model.broadcast_budget_mb). Routing
tables are built once from the rating blocks: for destination block d and source block s, the
sorted rows of s that d's ratings name. Every half-step, source factor blocks are zipped with their
routes, the routed rows are shuffled to their destination block and zipped with its rating block
(narrow: no rating ever moves), and the block is solved against that local slice of the fixed side.

    item factor block 0 --rows {0, 4}-->  user block 0 (rates items 0, 4)
                        --rows {2}----->  user block 1 (rates items 2, 5)
    item factor block 1 --rows {5}----->  user block 1

Same kernels and same inputs per row as the broadcast strategy, hence the same factors. The solved
rows are collected to the driver (as with broadcast), which keeps the model, the per-iteration
metrics and the checkpoints; executors hold only their blocks and routed rows. Factor RDDs are
re-seeded from the driver's copy every `reseed_every` iterations so that lineage stays short.
"""

from __future__ import annotations

import numpy as np
from pyspark import RDD, SparkContext, StorageLevel

from mf_spark.als.blocks import CsrBlock, row_counts
from mf_spark.als.halfstep import Engine, HalfStepResult, assemble, gramian
from mf_spark.kernels.solve import SolveSpec, solve_block, start_point

OTHER = {"user": "item", "item": "user"}


def _routes(dst_blocks: RDD, n_src: int) -> RDD:
    """Per source block s (partition s, exactly one record): [(d, rows of s that block d rates)]."""

    def needs(blk: CsrBlock):
        cols = np.unique(blk.cols)
        owner = cols % n_src
        return [(int(s), (blk.block, cols[owner == s])) for s in np.unique(owner)]

    return (
        dst_blocks.flatMap(needs)
        .partitionBy(n_src, lambda s: s)
        .mapPartitions(lambda it: [sorted((v for _, v in it), key=lambda dv: dv[0])], preservesPartitioning=True)
    )


def _send(pair):
    (ids, F, bias, _), routes = pair
    out = []
    for d, rows in routes:
        pos = np.searchsorted(ids, rows)
        if rows.size and (pos.max() >= ids.size or np.any(ids[pos] != rows)):
            raise RuntimeError(
                f"factor block lacks {int(np.sum(ids[np.minimum(pos, ids.size - 1)] != rows))} routed rows"
            )
        out.append((d, (rows, F[pos], None if bias is None else bias[pos])))
    return out


def _solver(spec: SolveSpec, gram: np.ndarray | None, k: int):
    def solve(pair):
        if spec.cg_steps:  # ((rating block, routed rows), the block's current factors)
            (blk, received), (_, F0, b0, _) = pair
            x0 = start_point(F0, b0, spec)
        else:
            (blk, received), x0 = pair, None
        if received:
            gids = np.concatenate([r[0] for r in received])
            order = np.argsort(gids, kind="stable")
            gids = gids[order]
            Y = np.concatenate([r[1] for r in received])[order]
            fb = np.concatenate([r[2] for r in received])[order] if received[0][2] is not None else None
        else:
            gids, Y, fb = np.zeros(0, np.int32), np.zeros((0, k), np.float32), None
            if spec.with_bias:
                fb = np.zeros(0, np.float32)
        local = np.searchsorted(gids, blk.cols).astype(np.int32)
        sol = solve_block(blk.indptr, local, blk.values, Y, spec, fixed_bias=fb, gram=gram, x0=x0)
        return blk.row_ids, sol.factors, sol.bias, (sol.data_loss, sol.reg_loss, sol.sq_err)

    return solve


def _one_per_partition(rdd: RDD) -> RDD:
    """Partition d as one record: the list of its values (zip needs equal counts per partition)."""
    return rdd.mapPartitions(lambda it: [[v for _, v in it]], preservesPartitioning=True)


class Routed(Engine):
    """The join strategy over cached rating blocks of both sides (partition b = block b, one record
    each); an Engine (halfstep), closing unpersists the routes, the factor blocks and the rating blocks.

        routed = Routed(sc, {"user": user_blocks, "item": item_blocks}, spec, reseed_every=5)
        result = routed.half_step("item", n_items, X, user_bias, previous)   # same contract as half_step
    """

    def __init__(self, sc: SparkContext, blocks: dict[str, RDD], spec: SolveSpec, reseed_every: int = 5):
        self.sc, self.blocks, self.spec = sc, blocks, spec
        self.n = {side: rdd.getNumPartitions() for side, rdd in blocks.items()}
        # routes[s] serves the half-step that solves OTHER[s] from side s's factors
        self.routes = {
            side: _routes(blocks[OTHER[side]], self.n[side]).persist(StorageLevel.MEMORY_AND_DISK) for side in blocks
        }
        self.factors: dict[str, RDD | None] = {"user": None, "item": None}
        self.age = {"user": 0, "item": 0}
        self.row_ids: dict[str, list[np.ndarray]] = {}
        self.reseed_every = max(1, reseed_every)

    name = "join"

    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        return row_counts(self.blocks[side], n_rows)

    def close(self) -> None:
        for rdd in (
            list(self.routes.values())
            + [f for f in self.factors.values() if f is not None]
            + list(self.blocks.values())
        ):
            rdd.unpersist()

    def _seed(self, side: str, F: np.ndarray, bias: np.ndarray | None) -> RDD:
        """Factor blocks of `side` from the driver's arrays: partition b holds the rows of rating block b."""
        if side not in self.row_ids:  # one small collect per side per fit, reused by every re-seed
            self.row_ids[side] = self.blocks[side].map(lambda blk: blk.row_ids).collect()
        slices = [(ids, F[ids], None if bias is None else bias[ids], None) for ids in self.row_ids[side]]
        return self.sc.parallelize(slices, self.n[side]).persist(StorageLevel.MEMORY_AND_DISK)

    def half_step(
        self, side: str, n_rows: int, fixed: np.ndarray, fixed_bias: np.ndarray | None, previous: HalfStepResult
    ) -> HalfStepResult:
        src = OTHER[side]
        if self.factors[src] is None or self.age[src] >= self.reseed_every:
            old = self.factors[src]
            self.factors[src] = self._seed(src, np.ascontiguousarray(fixed, np.float32), fixed_bias)
            self.age[src] = 0
            if old is not None:
                old.unpersist()
        k, spec = fixed.shape[1], self.spec.on(side)
        gram = gramian(fixed, spec)
        routed = _one_per_partition(
            self.factors[src].zip(self.routes[src]).flatMap(_send).partitionBy(self.n[side], lambda d: d)
        )
        pairs, age = self.blocks[side].zip(routed), self.age[src]
        if spec.cg_steps:  # conjugate gradients start from the solved side's current factors
            if self.factors[side] is None or self.age[side] >= self.reseed_every:
                stale = self.factors[side]
                self.factors[side] = self._seed(side, previous.factors, previous.bias)
                self.age[side] = 0
                if stale is not None:
                    stale.unpersist()
            pairs, age = pairs.zip(self.factors[side]), max(age, self.age[side])
        solved = pairs.map(_solver(spec, gram, k)).persist(StorageLevel.MEMORY_AND_DISK)
        results = solved.collect()
        old, self.factors[side] = self.factors[side], solved
        self.age[side] = age + 1
        if old is not None:
            old.unpersist()
        return assemble(n_rows, k, spec, previous, results)
