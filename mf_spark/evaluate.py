"""Held-out evaluation: RMSE / MAE of clipped predictions, ranking metrics at k, and the tracker.

The held-out split is collected once to the driver, its IDs looked up in the ID maps there: the
driver already holds both factor matrices in the broadcast strategy, so error metrics cost one
gather and one row-wise dot product, and no Spark job. Ranking metrics need every item scored for
each evaluated user with its training items excluded: that runs on the executors (one narrow
mapInArrow with broadcast factors, topn.recommend_indices) and only the k best indices per user
come back to the driver, where kernels.metrics compares them with the held-out relevant items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.als.loop import TopLists
from mf_spark.core import session
from mf_spark.core.types import ITEM_IDX, USER_IDX, Factors
from mf_spark.data.ready import HeldOut, Keyed, Triples, as_df
from mf_spark.kernels.metrics import ranking_metrics
from mf_spark.kernels.topk import top_n
from mf_spark.model.factors import Scorer
from mf_spark.model.topn import recommend_indices

RANKING_KEYS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage", "n_users_evaluated")


def rmse_mae(pred: np.ndarray, r: np.ndarray) -> tuple[float | None, float | None]:
    """Root mean squared and mean absolute error; (None, None) for no rows."""
    if r.size == 0:
        return None, None
    err = pred - r
    return float(np.sqrt(np.mean(err * err))), float(np.mean(np.abs(err)))


def error_metrics(scorer: Scorer, heldout: HeldOut, day_at: np.ndarray | None = None) -> dict[str, Any]:
    """rmse and mae on the held-out rows (explicit models; None for implicit ones); `day_at`: the
    rows' positions in the scorer's day biases, where the caller keeps them (Scorer.predict_idx)."""
    if scorer.kind != "explicit":
        return {"rmse": None, "mae": None}
    rmse, mae = rmse_mae(scorer.predict_idx(heldout.u, heldout.i, heldout.t, day_at), heldout.r)
    return {"rmse": rmse, "mae": mae}


@dataclass(frozen=True)
class Relevant:
    """Relevant held-out items of each evaluated user, as CSR over `users` (ascending)."""

    users: np.ndarray  # (m,) int32 user indices known in train with >= 1 relevant known item
    indptr: np.ndarray  # (m + 1,) int64
    items: np.ndarray  # (r,) int32


def sample_users(relevant: Relevant, limit: int, seed: int = 0) -> Relevant:
    """At most `limit` of the evaluated users (a seeded draw, the same users every iteration), with
    their relevant items: per-iteration NDCG costs users x items scores, so the history uses a sample."""
    m = relevant.users.size
    if m <= limit:
        return relevant
    keep = np.sort(np.random.default_rng(seed).choice(m, size=limit, replace=False))
    lens = np.diff(relevant.indptr)[keep]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lens) + np.repeat(relevant.indptr[keep], lens)
    return Relevant(relevant.users[keep], offsets, relevant.items[pos])


def relevant_items(heldout: HeldOut, threshold: float | None) -> Relevant:
    """Held-out (user, item) pairs of known users and items, rating >= threshold (None: all)."""
    keep = (heldout.u >= 0) & (heldout.i >= 0)
    if threshold is not None:
        keep &= heldout.r >= threshold
    u, i = heldout.u[keep], heldout.i[keep]
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    users, starts = np.unique(u, return_index=True)
    return Relevant(users.astype(np.int32), np.append(starts, u.size).astype(np.int64), i.astype(np.int32))


class RankingEvaluator:
    """Ranking metrics at k of any factors, for the users with relevant held-out items.

    `seen` lists each user's training items, which are excluded from the ranking: (user_idx, seen
    array<int>) rows, or with on_driver the training pairs themselves (user_idx, item_idx).
    Performance note: the evaluated users' lists are joined once (broadcast) and cached; each call
    is one broadcast, one narrow job and a collect of k indices per user. With on_driver (a sample
    of users) their pairs are collected once, by a filter on the user index (one job), and every
    call scores on the driver with no Spark job.
    """

    def __init__(
        self, seen: DataFrame | Triples | Keyed, relevant: Relevant, n_items: int, k: int, on_driver: bool = False
    ):
        self.relevant, self.n_items, self.k, self.on_driver = relevant, n_items, k, on_driver
        if isinstance(seen, Triples) and on_driver:  # the pairs are on the driver already
            self._seen_on_driver(seen.u, seen.i)
            return
        if isinstance(seen, Keyed) and on_driver:  # filtered by their IDs as read: no indexed copy
            self._seen_on_driver(*seen.pairs_of(relevant.users))
            return
        seen = as_df(seen)
        if on_driver:  # a sample: its training pairs are collected once (one job), every call scores on the driver
            t = seen.where(F.col(USER_IDX).isin(relevant.users.tolist())).select(USER_IDX, ITEM_IDX).toArrow()
            self._seen_on_driver(t.column(USER_IDX).to_numpy(), t.column(ITEM_IDX).to_numpy())
            return
        wanted = seen.sparkSession.createDataFrame(pa.table({USER_IDX: pa.array(relevant.users, pa.int32())}))
        self.users = seen.join(F.broadcast(wanted), USER_IDX, "inner").cache()

    def _seen_on_driver(self, u: np.ndarray, i: np.ndarray) -> None:
        """The evaluated users' training items as CSR, from training pairs (others are skipped)."""
        users = self.relevant.users
        row = np.searchsorted(users, u)
        mine = (
            (row < users.size) & (users[np.minimum(row, max(users.size - 1, 0))] == u)
            if users.size
            else np.zeros(u.size, bool)
        )
        order = np.lexsort((i[mine], row[mine]))
        per_user = np.bincount(row[mine], minlength=users.size)
        self.seen_indptr = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)
        self.seen_cols = i[mine][order].astype(np.int32)

    def __call__(self, scorer: Scorer) -> dict[str, Any]:
        m = self.relevant.users.size
        if m == 0:
            return ranking_metrics(
                np.zeros((0, self.k), np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), self.n_items, self.k
            )
        if self.on_driver:
            f, u = scorer.factors, self.relevant.users
            offset_u = (f.mu + f.user_bias[u]) if f.user_bias is not None else None
            counts, items, scores = top_n(f.X[u], f.Y, self.k, self.seen_indptr, self.seen_cols, offset_u, f.item_bias)
            recs = TopLists.from_flat(m, self.k, np.arange(m), counts, items, scores).items.astype(np.int64)
            return ranking_metrics(recs, self.relevant.indptr, self.relevant.items, self.n_items, self.k)
        bc = session.broadcast(self.users.sparkSession, scorer)
        try:
            t = recommend_indices(bc, self.users, self.k).select(USER_IDX, "rank", ITEM_IDX).toArrow()
        finally:
            bc.unpersist(blocking=False)
        recs = np.full((m, self.k), -1, dtype=np.int64)
        row = np.searchsorted(self.relevant.users, t.column(USER_IDX).to_numpy())
        recs[row, t.column("rank").to_numpy() - 1] = t.column(ITEM_IDX).to_numpy()
        return ranking_metrics(recs, self.relevant.indptr, self.relevant.items, self.n_items, self.k)

    def close(self) -> None:
        if not self.on_driver:
            self.users.unpersist()


def ranking_of_top(top, relevant: Relevant, n_items: int, k: int) -> dict[str, Any]:
    """Ranking metrics at k from every user's top lists (als.TopLists, n >= k, training items
    already excluded): no scoring, no Spark job."""
    recs = top.items[relevant.users, :k].astype(np.int64)
    if recs.shape[1] < k:  # fewer items than k in the whole catalog
        recs = np.pad(recs, ((0, 0), (0, k - recs.shape[1])), constant_values=-1)
    return ranking_metrics(recs, relevant.indptr, relevant.items, n_items, k)


def tracker(
    heldout: HeldOut,
    kind: str,
    global_mean: float,
    rating_range: tuple[float, float] | None,
    ranking: RankingEvaluator | None = None,
) -> Callable[[int, Factors], dict[str, Any]]:
    """An on_iteration callback for als.fit: held-out RMSE (explicit) and NDCG@k (with `ranking`) of
    each iteration's factors (day biases come after the fit: the final metrics have them)."""

    def on_iteration(iteration: int, factors: Factors) -> dict[str, Any]:
        scorer = Scorer(kind, factors, global_mean, rating_range)
        out: dict[str, Any] = {"test_rmse": None}
        if kind == "explicit" and heldout.n:
            out["test_rmse"] = error_metrics(scorer, heldout)["rmse"]
        if ranking is not None:
            out["ndcg_at_k"] = ranking(scorer)["ndcg_at_k"]
        return out

    # als.fit need not pause its resident tasks for a callback that runs no Spark job
    on_iteration.spark_free = ranking is None or ranking.on_driver
    return on_iteration
