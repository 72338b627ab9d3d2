"""Floating-point work of one ALS iteration, this machine's float32 matmul rate, and the time bound.

    python scripts/flops.py [--size 2048] [--threads 1]     # prints the measured GFLOP/s

One iteration solves every user against the item factors and every item against the user factors.
For a side with rows r (n_r ratings each) and w = k (k + 1 with biases) unknowns per row:

    Gramians        sum_r n_r * w^2 * 2 = 2 * nnz * w^2     (Y_r^T Y_r, one multiply-add per term)
    solves          n_rows * w^3 / 3                        (a Cholesky factorization per row)
    implicit only   k^2 * n_fixed                           (Y^T Y of the fixed side, symmetric)

Right-hand sides, predictions and losses are O(nnz * w) and left out, so the count is a lower bound
on the work; divided by the best float32 matmul rate it gives a lower bound on the time.

With conjugate-gradient solves (model.solver) no k x k system is formed or factored; a side instead
costs its right-hand sides and, per step plus the starting residual, two mat-vecs with the rows'
factors (and for weighted ALS one product with the k x k Gramian per row):

    cg              2 * nnz * w * (1 + 2 * (steps + 1)) + implicit: 2 * n_rows * k^2 * (steps + 1)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def side_flops(nnz: int, n_rows: int, n_fixed: int, rank: int, biases: bool, implicit: bool) -> dict:
    """Flops of one half-step: rows with nnz ratings in all solved against n_fixed fixed rows."""
    w = rank + 1 if biases else rank
    return {
        "gramians": 2.0 * nnz * w * w,
        "solves": n_rows * w**3 / 3.0,
        "fixed_gramian": float(rank * rank * n_fixed) if implicit else 0.0,
    }


def iteration_flops(
    nnz: int, n_users: int, n_items: int, rank: int, biases: bool = False, implicit: bool = False
) -> dict:
    """Flops of one full iteration (the item half-step plus the user half-step), by kind and total."""
    items = side_flops(nnz, n_items, n_users, rank, biases, implicit)
    users = side_flops(nnz, n_users, n_items, rank, biases, implicit)
    out = {key: items[key] + users[key] for key in items}
    out["total"] = sum(out.values())
    return out


def cg_iteration_flops(
    nnz: int, n_users: int, n_items: int, rank: int, steps: int, biases: bool = False, implicit: bool = False
) -> float:
    """Flops of one full iteration with `steps` conjugate-gradient steps per row solve."""
    w = rank + 1 if biases else rank
    per_side = [
        2.0 * nnz * w * (1 + 2 * (steps + 1)) + (2.0 * n * rank * rank * (steps + 1) if implicit else 0.0)
        for n in (n_users, n_items)
    ]
    return sum(per_side)


def matmul_gflops(size: int = 2048, repeat: int = 3) -> float:
    """GFLOP/s of np.matmul on two size x size float32 matrices in this process: the best of
    `repeat` timed products after one warm-up, at 2 * size^3 flops each."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    np.matmul(a, b)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def measure_gflops(size: int = 2048, threads: int = 1) -> float:
    """matmul_gflops in a fresh Python process whose BLAS is limited to `threads` threads (the
    thread count is fixed when numpy loads, hence the subprocess)."""
    env = {**os.environ, **{var: str(threads) for var in THREAD_VARS}}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--size", str(size), "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["gflops"])


def bound_seconds(flops: float, gflops: float, cores: int = 1) -> float:
    """Seconds `flops` take at `gflops` per core on `cores` cores running in parallel."""
    return flops / (gflops * 1e9 * max(cores, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="matrix side of the timed matmul")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as this process has)")
    p.add_argument("--json", action="store_true", help='print {"gflops": ...} only')
    a = p.parse_args(argv)
    rate = measure_gflops(a.size, a.threads) if a.threads else matmul_gflops(a.size)
    if a.json:
        print(json.dumps({"gflops": rate}))
    else:
        print(
            f"numpy float32 matmul {a.size}x{a.size}"
            f"{'' if a.threads is None else f', {a.threads} thread(s)'}: {rate:.1f} GFLOP/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
