"""Names and array aliases shared by every stage.

Internal DataFrame columns after validation (original ID types kept):
    user, item        IDs as read: LongType when every ID is an integer, else StringType
    rating            DoubleType
    timestamp         LongType (seconds or any monotone unit), null when the input has none
After indexing:
    user_idx, item_idx  IntegerType dense indices, 0..n-1 (null for IDs unseen in train)
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

USER, ITEM, RATING, TIMESTAMP = "user", "item", "rating", "timestamp"
USER_IDX, ITEM_IDX = "user_idx", "item_idx"
SOURCE, ROW = "_source", "_row"          # input file, and read position for ordering / messages
REASON = "reason"
PART = "_part"                            # which given file (0 train, 1 test) a row came from

NPMatrix = npt.NDArray[np.float32]      # (n, k) factors
NPVector = npt.NDArray[np.float32]      # (n,) biases, ratings
NPIndex = npt.NDArray[np.int32]         # (n,) indices
