"""Deterministic factor initialization from (seed, side, global index) alone.

A counter-based generator (splitmix64 finalizer over the counter `(seed, side, index, component)`)
gives the same row for an index whatever the number of blocks, partitions or executors, without a
Python loop or a per-row RandomState.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SIDES = {"user": 1, "item": 2}


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, element-wise on uint64 (wraps modulo 2^64 by design)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int, side: int, index: np.ndarray, n_cols: int, stream: int) -> np.ndarray:
    """(n, n_cols) float64 in (0, 1), a pure function of (seed, side, index, column, stream)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(side * 4 + stream))
        counter = index.astype(np.uint64)[:, None] * np.uint64(n_cols) + np.arange(n_cols, dtype=np.uint64)
        bits = _mix(counter * _GOLDEN + key)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def init_factors(seed: int, side: str, index: np.ndarray, rank: int, nonnegative: bool = False) -> np.ndarray:
    """Initial factor rows for global indices `index` of `side` ("user" or "item").

    Rows are standard normal draws (Box-Muller) scaled to unit length, as MLlib does; with
    `nonnegative` their absolute values. Returns (len(index), rank) float32.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {sorted(SIDES)}, got {side!r}")
    index = np.asarray(index, dtype=np.int64)
    u1 = _uniform(seed, SIDES[side], index, rank, 0)
    u2 = _uniform(seed, SIDES[side], index, rank, 1)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    if nonnegative:
        z = np.abs(z)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z.astype(np.float32)
