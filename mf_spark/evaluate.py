"""Held-out evaluation: RMSE / MAE of clipped predictions, ranking metrics at k, and the tracker.

The held-out split is on the driver (ready.HeldOut), its IDs looked up in the ID maps: the driver
already holds both factor matrices in the broadcast strategy, so error metrics cost one gather and
one row-wise dot product, and no Spark job. Where the executors read the input and more rows were
held out than eval.driver_rows, the driver holds a sample of users' rows (for the history and the
tune job) and InTasks computes the final metrics where the tasks keep every row.

Ranking metrics need every item scored for each evaluated user with its training items excluded:
that runs on the executors (one narrow mapInArrow with broadcast factors, topn.recommend_indices)
and only the k best indices per user come back to the driver, where kernels.metrics compares them
with the held-out relevant items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from mf_spark.als.loop import TopLists
from mf_spark.core import session
from mf_spark.core.config import RunConfig
from mf_spark.core.types import ITEM, ITEM_IDX, RATING, TIMESTAMP, USER, USER_IDX, Factors
from mf_spark.data.index import IdMap
from mf_spark.data.ready import HeldOut, Keyed, Triples, as_df, timestamps, typed_pieces
from mf_spark.kernels.metrics import coverage, ranking_means, ranking_metrics, ranking_sums
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


# The smallest positive float: `r >= POSITIVE` is `r > 0`. An implicit held-out value > 0 is an
# interaction; one < 0 (data.nonpositive = "negative") is a dislike, which a top list must not be
# credited for.
POSITIVE = math.ulp(0.0)


def relevance_threshold(run: RunConfig) -> float | None:
    """The rating from which a held-out item is relevant: eval.relevant_threshold for explicit
    models (unset: every held-out item); POSITIVE for implicit ones (every interaction, no dislike)."""
    return run.eval.relevant_threshold if run.model.kind == "explicit" else POSITIVE


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
        return ranking_metrics(self.lists(scorer), self.relevant.indptr, self.relevant.items, self.n_items, self.k)

    def lists(self, scorer: Scorer) -> np.ndarray:
        """(m, k) int64: the k best unseen items of each evaluated user, best first, -1 padding."""
        m = self.relevant.users.size
        recs = np.full((m, self.k), -1, dtype=np.int64)
        if m == 0:
            return recs
        if self.on_driver:
            f, u = scorer.factors, self.relevant.users
            offset_u = (f.mu + f.user_bias[u]) if f.user_bias is not None else None
            counts, items, scores = top_n(f.X[u], f.Y, self.k, self.seen_indptr, self.seen_cols, offset_u, f.item_bias)
            return TopLists.from_flat(m, self.k, np.arange(m), counts, items, scores).items.astype(np.int64)
        bc = session.broadcast(self.users.sparkSession, scorer)
        try:
            t = recommend_indices(bc, self.users, self.k).select(USER_IDX, "rank", ITEM_IDX).toArrow()
        finally:
            bc.unpersist(blocking=False)
        row = np.searchsorted(self.relevant.users, t.column(USER_IDX).to_numpy())
        recs[row, t.column("rank").to_numpy() - 1] = t.column(ITEM_IDX).to_numpy()
        return recs

    def close(self) -> None:
        if not self.on_driver:
            self.users.unpersist()


def top_lists(top: TopLists, k: int) -> np.ndarray:
    """(users, k) int64 of every user's top lists (n >= k, training items already excluded), -1 padding."""
    recs = top.items[:, :k].astype(np.int64)
    if recs.shape[1] < k:  # fewer items than k in the whole catalog
        recs = np.pad(recs, ((0, 0), (0, k - recs.shape[1])), constant_values=-1)
    return recs


def ranking_of_top(top: TopLists, relevant: Relevant, n_items: int, k: int) -> dict[str, Any]:
    """Ranking metrics at k from every user's top lists: no scoring, no Spark job."""
    return ranking_metrics(top_lists(top, k)[relevant.users], relevant.indptr, relevant.items, n_items, k)


# What each task of InTasks adds up: rows, squared and absolute errors, then ranking_sums'.
_SUMS = ("n", "sse", "sae", "users", "precision", "recall", "ndcg", "map")


def _relevant(t: pa.Table, users: IdMap, items: IdMap, threshold: float | None):
    """(user, item, rating) of held-out rows with the maps' indices, and the mask of the relevant ones."""
    u, i = users.index_of(t.column(USER)), items.index_of(t.column(ITEM))
    r = t.column(RATING).to_numpy().astype(np.float64)
    keep = (u >= 0) & (i >= 0)
    if threshold is not None:
        keep &= r >= threshold
    return u, i, r, keep


class InTasks:
    """The final metrics where the executors keep every held-out row (HeldOut.rest): the tasks look
    the IDs up, predict, and rank each of their users' relevant items against the given top lists
    (a task holds whole users); the driver adds up a row of sums per task.
    `evaluated_users` (one job) names the users whose lists are needed, where the fit left none."""

    def __init__(self, heldout: HeldOut, users: IdMap, items: IdMap, threshold: float | None, k: int):
        self.rest, self.users, self.items, self.threshold, self.k = heldout.rest, users, items, threshold, k
        self._evaluated: np.ndarray | None = None
        self._evaluator: RankingEvaluator | None = None

    def evaluated_users(self) -> np.ndarray:
        """Ascending indices of the known users with a relevant known item."""
        if self._evaluated is not None:
            return self._evaluated
        types, users, items, threshold = self.rest.types, self.users, self.items, self.threshold

        def evaluated(batches):
            for t in typed_pieces(batches, types):
                u, _, _, keep = _relevant(t, users, items, threshold)
                yield pa.RecordBatch.from_pydict({USER_IDX: pa.array(np.unique(u[keep]), pa.int32())})

        t = self.rest.packed.mapInArrow(evaluated, f"{USER_IDX} int").toArrow()
        self._evaluated = np.unique(t.column(USER_IDX).to_numpy()).astype(np.int32)
        return self._evaluated

    def lists(self, seen: DataFrame, scorer: Scorer) -> np.ndarray:
        """(users, k) top lists of the evaluated users (RankingEvaluator's `seen`, the same every
        call: the evaluator is made once, `close` drops it), -1 rows elsewhere."""
        users = self.evaluated_users()
        if self._evaluator is None:
            wanted = Relevant(users, np.zeros(users.size + 1, np.int64), np.zeros(0, np.int32))
            self._evaluator = RankingEvaluator(seen, wanted, self.items.size, self.k)
        recs = np.full((self.users.size, self.k), -1, np.int64)
        recs[users] = self._evaluator.lists(scorer)
        return recs

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def __call__(self, scorer: Scorer, recs: np.ndarray) -> dict[str, Any]:
        """Error metrics (explicit models) and ranking metrics at k; `recs`: (users, k) top lists of
        every user (-1 rows where a user is not evaluated)."""
        types, users, items, threshold, k = self.rest.types, self.users, self.items, self.threshold, self.k
        explicit, n_items = scorer.kind == "explicit", items.size
        schema = pa.schema([(c, pa.float64()) for c in _SUMS] + [(USER_IDX, pa.binary())])
        shipped = session.broadcast(self.rest.packed.sparkSession, (scorer, recs.astype(np.int32)))

        def sums(batches):
            tables = list(typed_pieces(batches, types))
            if not tables:
                return
            t = pa.concat_tables(tables)
            sc, lists = shipped.value
            u, i, r, keep = _relevant(t, users, items, threshold)
            sse = sae = 0.0
            if explicit:
                err = sc.predict_idx(u, i, timestamps(t.column(TIMESTAMP), t.num_rows)) - r
                sse, sae = float(err @ err), float(np.abs(err).sum())
            order = np.lexsort((i[keep], u[keep]))
            uu, ii = u[keep][order], i[keep][order]
            evaluated, starts = np.unique(uu, return_index=True)
            indptr = np.append(starts, uu.size).astype(np.int64)
            row = dict(zip(_SUMS, [t.num_rows, sse, sae, *ranking_sums(lists[evaluated], indptr, ii, n_items, k)]))
            row = {c: [float(v)] for c, v in row.items()}
            yield pa.RecordBatch.from_pydict({**row, USER_IDX: [evaluated.astype(np.int32).tobytes()]}, schema)

        try:
            got = self.rest.packed.mapInArrow(sums, from_arrow_schema(schema)).toArrow()
        finally:
            shipped.unpersist(blocking=False)
        total = {c: float(pc.sum(got.column(c)).as_py() or 0.0) for c in _SUMS}
        evaluated = np.concatenate(
            [np.zeros(0, np.int32)] + [np.frombuffer(b, np.int32) for b in got.column(USER_IDX).to_pylist()]
        )
        n, errors = total["n"], {"rmse": None, "mae": None}
        if explicit and n:
            errors = {"rmse": float(np.sqrt(total["sse"] / n)), "mae": total["sae"] / n}
        ranked = np.array([total[c] for c in _SUMS[3:]])
        return {**errors, **ranking_means(ranked, coverage(recs[evaluated], n_items))}


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
