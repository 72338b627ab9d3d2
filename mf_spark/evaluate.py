"""Held-out evaluation: RMSE and MAE of clipped predictions, and the per-iteration tracker.

The held-out split is collected once to the driver as index arrays (Arrow, no Python rows): the
driver already holds both factor matrices in the broadcast strategy, so scoring there costs one
gather and one row-wise dot product per iteration, and no Spark job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.checkpoint import Factors
from mf_spark.model import Scorer
from mf_spark.types import ITEM_IDX, RATING, USER_IDX


@dataclass(frozen=True)
class HeldOut:
    """The test split as driver arrays; -1 marks a user or item never seen in train (cold)."""
    u: np.ndarray   # (m,) int32
    i: np.ndarray   # (m,) int32
    r: np.ndarray   # (m,) float64

    @property
    def n(self) -> int:
        return int(self.r.size)

    @property
    def n_cold(self) -> int:
        return int(np.count_nonzero((self.u < 0) | (self.i < 0)))


def collect_heldout(test_idx: DataFrame) -> HeldOut:
    """Test rows (user_idx, item_idx nullable, rating) to driver arrays. Performance note: one
    collect of 12 bytes per test row through Arrow."""
    t = test_idx.select(F.coalesce(F.col(USER_IDX), F.lit(-1)).cast("int").alias("u"),
                        F.coalesce(F.col(ITEM_IDX), F.lit(-1)).cast("int").alias("i"),
                        F.col(RATING).cast("double").alias("r")).toArrow()
    return HeldOut(t.column("u").to_numpy().astype(np.int32), t.column("i").to_numpy().astype(np.int32),
                   t.column("r").to_numpy().astype(np.float64))


def rmse_mae(pred: np.ndarray, r: np.ndarray) -> tuple[float | None, float | None]:
    """Root mean squared and mean absolute error; (None, None) for no rows."""
    if r.size == 0:
        return None, None
    err = pred - r
    return float(np.sqrt(np.mean(err * err))), float(np.mean(np.abs(err)))


def error_metrics(scorer: Scorer, heldout: HeldOut) -> dict[str, Any]:
    """rmse and mae on the held-out rows (explicit models; None for implicit ones)."""
    if scorer.kind != "explicit":
        return {"rmse": None, "mae": None}
    rmse, mae = rmse_mae(scorer.predict_idx(heldout.u, heldout.i), heldout.r)
    return {"rmse": rmse, "mae": mae}


def tracker(heldout: HeldOut, kind: str, global_mean: float,
            rating_range: tuple[float, float] | None) -> Callable[[int, Factors], dict[str, Any]]:
    """An on_iteration callback for als.fit giving the held-out RMSE after each iteration."""
    def on_iteration(iteration: int, factors: Factors) -> dict[str, Any]:
        if kind != "explicit" or heldout.n == 0:
            return {"test_rmse": None}
        scorer = Scorer(kind, factors, global_mean, rating_range)
        return {"test_rmse": error_metrics(scorer, heldout)["rmse"]}
    return on_iteration
