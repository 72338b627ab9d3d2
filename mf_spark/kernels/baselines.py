"""The simple models the field starts from, shaped as factors so that every scorer, top-N and
evaluation path of a factor model serves them unchanged:

    biases:           r_ui ~ mu + b_u + b_i, with damped means (LensKit's Bias): an item rated twice
                      moves its bias only a little away from zero (rank-0 factors)
    popularity:       score_ui = log(1 + n_i), the same for every user (a ranking, not a rating)
    zero_filled_svd:  the truncated SVD of the matrix with unobserved entries as 0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Baseline:
    """A baseline's factors and biases (the fields of types.Factors, which kernels do not import:
    `Factors(**vars(baseline))`); X and Y have no columns for the biases-only models."""

    X: np.ndarray
    Y: np.ndarray
    user_bias: np.ndarray | None
    item_bias: np.ndarray | None
    mu: float


def _check(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, ratings: np.ndarray | None) -> None:
    if users.shape != items.shape or (ratings is not None and ratings.shape != users.shape):
        raise ValueError(f"users {users.shape}, items {items.shape} and ratings must have one shape")
    for name, idx, n in (("users", users, n_users), ("items", items, n_items)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name}: indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")


def _damped_mean(rows: np.ndarray, values: np.ndarray, n: int, damping: float) -> np.ndarray:
    """sum of `values` per row / (its count + damping); 0 for a row with neither (0 / 0)."""
    total, count = np.bincount(rows, values, n), np.bincount(rows, minlength=n) + damping
    return np.divide(total, count, out=np.zeros(n), where=count > 0)


def biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    user_damping: float = 5.0,
    item_damping: float = 5.0,
) -> Baseline:
    """mu + b_u + b_i by damped means: mu the mean rating, b_i = sum_u (r_ui - mu) / (n_i + item_damping),
    then b_u = sum_i (r_ui - mu - b_i) / (n_u + user_damping). Rows without ratings get 0.

    Parameters
    ----------
    users, items : (m,) int     indices of the rated pairs
    ratings : (m,) float        their ratings
    user_damping, item_damping  pseudo-counts at the mean (>= 0; LensKit's default is 5 for both)
    """
    if user_damping < 0 or item_damping < 0:
        raise ValueError(f"damping must be >= 0, got users {user_damping}, items {item_damping}")
    _check(users, items, n_users, n_items, ratings)
    if not ratings.size:
        raise ValueError("biases: no ratings")
    r = ratings.astype(np.float64)
    mu = float(r.mean())
    left = r - mu
    bi = _damped_mean(items, left, n_items, item_damping)
    bu = _damped_mean(users, left - bi[items], n_users, user_damping)
    return Baseline(
        np.zeros((n_users, 0), np.float32),
        np.zeros((n_items, 0), np.float32),
        bu.astype(np.float32),
        bi.astype(np.float32),
        mu,
    )


def popularity(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Baseline:
    """Every user's scores are log(1 + number of the item's training pairs): the most popular first."""
    _check(users, items, n_users, n_items, None)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return Baseline(
        np.zeros((n_users, 0), np.float32),
        np.zeros((n_items, 0), np.float32),
        np.zeros(n_users, np.float32),
        np.log1p(counts).astype(np.float32),
        0.0,
    )


def _times(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, M: np.ndarray) -> np.ndarray:
    """(A @ M) for the sparse A with A[rows, cols] = values: one bincount per column of M."""
    out = np.empty((n_rows, M.shape[1]))
    for j in range(M.shape[1]):
        out[:, j] = np.bincount(rows, values * M[cols, j], n_rows)
    return out


def zero_filled_svd(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    rank: int,
    seed: int = 0,
    power_iterations: int = 4,
    oversample: int = 10,
) -> Baseline:
    """The rank-`rank` truncated SVD of the user x item matrix with every unobserved entry taken as 0,
    as factors: X = U sqrt(S), Y = V sqrt(S), so X Y^T is the best rank-k approximation of that matrix.
    The model weighted ALS improves on: zeros count as much as observed values. Randomized (Halko,
    Martinsson, Tropp 2011: a Gaussian sketch, `power_iterations` rounds of A A^T, then the SVD of the
    small projected matrix) over the sparse matrix: the dense matrix is never formed."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    _check(users, items, n_users, n_items, values)
    v = values.astype(np.float64)
    width = min(rank + oversample, n_users, n_items)
    Q = np.linalg.qr(_times(users, items, v, n_users, np.random.default_rng(seed).standard_normal((n_items, width))))[0]
    for _ in range(power_iterations):
        Z = np.linalg.qr(_times(items, users, v, n_items, Q))[0]  # A^T Q
        Q = np.linalg.qr(_times(users, items, v, n_users, Z))[0]  # A Z
    B = _times(items, users, v, n_items, Q).T  # Q^T A, (width, n_items)
    Ub, s, Vt = np.linalg.svd(B, full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    X = np.zeros((n_users, rank), np.float32)
    Y = np.zeros((n_items, rank), np.float32)
    X[:, :k] = (Q @ Ub[:, :k]) * root
    Y[:, :k] = Vt[:k].T * root
    return Baseline(X, Y, None, None, 0.0)
