"""Write a deterministic synthetic ratings Parquet file of any size.

    python scripts/make_synthetic.py --ratings 1000000 --kind explicit --output synth_1m.parquet
    python scripts/make_synthetic.py --ratings 500000 --kind implicit --output plays.parquet

Shape follows MovieLens (1M ratings ~ 6k users x 4k items; 20M ~ 138k x 27k; both sides grow as
n^0.74). User activity and item popularity are power laws; preferences come from a planted rank-r
model. Explicit ratings are 1..5 (planted score + noise, rounded). Implicit ratings are play or click
counts with a heavy tail: most users have a handful, a few have tens of thousands in total. Columns:
user (long), item (long), rating (double), timestamp (long). Same arguments, same file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# At most this fraction of all (user, item) pairs is rated. MovieLens is far sparser (ML-1M 4.5%,
# ML-20M 0.5%, ml-latest-small 1.7%); the cap only matters below ~100k ratings, where the power laws
# alone give fewer pairs than ratings asked for, and drawing distinct pairs could not finish.
MAX_DENSITY = 0.25


def shape(n_ratings: int) -> tuple[int, int]:
    """(users, items) of a MovieLens-like matrix with n_ratings entries: ML-1M is 6,040 x 3,706 and
    ML-20M 138,493 x 26,744, so users grow as n^1.045 and items as n^0.663 between (and beyond) them.
    Small sizes are widened on both sides by one factor until the density is at most MAX_DENSITY."""
    scale = n_ratings / 1e6
    users, items = max(20, int(6040 * scale**1.045)), max(20, int(3700 * scale**0.663))
    widen = np.sqrt(n_ratings / (MAX_DENSITY * users * items))
    if widen > 1.0:
        users, items = int(np.ceil(users * widen)), int(np.ceil(items * widen))
    return users, items


def power_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    w = rng.pareto(exponent, n) + 1.0
    return w / w.sum()


def generate(n_ratings: int, kind: str, rank: int = 10, seed: int = 0) -> pa.Table:
    if n_ratings < 1:
        raise ValueError(f"make_synthetic: --ratings must be at least 1, got {n_ratings}")
    rng = np.random.default_rng(seed)
    n_users, n_items = shape(n_ratings)
    activity = power_weights(rng, n_users, 1.2)
    popularity = power_weights(rng, n_items, 1.0)
    U = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    V = rng.normal(size=(n_items, rank))
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(1000):  # draw pairs, keep them with probability sigmoid(affinity)
        if keys.size >= n_ratings:
            break
        m = int((n_ratings - keys.size) * 2.5) + 1000
        u = rng.choice(n_users, size=m, p=activity)
        i = rng.choice(n_items, size=m, p=popularity)
        aff = np.einsum("ij,ij->i", U[u], V[i])
        keep = rng.random(m) < 1.0 / (1.0 + np.exp(-2.0 * aff))
        new = u[keep].astype(np.int64) * n_items + i[keep]
        keys = np.unique(np.concatenate([keys, new]))
        if keys.size > n_ratings:
            keys = rng.choice(keys, size=n_ratings, replace=False)
    if keys.size < n_ratings:
        raise RuntimeError(
            f"make_synthetic: drew only {keys.size} distinct pairs of the {n_ratings} asked "
            f"for in a {n_users} x {n_items} matrix"
        )
    keys.sort()
    u, i = keys // n_items, keys % n_items
    aff = np.einsum("ij,ij->i", U[u], V[i])
    if kind == "explicit":
        rating = np.clip(np.rint(3.2 + 1.1 * aff + rng.normal(scale=0.6, size=u.size)), 1, 5)
    else:
        intensity = rng.lognormal(mean=0.0, sigma=1.3, size=n_users)  # a few users play far more
        rating = np.ceil(rng.lognormal(mean=0.5 + 0.8 * aff, sigma=1.2) * intensity[u])
    ts = 1_500_000_000 + rng.integers(0, 10**8, size=u.size)
    return pa.table(
        {
            "user": pa.array(u, pa.int64()),
            "item": pa.array(i, pa.int64()),
            "rating": pa.array(rating.astype(np.float64)),
            "timestamp": pa.array(ts, pa.int64()),
        }
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratings", type=int, required=True, help="number of (user, item) pairs")
    p.add_argument("--kind", choices=["explicit", "implicit"], default="explicit")
    p.add_argument("--rank", type=int, default=10, help="rank of the planted model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="Parquet file to write")
    a = p.parse_args(argv)
    table = generate(a.ratings, a.kind, a.rank, a.seed)
    pq.write_table(table, a.output)
    r = table.column("rating").to_numpy()
    per_user = np.bincount(table.column("user").to_numpy(), weights=r)
    print(
        f"{a.output}: {table.num_rows} ratings, {len(np.unique(table.column('user')))} users, "
        f"{len(np.unique(table.column('item')))} items; rating min {r.min():g} median {np.median(r):g} "
        f"max {r.max():g}; per-user total max {per_user.max():g}, median {np.median(per_user[per_user > 0]):g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
