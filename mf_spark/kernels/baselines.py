"""The simple models the field starts from, as rank-0 factors: biases only, and popularity.

Both are Factors-shaped (X and Y with no columns, the model in the biases), so every scorer,
top-N and evaluation path of a factor model serves them unchanged:

    biases:      r_ui ~ mu + b_u + b_i, with damped means (LensKit's Bias): an item rated twice
                 moves its bias only a little away from zero
    popularity:  score_ui = log(1 + n_i), the same for every user (a ranking, not a rating)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankZero:
    """Biases-only factors: X (n_users, 0), Y (n_items, 0), the biases and mu (the fields of
    types.Factors, which kernels do not import: `Factors(**vars(rank_zero))`)."""
    X: np.ndarray
    Y: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
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


def biases(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int,
           user_damping: float = 5.0, item_damping: float = 5.0) -> RankZero:
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
    return RankZero(np.zeros((n_users, 0), np.float32), np.zeros((n_items, 0), np.float32),
                    bu.astype(np.float32), bi.astype(np.float32), mu)


def popularity(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> RankZero:
    """Every user's scores are log(1 + number of the item's training pairs): the most popular first."""
    _check(users, items, n_users, n_items, None)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return RankZero(np.zeros((n_users, 0), np.float32), np.zeros((n_items, 0), np.float32),
                    np.zeros(n_users, np.float32), np.log1p(counts).astype(np.float32), 0.0)
