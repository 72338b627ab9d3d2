"""Top-N items per user: chunked X_chunk @ Y^T, seen items masked, the best n per user picked and sorted."""

from __future__ import annotations

import numpy as np

from mf_spark.kernels import compiled

# 1 Mi scores (4 MiB) per chunk of users: bounded task memory, and the passes after the product stay
# in cache. A quarter of that was slower; four times that gained only at high rank or with many items.
SCORE_FLOATS = 1 << 20


def top_n(
    X: np.ndarray,
    Y: np.ndarray,
    n: int,
    seen_indptr: np.ndarray | None = None,
    seen_cols: np.ndarray | None = None,
    user_offset: np.ndarray | None = None,
    item_offset: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n best items for each row of X.

    Parameters
    ----------
    X : (b, k) float32             factors of the users to score
    Y : (n_items, k) float32       item factors
    seen_indptr : (b + 1,) int64   CSR of the items to exclude per user (None = exclude nothing)
    seen_cols : (m,) int32
    user_offset : (b,) float32     added to every score of a user (mu + b_u); does not change ranks
    item_offset : (n_items,) float32  added to every score of an item (b_i)
    backend : str                   how each chunk's best n are picked: compiled (one comparison per
                                   score, kernels.compiled.best_rows), numpy (argpartition, then a
                                   sort of the n), or auto (compiled where numba is installed)
    Returns (counts (b,) int32, items (sum counts,) int32, scores float32): per user the best
    min(n, unseen items) items, best first (ties by lower item index), flattened in user order.
    """
    b, n_items = X.shape[0], Y.shape[0]
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"rank mismatch: users {X.shape}, items {Y.shape}")
    if seen_indptr is not None and seen_indptr.shape != (b + 1,):
        raise ValueError(f"seen_indptr has shape {seen_indptr.shape}, expected ({b + 1},)")
    compiled_select = compiled.chosen(backend)
    n = min(n, n_items)
    step = max(1, SCORE_FLOATS // max(n_items, 1))
    counts = np.zeros(b, dtype=np.int32)
    out_items, out_scores = [], []
    YT = np.ascontiguousarray(Y.T, dtype=np.float32)
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        S = X[lo:hi] @ YT  # (c, n_items)
        if item_offset is not None:
            S += item_offset[None, :]
        if seen_indptr is not None:
            s0, s1 = seen_indptr[lo], seen_indptr[hi]
            rows = np.repeat(np.arange(hi - lo), np.diff(seen_indptr[lo : hi + 1]))
            S[rows, seen_cols[s0:s1]] = -np.inf
        if compiled_select and n > 0:
            part, top = compiled.best_rows(S, n)
        else:
            part = _best(S, n)
            top = np.take_along_axis(S, part, axis=1)
            order = np.lexsort((part, -top), axis=1)  # by score, ties by lower item index
            part = np.take_along_axis(part, order, axis=1)
            top = np.take_along_axis(top, order, axis=1)
        if user_offset is not None:
            top = top + user_offset[lo:hi, None]
        valid = np.isfinite(top)
        counts[lo:hi] = valid.sum(axis=1)
        out_items.append(part[valid].astype(np.int32))
        out_scores.append(top[valid].astype(np.float32))
    if not out_items:
        return counts, np.zeros(0, np.int32), np.zeros(0, np.float32)
    return counts, np.concatenate(out_items), np.concatenate(out_scores)


def _best(S: np.ndarray, n: int) -> np.ndarray:
    """(c, n) indices of the n largest scores per row; at the cut-off, ties go to lower indices.

    np.argpartition finds n largest in linear time but breaks ties at the cut-off arbitrarily; a row
    has such a tie only when more than n of its scores reach the n-th largest (one comparison pass
    tells), and only those rows go through `_best_exact`. (The exact rule on every row is several
    times slower.)
    """
    m = S.shape[1]
    if n >= m:
        return np.tile(np.arange(m), (S.shape[0], 1))
    part = np.argpartition(S, m - n, axis=1)[:, m - n :]
    t = np.take_along_axis(S, part, axis=1).min(axis=1, keepdims=True)
    tied = np.count_nonzero(S >= t, axis=1) > n
    if tied.any():
        part[tied] = _best_exact(S[tied], n)
    return part


def _best_exact(S: np.ndarray, n: int) -> np.ndarray:
    """`_best` by the rule itself: the n-th largest value t comes from np.partition (linear time);
    every score > t is kept, and the remaining places go to the first scores == t in index order (a
    stable sort of a boolean mask)."""
    t = -np.partition(-S, n - 1, axis=1)[:, n - 1 : n]
    above = S > t
    tied = S == t
    room = n - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.argsort(~keep, axis=1, kind="stable")[:, :n]


def positions(counts: np.ndarray) -> np.ndarray:
    """The 0-based place of every entry in its list, for lists laid end to end (top_n's flat layout)
    with counts[j] entries in list j: counts [2, 0, 3] -> [0, 1, 0, 1, 2]. Rank = place + 1."""
    counts = np.asarray(counts, np.int64)
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
