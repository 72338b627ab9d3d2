"""Deterministic factor initialization, two ways (model.init).

`init_factors`: from (seed, side, global index) alone. A counter-based generator (splitmix64
finalizer over the counter `(seed, side, index, component)`) gives the same row for an index
whatever the number of blocks, partitions or executors, without a Python loop or a per-row
RandomState.

`mllib_factors`: the rows Spark MLlib's ALS starts its users from, drawn as it draws them. Its
user half-step never runs first (items are solved from the users), so with its settings the same
input and seed then give MLlib's model. MLlib puts user ID v in block v mod num_blocks (a
HashPartitioner on the int ID), orders each block's IDs ascending, and draws block b's rows, one
after another, from

    XORShiftRandom(byteswap64(XORShiftRandom(seed).nextLong() ^ b)).nextGaussian()

each row scaled to unit length in float32. Spark's XORShiftRandom hashes its seed with Scala's
MurmurHash3 of the seed's 8 big-endian bytes (`_hash_seed`); its draws come from
kernels.compiled.java_gaussians. Only the layout depends on num_blocks, never on where the fit
runs.
"""

from __future__ import annotations

import numpy as np

from mf_spark.kernels import compiled

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


_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1
_MURMUR_ARRAY_SEED = 0x3C074A61  # scala.util.hashing.MurmurHash3.arraySeed
_BYTESWAP = 0x9E3775CD9E3775CD  # scala.util.hashing.byteswap64's multiplier


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _murmur_mix_last(h: int, k: int) -> int:
    k = _rotl32((k * 0xCC9E2D51) & _M32, 15)
    return h ^ ((k * 0x1B873593) & _M32)


def _murmur_bytes(data: bytes, seed: int) -> int:
    """scala.util.hashing.MurmurHash3.bytesHash(data, seed), as an unsigned 32-bit value."""
    h = seed & _M32
    body = len(data) // 4 * 4
    for at in range(0, body, 4):
        h = (_rotl32(_murmur_mix_last(h, int.from_bytes(data[at : at + 4], "little")), 13) * 5 + 0xE6546B64) & _M32
    if len(data) > body:
        h = _murmur_mix_last(h, int.from_bytes(data[body:], "little"))
    h ^= len(data)
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _M32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _hash_seed(seed: int) -> int:
    """XORShiftRandom.hashSeed: the generator's state for a seed (unsigned 64-bit)."""
    data = (seed & _M64).to_bytes(8, "big")
    low = _murmur_bytes(data, _MURMUR_ARRAY_SEED)
    high = _murmur_bytes(data, low)
    return (high << 32) | low


def _next(state: int, bits: int) -> tuple[int, int]:
    """XORShiftRandom.next(bits): the new state and the draw (a signed int for 32 bits)."""
    state ^= (state << 21) & _M64
    state ^= state >> 35
    state ^= (state << 4) & _M64
    value = state & ((1 << bits) - 1)
    return state, value - (1 << 32) if bits == 32 and value >> 31 else value


def _next_long(state: int) -> tuple[int, int]:
    """java.util.Random.nextLong() over XORShiftRandom: the new state and the value (unsigned)."""
    state, high = _next(state, 32)
    state, low = _next(state, 32)
    return state, ((high << 32) + low) & _M64


def _byteswap64(v: int) -> int:
    h = (v * _BYTESWAP) & _M64
    return (int.from_bytes(h.to_bytes(8, "little"), "big") * _BYTESWAP) & _M64


def mllib_factors(seed: int, ids: np.ndarray, rank: int, num_blocks: int) -> np.ndarray:
    """(len(ids), rank) float32: MLlib's initial factor rows for the sorted distinct int IDs `ids` of
    the side it starts from (the users), with its `num_blocks` blocks (module docstring)."""
    ids = np.asarray(ids, np.int64)
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
    _, side_seed = _next_long(_hash_seed(seed))
    block = np.mod(ids, num_blocks)  # Spark's nonNegativeMod
    order = np.argsort(block, kind="stable")  # ascending IDs within each block
    starts = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=num_blocks))])
    out = np.empty((ids.size, rank), np.float32)
    for b in np.flatnonzero(np.diff(starts)):
        rows = order[starts[b] : starts[b + 1]]
        state = _hash_seed(_byteswap64(side_seed ^ int(b)))
        drawn = compiled.java_gaussians(state, rows.size * rank).astype(np.float32).reshape(rows.size, rank)
        norm = np.sqrt(np.sum(drawn.astype(np.float64) ** 2, axis=1)).astype(np.float32)
        out[rows] = drawn * (np.float32(1.0) / norm)[:, None]
    return out
