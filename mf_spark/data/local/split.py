"""`split.flag` on the driver: the same rows go to test, by the same hash (kernels.hashing) and the
same per-user ranks, so a run gives the same split whichever front end read its input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mf_spark.core.config import SplitConfig
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.core.types import ITEM, RATING, TIMESTAMP, USER
from mf_spark.data import split as spark_split
from mf_spark.kernels import compiled


def _utf8(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets) of the values' text, as Spark casts them to string."""
    text = (values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values).cast(pa.large_string())
    if text.null_count:
        raise ValueError("uniform_hash: null IDs cannot be hashed")
    offsets = np.frombuffer(text.buffers()[1], np.int64)[text.offset : text.offset + len(text) + 1]
    data = text.buffers()[2]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def uniform_hash(seed: int, users: pa.Array | pa.ChunkedArray, items: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """split.uniform_hash of the same (seed, user, item), bit for bit (kernels.compiled.uniform_hash)."""
    return compiled.uniform_hash(seed, *_utf8(users), *_utf8(items))


def _text_rank(values: pa.Array) -> np.ndarray:
    """Each value's position in the byte order of the values' text (Spark's string order)."""
    text = values.cast(pa.string())
    return pc.rank(text, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """Spark's round(x, 0) of non-negative doubles (HALF_UP on the exact value)."""
    whole = np.floor(x)
    return whole + ((x - whole) >= 0.5)


def no_timestamps() -> InputError:
    return InputError(
        "split.method = 'temporal' needs timestamps, but every timestamp is null; "
        "set data.timestamp_col or use split.method = per_user"
    )


def test_mask(ratings: pa.Table, cfg: SplitConfig, whole: bool = True) -> np.ndarray:
    """(n,) bool, True = test, exactly as split.flag marks the same rows. Raises what split.flag
    raises (temporal without timestamps, an unknown method). A user's rows are split together and
    apart from other users', so any grouping by user gives the same rows; `whole` = False: the rows
    are one such group, and whether any row has a timestamp is the caller's to check."""
    if cfg.method not in spark_split.METHODS:
        raise ConfigError(f"config key split.method: got {cfg.method!r}, expected one of {spark_split.METHODS}")
    users, items = ratings.column(USER), ratings.column(ITEM)
    h = uniform_hash(cfg.seed, users, items)
    f = cfg.test_fraction
    if cfg.method == "random":
        return h < f
    user = pc.dictionary_encode(users.combine_chunks()).indices.to_numpy().astype(np.int64)
    tail = (ratings.column(RATING).to_numpy(), _text_rank(items.combine_chunks()))  # lexsort: last key first
    if cfg.method == "per_user":
        order = np.lexsort((*tail, h, user))
    else:
        ts = ratings.column(TIMESTAMP)
        if whole and ts.null_count == len(ts):
            raise no_timestamps()
        has = ts.is_valid().to_numpy(zero_copy_only=False)
        stamp = ts.fill_null(0).to_numpy().astype(np.int64)
        # Latest first, rows without a timestamp after the user's timestamped rows; ties by h, latest first.
        order = np.lexsort((*tail, -h, -np.where(has, stamp, 0), ~has, user))
    sorted_user = user[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_user[1:] != sorted_user[:-1]]))
    sizes = np.diff(np.append(starts, order.size))
    rank = np.arange(order.size) - np.repeat(starts, sizes) + 1
    n_u = np.repeat(sizes, sizes).astype(np.float64)
    n_test = np.minimum(_round_half_up(n_u * f), n_u - 1)
    out = np.empty(order.size, bool)
    out[order] = rank <= n_test
    return out
