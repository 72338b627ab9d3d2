"""The half-step interface every engine implements, the pieces they share, and the broadcast-jobs
engine: new factors for every row of one side, the other side held fixed.

    class Engine:                 # halfstep.Engine: jobs (here), join.Routed, stream.Resident
        name                      # "jobs" | "join" | "stream", as metrics.json reports it
        row_counts(side, n)       # entries, and entries > 0, per row of a side
        half_step(side, n, fixed, fixed_bias, previous) -> HalfStepResult
        pause()                   # let other Spark jobs run (the resident stage holds every slot)
        top(X, offset, Y, item_bias, n)   # top lists where the blocks are, or None
        close()                   # release what the engine holds (also on leaving `with`)
        spec                      # the SolveSpec of the next half-steps: may change between fits
                                  # on the same blocks (a tuning search, als.SharedBlocks)

Broadcast strategy: the driver broadcasts the fixed side's factors (float32), its biases and, for
weighted ALS, its Gramian G = Y^T Y (computed once here, not once per block). Each cached rating block
solves its rows locally with `kernels.solve.solve_block`; the driver collects and assembles the rows.

    driver: Y, G --broadcast--> block 0: rows [0, 2, 4]  -> x_0, x_2, x_4 --collect--> X
                                block 1: rows [1, 3]     -> x_1, x_3

Performance note: one broadcast and one Spark job (a collect of n_rows x k floats) per half-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark import RDD

from mf_spark.als.blocks import CsrBlock, row_counts
from mf_spark.core.config import ModelConfig
from mf_spark.kernels.solve import SolveSpec, solve_block, start_point
from mf_spark.kernels.topk import top_n


@dataclass(frozen=True)
class HalfStepResult:
    factors: np.ndarray  # (n_rows, k) float32
    bias: np.ndarray | None  # (n_rows,) float32 when the spec has biases
    data_loss: float
    reg_loss: float
    sq_err: float


@dataclass(frozen=True)
class Fixed:
    """What a half-step sends its blocks: the fixed side (float32), its biases, for weighted ALS its
    Gramian Y^T Y (computed once per half-step, not once per block), and for conjugate gradients the
    solved side's current factors (x0, the rows' starting points)."""

    factors: np.ndarray
    bias: np.ndarray | None
    gram: np.ndarray | None
    x0: np.ndarray | None


def solve_spec(cfg: ModelConfig, mu: float) -> SolveSpec:
    """What every half-step of a fit with this config solves (mu: the global mean, with biases)."""
    return SolveSpec(
        kind=cfg.kind,
        reg=cfg.reg,
        reg_exponent=cfg.reg_exponent if cfg.reg_scaling == "count" else 0.0,
        with_bias=cfg.kind == "explicit" and cfg.biases,
        bias_reg=cfg.bias_reg,
        mu=mu,
        alpha=cfg.alpha,
        confidence=cfg.confidence,
        epsilon=cfg.epsilon,
        target=cfg.target,
        w0=cfg.unobserved_weight,
        nonnegative=cfg.nonnegative,
        cg_steps=cfg.cg_steps_for(),
        history_prior=cfg.history_prior if cfg.kind == "explicit" else 0.0,
        item_reg_scale=cfg.item_reg_scale,
    )


def gramian(fixed: np.ndarray, spec: SolveSpec) -> np.ndarray | None:
    """Y^T Y in float64 for weighted ALS (the unobserved entries' term), None for explicit ALS."""
    return fixed.T.astype(np.float64) @ fixed if spec.kind == "implicit" else None


def fixed_side(
    n_rows: int, fixed: np.ndarray, fixed_bias: np.ndarray | None, spec: SolveSpec, previous: HalfStepResult | None
) -> Fixed:
    fixed = np.ascontiguousarray(fixed, dtype=np.float32)
    gram = gramian(fixed, spec)
    x0 = None
    if spec.cg_steps:  # conjugate gradients start from the rows' current factors
        x0 = (
            start_point(previous.factors, previous.bias, spec)
            if previous is not None and previous.factors is not None
            else np.zeros((n_rows, fixed.shape[1] + spec.with_bias), np.float32)
        )
    return Fixed(fixed, None if fixed_bias is None else np.asarray(fixed_bias, np.float32), gram, x0)


def assemble(n_rows: int, k: int, spec: SolveSpec, previous: HalfStepResult | None, parts) -> HalfStepResult:
    """The half-step's result from its blocks' parts (row ids, factors, biases or None, (data loss,
    reg loss, squared error)); rows no block holds keep their `previous` factors (zeros if none)."""
    X = (
        previous.factors.copy()
        if previous is not None and previous.factors is not None
        else np.zeros((n_rows, k), dtype=np.float32)
    )
    bias = None
    if spec.with_bias or (previous is not None and previous.bias is not None):
        bias = (
            previous.bias.copy()
            if previous is not None and previous.bias is not None
            else np.zeros(n_rows, dtype=np.float32)
        )
    loss = np.zeros(3)
    for ids, factors, row_bias, losses in parts:
        X[ids] = factors
        if bias is not None and row_bias is not None:
            bias[ids] = row_bias
        loss += losses
    return HalfStepResult(X, bias, float(loss[0]), float(loss[1]), float(loss[2]))


class Engine:
    """The half-step interface (see the module docstring); a context manager that closes itself."""

    name = "?"

    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        """(2, n_rows) int64: each row's entries and its entries > 0 (blocks.gather_counts)."""
        raise NotImplementedError

    def half_step(
        self, side: str, n_rows: int, fixed: np.ndarray, fixed_bias: np.ndarray | None, previous: HalfStepResult
    ) -> HalfStepResult:
        raise NotImplementedError

    def pause(self) -> None:
        """Nothing to do for engines that run one Spark job per half-step."""

    def top(self, X, user_offset, Y, item_bias, n):
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class BroadcastJobs(Engine):
    """Cached rating blocks of both sides ({"user": RDD, "item": RDD}), one broadcast and one Spark job
    per half-step (`half_step`); closing unpersists the blocks."""

    name = "jobs"

    def __init__(self, blocks: dict[str, RDD], spec: SolveSpec):
        self.blocks, self.spec = blocks, spec

    def row_counts(self, side: str, n_rows: int) -> np.ndarray:
        return row_counts(self.blocks[side], n_rows)

    def half_step(self, side, n_rows, fixed, fixed_bias, previous):
        return half_step(self.blocks[side], n_rows, fixed, self.spec.on(side), fixed_bias, previous)

    def close(self) -> None:
        for rdd in self.blocks.values():
            rdd.unpersist()


def solve_rows(blk: CsrBlock, f: Fixed, spec: SolveSpec) -> tuple:
    """One block's rows solved against the fixed side: (row ids, factors, biases or None, (data loss,
    reg loss, squared error)), the part `assemble` takes."""
    sol = solve_block(
        blk.indptr,
        blk.cols,
        blk.values,
        f.factors,
        spec,
        fixed_bias=f.bias,
        gram=f.gram,
        x0=None if f.x0 is None else f.x0[blk.row_ids],
    )
    return blk.row_ids, sol.factors, sol.bias, (sol.data_loss, sol.reg_loss, sol.sq_err)


def block_tops(
    blocks: list[CsrBlock],
    X: list[np.ndarray],
    offset: list[np.ndarray] | None,
    Y: np.ndarray,
    item_bias,
    n: int,
    map_=map,
) -> list[np.ndarray]:
    """Every user's best n items over user `blocks` (a row is the user's training items: excluded),
    flattened as kernels.topk.top_n lays them out: [user ids, counts, items, scores]. X[j] and
    offset[j] (mu + b_u; None without biases) are the users' factors and offsets of blocks[j], in its
    row order; `map_` runs the blocks (a thread pool's map: the kernel releases the GIL)."""

    def one(j: int):
        blk = blocks[j]
        return top_n(X[j], Y, n, blk.indptr, blk.cols, None if offset is None else offset[j], item_bias)

    parts = list(map_(one, range(len(blocks))))
    cat = lambda arrays, dtype: np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    return [
        cat([b.row_ids for b in blocks], np.int32),
        *(cat([p[at] for p in parts], dtype) for at, dtype in enumerate((np.int32, np.int32, np.float32))),
    ]


def _solver(bc, spec: SolveSpec):
    return lambda blk: solve_rows(blk, bc.value, spec)


def half_step(
    blocks: RDD,
    n_rows: int,
    fixed: np.ndarray,
    spec: SolveSpec,
    fixed_bias: np.ndarray | None = None,
    previous: HalfStepResult | None = None,
) -> HalfStepResult:
    """Solve every row of the cached `blocks` against `fixed` ((n_fixed, k) float32).

    Rows that no block holds keep their `previous` factors (zeros when there are none); with
    conjugate-gradient solves (spec.cg_steps) every row starts from its `previous` factors.
    Performance note: one broadcast of fixed (+ biases, Gramian, and the solved side's current
    factors for conjugate gradients), one job, one collect.
    """
    f = fixed_side(n_rows, fixed, fixed_bias, spec, previous)
    bc = blocks.context.broadcast(f)
    try:
        results = blocks.map(_solver(bc, spec)).collect()
    finally:
        bc.unpersist(blocking=False)
    return assemble(n_rows, f.factors.shape[1], spec, previous, results)
