"""Names, array aliases and the factors type shared by every stage.

Internal DataFrame columns after validation (original ID types kept):
    user, item        IDs as read: LongType when every ID is an integer, else StringType
    rating            DoubleType
    timestamp         LongType (seconds or any monotone unit), null when the input has none
After indexing:
    user_idx, item_idx  IntegerType dense indices, 0..n-1 (null for IDs unseen in train)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

USER, ITEM, RATING, TIMESTAMP = "user", "item", "rating", "timestamp"
USER_IDX, ITEM_IDX = "user_idx", "item_idx"
SOURCE, ROW = "_source", "_row"  # input file, and the row's position in it (ordering, messages)
FILE = "_file"  # the input file's position in its sorted file list (orders rows across files)
REASON = "reason"
PART = "_part"  # which given file (0 train, 1 test) a row came from
MALFORMED = "_malformed"  # raw rows: why the row's fields cannot be trusted, else null

NPMatrix = npt.NDArray[np.float32]  # (n, k) factors
NPVector = npt.NDArray[np.float32]  # (n,) biases, ratings
NPIndex = npt.NDArray[np.int32]  # (n,) indices
NO_TIME = np.iinfo(np.int64).min  # a rating's timestamp in driver arrays when it has none


@dataclass(frozen=True)
class Factors:
    """Factors of both sides and the global mean; biases are None without biases."""

    X: np.ndarray  # (n_users, k) float32
    Y: np.ndarray  # (n_items, k) float32
    user_bias: np.ndarray | None  # (n_users,) float32
    item_bias: np.ndarray | None  # (n_items,) float32
    mu: float

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.Y.ndim != 2 or self.X.shape[1] != self.Y.shape[1]:
            raise ValueError(f"factor shapes disagree: users {self.X.shape}, items {self.Y.shape}")
        for name, b, n in (("user", self.user_bias, self.X.shape[0]), ("item", self.item_bias, self.Y.shape[0])):
            if b is not None and b.shape != (n,):
                raise ValueError(f"{name} biases have shape {b.shape}, expected ({n},)")


@dataclass(frozen=True)
class DayBiases:
    """Offsets of a user's ratings on one day (explicit models): the day-specific user bias of
    Koren's timeSVD. A user rates a day's items in one mood, against one reference; an offset per
    (user, day), fitted to the residuals of the user's ratings that day, lifts or lowers every
    prediction for that user on that day, and for a day it has not seen, none. A day is
    timestamp // day_length (timestamps in seconds: day_length 86400).

    With `factors`, each (user, day) also has a factor offset d_ud (Koren's day-specific user
    factor): a prediction for that user on that day adds d_ud . y_i, the session's taste beside its
    mood."""

    day_length: int
    users: np.ndarray  # (m,) int32 user indices, ascending by (user, day)
    days: np.ndarray  # (m,) int64
    bias: np.ndarray  # (m,) float32
    factors: np.ndarray | None = None  # (m, k) float32 factor offsets, or None

    def __post_init__(self) -> None:
        if not (self.users.shape == self.days.shape == self.bias.shape) or self.users.ndim != 1:
            raise ValueError(f"day biases: users {self.users.shape}, days {self.days.shape}, bias {self.bias.shape}")
        self._check_offsets(self.factors)
        if self.day_length < 1:
            raise ValueError(f"day biases: day_length {self.day_length}, expected an integer >= 1")
        # (user, day) as one sortable key: the user times the number of distinct days plus the day's
        # position among them
        values = np.unique(self.days)
        keys = self.users.astype(np.int64) * max(values.size, 1) + np.searchsorted(values, self.days)
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            raise ValueError("day biases: (user, day) pairs must be unique and sorted")
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_keys", keys)

    @property
    def size(self) -> int:
        return int(self.bias.size)

    def with_bias(self, bias: np.ndarray) -> "DayBiases":
        """The same (user, day) pairs with other offsets and no factor offsets, their keys reused (a
        refit of the offsets)."""
        if bias.shape != self.bias.shape:
            raise ValueError(f"day biases: {bias.shape} offsets for {self.bias.shape} (user, day) pairs")
        out = copy.copy(self)
        object.__setattr__(out, "bias", np.asarray(bias, np.float32))
        object.__setattr__(out, "factors", None)
        return out

    def _check_offsets(self, factors: np.ndarray | None) -> None:
        if factors is not None and (factors.ndim != 2 or factors.shape[0] != self.bias.size):
            raise ValueError(f"day biases: factor offsets {factors.shape} for {self.bias.size} (user, day) pairs")

    def with_factors(self, factors: np.ndarray | None) -> "DayBiases":
        """These offsets with the factor offsets `factors` ((m, k), or None for none)."""
        self._check_offsets(factors)
        out = copy.copy(self)
        object.__setattr__(out, "factors", None if factors is None else np.asarray(factors, np.float32))
        return out

    def positions(self, u: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
        """Where each (user index, timestamp) pair's (user, day) is, int64: -1 for an unknown user
        (-1), a missing timestamp (NO_TIME) or a day the user did not rate on in training. The same
        for every `with_bias` of these offsets, so a caller scoring the same rows often keeps them."""
        u = np.asarray(u, np.int64)
        out = np.full(u.size, -1, np.int64)
        if timestamps is None or not self.size:
            return out
        ts = np.asarray(timestamps, np.int64)
        day = ts // self.day_length
        values, keys = self._values, self._keys
        pos = np.minimum(np.searchsorted(values, day), values.size - 1)
        ok = (u >= 0) & (ts != NO_TIME) & (values[pos] == day)
        key = u * values.size + pos
        at = np.minimum(np.searchsorted(keys, key), keys.size - 1)
        ok &= keys[at] == key
        out[ok] = at[ok]
        return out

    def offsets(
        self, positions: np.ndarray, items: np.ndarray | None = None, Y: np.ndarray | None = None
    ) -> np.ndarray:
        """The offsets at `positions` (from `positions`), float64; 0 where -1. With factor offsets,
        the item indices `items` (-1 = unknown) and the item factors `Y`, plus d_ud . y_i."""
        found = positions >= 0
        at = np.where(found, positions, 0)
        out = np.where(found, self.bias[at] if self.size else 0.0, 0.0)
        if self.factors is not None and self.size and items is not None:
            items = np.asarray(items, np.int64)
            both = found & (items >= 0)
            rows = np.flatnonzero(both)
            out[rows] += np.einsum("ij,ij->i", self.factors[at[rows]].astype(np.float64), Y[items[rows]])
        return out

    def lookup(self, u: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
        """The offset of each (user index, timestamp) pair, float64 (0 where `positions` is -1)."""
        return self.offsets(self.positions(u, timestamps))
