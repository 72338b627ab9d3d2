"""One ALS half-step on Spark: new factors for every row of one side, the other side held fixed.

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

from mf_spark.blocks import CsrBlock
from mf_spark.kernels.solve import SolveSpec, solve_block, start_point


@dataclass(frozen=True)
class HalfStepResult:
    factors: np.ndarray          # (n_rows, k) float32
    bias: np.ndarray | None      # (n_rows,) float32 when the spec has biases
    data_loss: float
    reg_loss: float
    sq_err: float


def _solver(bc, spec: SolveSpec):
    def solve(blk: CsrBlock):
        Y, fixed_bias, gram, x0 = bc.value
        sol = solve_block(blk.indptr, blk.cols, blk.values, Y, spec, fixed_bias=fixed_bias, gram=gram,
                          x0=None if x0 is None else x0[blk.row_ids])
        return blk.row_ids, sol.factors, sol.bias, sol.data_loss, sol.reg_loss, sol.sq_err
    return solve


def half_step(blocks: RDD, n_rows: int, fixed: np.ndarray, spec: SolveSpec,
              fixed_bias: np.ndarray | None = None, previous: HalfStepResult | None = None) -> HalfStepResult:
    """Solve every row of the cached `blocks` against `fixed` ((n_fixed, k) float32).

    Rows that no block holds keep their `previous` factors (zeros when there are none); with
    conjugate-gradient solves (spec.cg_steps) every row starts from its `previous` factors.
    Performance note: one broadcast of fixed (+ biases, Gramian, and the solved side's current
    factors for conjugate gradients), one job, one collect.
    """
    fixed = np.ascontiguousarray(fixed, dtype=np.float32)
    k = fixed.shape[1]
    gram = fixed.T.astype(np.float64) @ fixed if spec.kind == "implicit" else None
    x0 = None
    if spec.cg_steps:       # conjugate gradients start from the rows' current factors
        x0 = (start_point(previous.factors, previous.bias, spec) if previous is not None
              else np.zeros((n_rows, k + spec.with_bias), np.float32))
    bc = blocks.context.broadcast((fixed, None if fixed_bias is None else fixed_bias.astype(np.float32), gram, x0))
    try:
        results = blocks.map(_solver(bc, spec)).collect()
    finally:
        bc.unpersist(blocking=False)
    X = previous.factors.copy() if previous is not None else np.zeros((n_rows, k), dtype=np.float32)
    bias = None
    if spec.with_bias:
        bias = (previous.bias.copy() if previous is not None and previous.bias is not None
                else np.zeros(n_rows, dtype=np.float32))
    data_loss = reg_loss = sq_err = 0.0
    for ids, factors, row_bias, block_data, block_reg, block_sq in results:
        X[ids] = factors
        if bias is not None:
            bias[ids] = row_bias
        data_loss += block_data
        reg_loss += block_reg
        sq_err += block_sq
    return HalfStepResult(X, bias, data_loss, reg_loss, sq_err)
