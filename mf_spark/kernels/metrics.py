"""Ranking metrics at k from recommended lists and held-out relevant items, numpy only.

For a user u with relevant held-out items R_u (|R_u| > 0) and a ranked list L_u of at most k items:

    precision@k = |L_u & R_u| / k            recall@k = |L_u & R_u| / |R_u|
    NDCG@k      = sum_{j : L_u[j] in R_u} 1/log2(j + 2)  /  sum_{j < min(k, |R_u|)} 1/log2(j + 2)
    MAP@k       = sum_j precision@(j+1) * [L_u[j] in R_u]  /  min(k, |R_u|)

each averaged over the users with at least one relevant item; catalog coverage is the share of all
items that appear in some list.
"""

from __future__ import annotations

import numpy as np


def hits(recs: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, n_items: int) -> np.ndarray:
    """(m, k) bool: recs[u, j] is one of user u's relevant items. recs holds -1 where a list is short.

    A binary search of each (user, item) key among the relevant ones, sorted: np.isin's hash-based
    path is several times slower on millions of keys."""
    m = recs.shape[0]
    if rel_indptr.shape != (m + 1,):
        raise ValueError(f"rel_indptr has shape {rel_indptr.shape}, expected ({m + 1},)")
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(rel_indptr))
    rel_keys = rows * n_items + rel_items.astype(np.int64)
    if rel_keys.size > 1 and np.any(rel_keys[1:] < rel_keys[:-1]):  # items not ascending within a user
        rel_keys = np.sort(rel_keys)
    rec_keys = np.arange(m, dtype=np.int64)[:, None] * n_items + recs.astype(np.int64)
    if not rel_keys.size:
        return np.zeros(recs.shape, bool)
    at = np.minimum(np.searchsorted(rel_keys, rec_keys), rel_keys.size - 1)
    return (rel_keys[at] == rec_keys) & (recs >= 0)


def ranking_sums(recs: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """(5,) float64: the users with at least one relevant item, and the sums over them of precision,
    recall, NDCG and AP at k; sums of disjoint sets of users add up (ranking_means).

    Parameters
    ----------
    recs : (m, >= k) int    ranked item indices per user, best first, -1 padding
    rel_indptr : (m + 1,) int64, rel_items : (r,) int   CSR of each user's relevant held-out items
    """
    recs = recs[:, :k]
    n_rel = np.diff(rel_indptr)
    users = n_rel > 0
    if not users.any():
        return np.zeros(5)
    h = hits(recs, rel_indptr, rel_items, n_items)[users].astype(np.float64)
    n_rel = n_rel[users].astype(np.float64)
    width = h.shape[1]
    dcg = h @ (1.0 / np.log2(np.arange(width) + 2.0))
    ideal_len = np.minimum(n_rel, k).astype(np.int64)
    idcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])[ideal_len]
    n_hit = h.sum(axis=1)
    prec_at_j = np.cumsum(h, axis=1) / np.arange(1, width + 1)
    ap = (prec_at_j * h).sum(axis=1) / np.minimum(n_rel, k)
    return np.array([n_hit.size, (n_hit / k).sum(), (n_hit / n_rel).sum(), (dcg / idcg).sum(), ap.sum()])


def ranking_means(sums: np.ndarray, coverage: float | None) -> dict[str, float | int | None]:
    """The metrics of ranking_sums (added over any partition of the users) and the catalog coverage."""
    n = int(sums[0])
    means = [float(v / n) if n else None for v in sums[1:]]
    keys = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k")
    return {**dict(zip(keys, means)), "coverage": coverage, "n_users_evaluated": n}


def coverage(recs: np.ndarray, n_items: int) -> float | None:
    """Share of the catalog listed in some row of `recs` (-1 padding)."""
    listed = recs[recs >= 0]
    return float(np.count_nonzero(np.bincount(listed, minlength=n_items)) / n_items) if n_items else None


def ranking_metrics(
    recs: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, n_items: int, k: int
) -> dict[str, float | int | None]:
    """precision/recall/ndcg/map at k, catalog coverage and the number of users evaluated (recs and
    the relevant items as ranking_sums takes them)."""
    return ranking_means(ranking_sums(recs, rel_indptr, rel_items, n_items, k), coverage(recs[:, :k], n_items))
