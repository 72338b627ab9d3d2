"""Day biases: after a fit, one offset per (user, day) from the residuals of the user's ratings that day.

    b_ud = sum of (r - mu - b_u - b_i - x_u.y_i) over the user's training ratings on day d
           / (their count + model.day_bias_reg)

the ridge solution of one coordinate per (user, day) with the factors held fixed (types.DayBiases
scores them). It is one step after the alternating fit, not a part of it: fitted alongside the
factors, the offsets take over some of what the user biases and factors would learn and the
held-out error comes out higher. An offset is the same for every item, so it moves a user's
predictions on that day but never the order of the user's recommendations.

`DayFitter(train, day_length)` groups the training ratings by (user, day) once; each `fit` of
factors, for one or several day_bias_reg values, is one pass over the ratings (tune fits every
trial's factors after every iteration). Ratings without a timestamp take no part.

Day factor offsets (model.day_factor_reg > 0) come after the day biases: each (user, day) with at
least two ratings gets d_ud, the ridge solution of its ratings' residuals (after the day bias) on the
item factors,

    d_ud = argmin sum over the day's ratings of (e - d . y_i)^2 + day_factor_reg |d|^2

solved by the ALS kernel (`kernels.solve.solve_block`, its rows the (user, day) pairs). A day with
one rating names no direction of taste, so it keeps its bias alone. Fitted in one ridge with the day
bias, the offsets did worse on held-out ratings (docs/quality.md).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.als.checkpoint import factor_lists
from mf_spark.core import session
from mf_spark.core.types import ITEM_IDX, NO_TIME, RATING, TIMESTAMP, USER_IDX, DayBiases, Factors
from mf_spark.data.ready import Keyed, Triples, as_df
from mf_spark.kernels import compiled
from mf_spark.kernels.solve import SolveSpec, solve_block

log = logging.getLogger("mf_spark")
_DAY, _RESIDUAL = "_day", "_residual"


def residuals(f: Factors, u: np.ndarray, i: np.ndarray, r: np.ndarray) -> np.ndarray:
    """r - (mu + b_u + b_i + x_u.y_i), unclipped, for known (u, i) pairs (float64)."""
    return r - compiled.predict_rows(f.X, f.Y, f.user_bias, f.item_bias, u, i, f.mu, f.mu, None)


def ridge_offsets(indptr: np.ndarray, items: np.ndarray, errors: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
    """(groups, k) float32: each CSR group's ridge solution of `errors` on its items' factors, zeros for
    groups of fewer than two ratings."""
    spec = SolveSpec(reg=float(reg), reg_exponent=0.0)
    offsets = solve_block(indptr, items.astype(np.int32), errors.astype(np.float32), Y, spec).factors
    offsets[np.diff(indptr) < 2] = 0.0
    return offsets


def _pairs(
    day_length: int, users: np.ndarray, days: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> tuple[DayBiases, np.ndarray, np.ndarray]:
    """(user, day) pairs in any order as DayBiases (zero offsets), with their sums and counts in its order."""
    order = np.lexsort((days, users))
    pairs = DayBiases(
        day_length, users[order].astype(np.int32), days[order].astype(np.int64), np.zeros(order.size, np.float32)
    )
    return pairs, sums[order], counts[order]


ROW_BYTES = 24  # a timestamped rating in driver arrays: user, item (int32), rating, timestamp (64-bit)


def on_driver(train: DataFrame | Triples | Keyed, n_rows: int, max_bytes: float) -> DataFrame | Triples | Keyed:
    """`train`'s (`n_rows` ratings) timestamped ones as driver arrays when Spark holds them and they
    take at most `max_bytes` there (for a fitter called many times: each call is then no Spark job),
    else `train` as it is. Performance note: at most one collect."""
    if isinstance(train, Triples):
        return train
    train = as_df(train)
    if TIMESTAMP not in train.columns or n_rows * ROW_BYTES > max_bytes:
        return train
    timed = train.where(F.col(TIMESTAMP).isNotNull()).select(USER_IDX, ITEM_IDX, RATING, TIMESTAMP)
    t = timed.toArrow()
    return Triples(
        train.sparkSession,
        t.column(USER_IDX).to_numpy().astype(np.int32),
        t.column(ITEM_IDX).to_numpy().astype(np.int32),
        t.column(RATING).to_numpy().astype(np.float64),
        t.column(TIMESTAMP).to_numpy().astype(np.int64),
    )


class DayFitter:
    """Fits DayBiases to training ratings for any factors: on the driver for ratings it holds
    (ready.Triples), else one Spark job per call (`spark_free` says which)."""

    def __init__(self, train: DataFrame | Triples | Keyed, day_length: int):
        self.day_length = int(day_length)
        self.spark_free = isinstance(train, Triples)
        self.warned = False
        if not self.spark_free:
            train = as_df(train)
            self.train = train.where(F.col(TIMESTAMP).isNotNull()) if TIMESTAMP in train.columns else None
            return
        ts = train.t if train.t is not None else np.full(train.r.size, NO_TIME, np.int64)
        keep = np.flatnonzero(ts != NO_TIME)
        self.u, self.i, self.r = train.u[keep], train.i[keep], train.r[keep]
        day = ts[keep] // self.day_length
        pairs = np.stack([self.u.astype(np.int64), day])
        groups, self.group = (
            np.unique(pairs, axis=1, return_inverse=True)
            if keep.size
            else (np.zeros((2, 0), np.int64), np.zeros(0, np.int64))
        )  # groups sorted by (user, day)
        self.group = self.group.ravel()
        self.counts = np.bincount(self.group, minlength=groups.shape[1]).astype(np.float64)
        # the ratings as CSR rows of their (user, day) pairs, for the factor offsets
        self.by_pair = np.argsort(self.group, kind="stable")
        self.pair_ptr = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.pairs = DayBiases(
            self.day_length, groups[0].astype(np.int32), groups[1], np.zeros(groups.shape[1], np.float32)
        )

    @property
    def timed(self) -> bool:
        """Whether the ratings have timestamps: any, held by the driver; the column, held by Spark."""
        return bool(self.pairs.size) if self.spark_free else self.train is not None

    def __call__(self, factors: Factors, reg: float) -> DayBiases | None:
        """The day biases of `factors` with lambda `reg`; None for reg 0 (day biases off)."""
        return self.fit(factors, [reg])[0]

    def fit(self, factors: Factors, regs: list[float]) -> list[DayBiases | None]:
        """The day biases of `factors` for each lambda of `regs` (None for 0), from one pass."""
        if all(reg <= 0 for reg in regs):
            return [None] * len(regs)
        if self.spark_free:
            sums = np.bincount(self.group, residuals(factors, self.u, self.i, self.r), minlength=self.counts.size)
            pairs, counts = self.pairs, self.counts
        else:
            pairs, sums, counts = self._on_spark(factors)
        if not pairs.size and not self.warned:
            self.warned = True
            log.warning(
                "day biases asked for (model.day_bias_reg > 0, or listed in tune.space), but no training "
                "rating has a timestamp (data.timestamp_col): there are none to fit"
            )
        return [pairs.with_bias(sums / (counts + reg)) if reg > 0 else None for reg in regs]

    def unbiased(self, factors: Factors) -> DayBiases:
        """The (user, day) pairs of the timestamped ratings, every offset 0."""
        return self.pairs if self.spark_free else self._on_spark(factors)[0]

    def with_factors(self, factors: Factors, biases: DayBiases, reg: float) -> DayBiases:
        """`biases` (fitted to `factors` by `fit`) with their factor offsets for lambda `reg` (module
        docstring); `biases` as they are for reg 0."""
        if reg <= 0 or not biases.size:
            return biases
        if not self.spark_free:
            return biases.with_factors(self._factors_on_spark(factors, biases, reg))
        errors = residuals(factors, self.u, self.i, self.r) - biases.bias[self.group]
        order = self.by_pair
        return biases.with_factors(ridge_offsets(self.pair_ptr, self.i[order], errors[order], factors.Y, reg))

    def _factors_on_spark(self, factors: Factors, biases: DayBiases, reg: float) -> np.ndarray:
        """The factor offsets of `biases`' pairs, (m, k). Performance note: one broadcast of the
        factors and day biases, a shuffle of the timestamped ratings by user, and one kernel solve per
        partition, whose rows (one per user and day) come to the driver."""
        bc = session.broadcast(self.train.sparkSession, (factors, biases))
        length, k = self.day_length, factors.Y.shape[1]

        def errors(batches):
            f, d = bc.value
            for b in batches:
                t = pa.Table.from_batches([b])
                u, ts = t.column(USER_IDX).to_numpy(), t.column(TIMESTAMP).to_numpy()
                res = residuals(f, u, t.column(ITEM_IDX).to_numpy(), t.column(RATING).to_numpy().astype(np.float64))
                res -= d.lookup(u, ts)
                yield pa.record_batch(
                    [
                        t.column(USER_IDX).combine_chunks(),
                        pa.array(ts // length, pa.int64()),
                        t.column(ITEM_IDX).combine_chunks(),
                        pa.array(res, pa.float64()),
                    ],
                    [USER_IDX, _DAY, ITEM_IDX, _RESIDUAL],
                )

        def solve(batches):
            batches = [b for b in batches if b.num_rows]
            if not batches:  # a partition no user hashed to
                return
            t = pa.Table.from_batches(batches)
            u, day = t.column(USER_IDX).to_numpy(), t.column(_DAY).to_numpy()
            starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (day[1:] != day[:-1])])
            indptr = np.append(starts, u.size).astype(np.int64)
            items = t.column(ITEM_IDX).to_numpy()
            offsets = ridge_offsets(indptr, items, t.column(_RESIDUAL).to_numpy(), bc.value[0].Y, reg)
            yield pa.record_batch(
                [
                    pa.array(u[starts], pa.int32()),
                    pa.array(day[starts], pa.int64()),
                    factor_lists(offsets, large=False),
                ],
                [USER_IDX, _DAY, "offset"],
            )

        try:
            rows = (
                self.train.select(USER_IDX, ITEM_IDX, RATING, TIMESTAMP)
                .mapInArrow(errors, f"{USER_IDX} int, {_DAY} long, {ITEM_IDX} int, {_RESIDUAL} double")
                .repartition(session.parallelism(self.train.sparkSession), USER_IDX)
                .sortWithinPartitions(USER_IDX, _DAY)
                .mapInArrow(solve, f"{USER_IDX} int, {_DAY} long, offset array<float>")
                .toArrow()
            )
        finally:
            bc.unpersist(blocking=False)
        out = np.zeros((biases.size, k), np.float32)
        if rows.num_rows:
            at = biases.positions(rows.column(USER_IDX).to_numpy(), rows.column(_DAY).to_numpy() * length)
            values = np.asarray(rows.column("offset").combine_chunks().flatten(), np.float32).reshape(-1, k)
            out[at[at >= 0]] = values[at >= 0]
        return out

    def _on_spark(self, factors: Factors) -> tuple[DayBiases, np.ndarray, np.ndarray]:
        """The (user, day) pairs, their residuals' sums and counts. Performance note: one broadcast
        of the factors, one narrow pass over the ratings and an aggregate by (user, day), whose rows
        (one per user and day) come to the driver."""
        if self.train is None:
            return _pairs(self.day_length, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        bc = session.broadcast(self.train.sparkSession, factors)
        length = self.day_length

        def body(batches):
            f = bc.value
            for b in batches:
                t = pa.Table.from_batches([b])
                res = residuals(
                    f,
                    t.column(USER_IDX).to_numpy(),
                    t.column(ITEM_IDX).to_numpy(),
                    t.column(RATING).to_numpy().astype(np.float64),
                )
                day = t.column(TIMESTAMP).to_numpy() // length
                yield pa.record_batch(
                    [t.column(USER_IDX).combine_chunks(), pa.array(day, pa.int64()), pa.array(res, pa.float64())],
                    [USER_IDX, _DAY, _RESIDUAL],
                )

        try:
            rows = (
                self.train.select(USER_IDX, ITEM_IDX, RATING, TIMESTAMP)
                .mapInArrow(body, f"{USER_IDX} int, {_DAY} long, {_RESIDUAL} double")
                .groupBy(USER_IDX, _DAY)
                .agg(F.sum(_RESIDUAL).alias("s"), F.count(F.lit(1)).alias("n"))
                .toArrow()
            )
        finally:
            bc.unpersist(blocking=False)
        col = lambda name: rows.column(name).to_numpy()
        return _pairs(length, col(USER_IDX), col(_DAY), col("s"), col("n").astype(np.float64))


def fit(fitter_: DayFitter | None, factors: Factors, cfg) -> DayBiases | None:
    """The day biases of a model config (config.ModelConfig) for `factors`, with their factor offsets
    when it asks for them; None without a fitter."""
    if fitter_ is None:
        return None
    if cfg.day_bias_reg > 0:
        biases = fitter_(factors, cfg.day_bias_reg)
    else:  # factor offsets alone: the (user, day) pairs with no bias
        biases = fitter_.unbiased(factors)
    return fitter_.with_factors(factors, biases, cfg.day_factor_reg)


def fitter(train: DataFrame | Triples | Keyed, cfg) -> DayFitter | None:
    """The day biases' fitter of a model config (config.ModelConfig), None when it has none."""
    wanted = cfg.day_bias_reg > 0 or cfg.day_factor_reg > 0
    return DayFitter(train, cfg.day_length) if cfg.kind == "explicit" and wanted else None
