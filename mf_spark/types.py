"""Names, array aliases and the factors type shared by every stage.

Internal DataFrame columns after validation (original ID types kept):
    user, item        IDs as read: LongType when every ID is an integer, else StringType
    rating            DoubleType
    timestamp         LongType (seconds or any monotone unit), null when the input has none
After indexing:
    user_idx, item_idx  IntegerType dense indices, 0..n-1 (null for IDs unseen in train)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

USER, ITEM, RATING, TIMESTAMP = "user", "item", "rating", "timestamp"
USER_IDX, ITEM_IDX = "user_idx", "item_idx"
SOURCE, ROW = "_source", "_row"          # input file, and read position for ordering / messages
REASON = "reason"
PART = "_part"                            # which given file (0 train, 1 test) a row came from
MALFORMED = "_malformed"                  # raw rows: why the row's fields cannot be trusted, else null

NPMatrix = npt.NDArray[np.float32]      # (n, k) factors
NPVector = npt.NDArray[np.float32]      # (n,) biases, ratings
NPIndex = npt.NDArray[np.int32]         # (n,) indices


@dataclass(frozen=True)
class Factors:
    """Factors of both sides and the global mean; biases are None without biases."""
    X: np.ndarray                # (n_users, k) float32
    Y: np.ndarray                # (n_items, k) float32
    user_bias: np.ndarray | None # (n_users,) float32
    item_bias: np.ndarray | None # (n_items,) float32
    mu: float

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.Y.ndim != 2 or self.X.shape[1] != self.Y.shape[1]:
            raise ValueError(f"factor shapes disagree: users {self.X.shape}, items {self.Y.shape}")
        for name, b, n in (("user", self.user_bias, self.X.shape[0]), ("item", self.item_bias, self.Y.shape[0])):
            if b is not None and b.shape != (n,):
                raise ValueError(f"{name} biases have shape {b.shape}, expected ({n},)")
