"""Exact row solves compiled with numba: every row of a CSR block in one pass, no padding.

For row u with L entries the kernel copies the fixed side's factor rows into a (width, L) buffer, one
column per entry, so that each entry of the upper triangle of G' W G and each entry of the right side
G' t is one dot product of length L over contiguous memory (these vectorize; eight share each pass,
two rows of the buffer against four). It adds the constant part S (w0 Y'Y for weighted ALS, 0 for
explicit) and lambda_u I, factors the system as L D L' in float64 and solves it. The loss comes
from the same k x k pieces, not from a pass over the predictions:

    A_u = G_u' W_u G_u + S + lambda_u I,   x_u = A_u^-1 G_u' t_u
    loss pieces: sum_e w_e p_e^2 - 2 t_e p_e = x_u' G_u' W_u G_u x_u - 2 x_u' G_u' t_u,
                 sum_e t_e^2,  x_u' S x_u,  lambda_u |x_u|^2    (p = G_u x_u)

Explicit ALS: w = 1, t = r - offset[col] (mu and the fixed side's bias). Weighted ALS: w = c - w0,
t = c p, S = w0 Y'Y, and the loss adds sum c p^2, which does not change while the factors do.

numpy's stacked matmul and solve pay a BLAS call per row, which at rank 10 costs more than the
arithmetic; one compiled pass over every row is several times faster there, explicit or weighted.
The exact kernel is compiled for each width, the conjugate-gradient one once. A row whose system is
not positive definite (lambda = 0 and too few entries) is reported in `bad` for the caller to solve
otherwise; its loss pieces are left out of the sums.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time

import numpy as np

# numba is a dependency; where it is missing the numpy backend serves. It is imported on the first
# solve, not with the package: a driver that never solves (top-N, scoring) does not pay for it.
AVAILABLE = importlib.util.find_spec("numba") is not None
# What a caller may ask for: these kernels, the numpy versions, or these where numba is installed.
BACKENDS = ("auto", "compiled", "numpy")
# Reassociation lets the dot products use vector lanes; no-NaN/no-inf flags stay off so that a failed
# pivot is still seen.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# A pivot that cancels below this fraction of its diagonal entry marks the system as not positive
# definite. The Gramian's entries are float32 sums (rounding ~1e-7 of each, growing with the entries
# summed), so the last pivots of a singular system come out near 1e-6 of the diagonal, not at 0.
PIVOT_FLOOR = 1e-5


def _solve_rows_of(width: int):
    """The exact-solve kernel for `width` unknowns per row, compiled by `_kernel` once per width: a
    constant width lets the compiler unroll the k x k work and keep the dot products' accumulators in
    registers, which is faster than one kernel for every width (explicit ALS gains more than
    weighted)."""
    K = width
    R = (K + 4) // 4 * 4  # buffer rows: K factors, the targets (row K), zeros up to a multiple of 4

    def _solve_rows(
        indptr, cols, weight, target, offset, Y, shift, lam, longest, has_shift, rooted, X, bad, sums
    ):  # pragma: no cover
        """Solve every row of a CSR block (see the module docstring).

        indptr : (n + 1,) int64; cols : (nnz,) int32 fixed-side rows; weight : (nnz,) float32, or (0,)
        for unit weights; target : (nnz,) float32; offset : (n_fixed,) float32 subtracted from target
        at each entry's col, or (0,); Y : (n_fixed, K) float32; shift : (K, K) float64, S;
        lam : (n,) float64; longest : the most entries of a row; has_shift : S != 0 (`_common`);
        rooted : weight holds sqrt(w) and target t / sqrt(w) (every w > 0), so that one buffer of
        scaled factor rows serves both sides of each product, as with unit weights (sum t^2 is then
        sum t^2 / w). Writes X : (n, K) float64, bad : (n,) bool, and adds to sums : (4,) float64 the
        loss pieces [sum w p^2 - 2 t p, sum t^2, sum x'Sx, sum lambda |x|^2] of the rows not marked bad.
        """
        n = indptr.size - 1
        unit = weight.size == 0
        has_offset = offset.size > 0
        # GT[a] is factor a of the row's entries; H[c] the same times the weights and H[K] the
        # targets, so that dot(GT[a], H[c]) is entry (c, a) of G'WG for c < K and entry a of G't for
        # c = K. Rows past K stay 0.
        GT = np.zeros((R, longest), np.float32)
        H = GT if unit or rooted else np.zeros((R, longest), np.float32)
        D = np.empty((K, K), np.float64)  # G'WG, lower triangle
        M = np.empty((K, K), np.float64)  # D + S + lambda I, then L below its diagonal
        piv = np.empty(K, np.float64)  # diag(d) of M = L diag(d) L'
        dinv = np.empty(K, np.float64)  # 1 / d
        v = np.empty(K, np.float64)  # row j of L times d, while column j is formed
        b = np.empty(K, np.float64)  # G't
        z = np.empty(K, np.float64)
        x = np.empty(K, np.float64)
        fit = tsq = quad = pen = 0.0
        for r in range(n):
            s0 = indptr[r]
            L = indptr[r + 1] - s0
            bad[r] = False
            if L == 0:  # no data: the right side is 0, and so is the solution
                for a in range(K):
                    X[r, a] = 0.0
                continue
            if L < K and lam[r] == 0.0 and not has_shift:
                # G'WG has rank L < K and nothing is added: singular whatever the rounding of the
                # float32 sums (which can leave the last pivot of such a row above any fixed floor)
                bad[r] = True
                for a in range(K):
                    X[r, a] = 0.0
                continue
            st = np.float32(0.0)
            for e in range(L):
                j = cols[s0 + e]
                t = target[s0 + e] - offset[j] if has_offset else target[s0 + e]
                H[K, e] = t  # the targets (H is GT for unit or rooted weights)
                st += t * t
                if unit:
                    for a in range(K):  # explicit loops: a slice copy (GT[:, e] = Y[j]) is 3x slower
                        GT[a, e] = Y[j, a]
                elif rooted:
                    w = weight[s0 + e]
                    for a in range(K):
                        GT[a, e] = w * Y[j, a]
                else:
                    w = weight[s0 + e]
                    for a in range(K):
                        ya = Y[j, a]
                        GT[a, e] = ya
                        H[a, e] = w * ya
            # Dot products two factors by four rows at a time: 8 sums per pass over the entries, 6
            # loads (rank 10: 11 passes; one factor by four, 30 passes, was much slower).
            for a in range(0, K, 2):
                g0 = GT[a]
                g1 = GT[a + 1]
                for c0 in range(a // 4 * 4, R, 4):
                    h0, h1, h2, h3 = H[c0], H[c0 + 1], H[c0 + 2], H[c0 + 3]
                    u00 = u01 = u02 = u03 = u10 = u11 = u12 = u13 = np.float32(0.0)
                    for e in range(L):
                        x0 = g0[e]
                        x1 = g1[e]
                        y0 = h0[e]
                        y1 = h1[e]
                        y2 = h2[e]
                        y3 = h3[e]
                        u00 += x0 * y0
                        u01 += x0 * y1
                        u02 += x0 * y2
                        u03 += x0 * y3
                        u10 += x1 * y0
                        u11 += x1 * y1
                        u12 += x1 * y2
                        u13 += x1 * y3
                    sums8 = ((u00, u01, u02, u03), (u10, u11, u12, u13))
                    for p in range(2):
                        ap = a + p
                        if ap < K:
                            for q in range(4):
                                c = c0 + q
                                if c < K:
                                    if c >= ap:
                                        D[c, ap] = sums8[p][q]
                                elif c == K:
                                    b[ap] = sums8[p][q]
            for a in range(K):
                for c in range(a, K):
                    M[c, a] = D[c, a] + shift[c, a]
                M[a, a] += lam[r]
            # M = L diag(d) L' (unit lower L in M's strict lower triangle): no square roots, one
            # division per pivot, and the triangular solves only multiply. Rank 10, ml-small's item
            # rows (~10 entries each): factor + solves 0.21 + 0.18 us per row by Cholesky with its
            # divisions, 0.23 + 0.08 us this way. The pivot d is the one Cholesky takes the root of.
            ok = True
            for j in range(K):
                for p in range(j):
                    v[p] = M[j, p] * piv[p]
                d = M[j, j]
                for p in range(j):
                    d -= M[j, p] * v[p]
                if not d > PIVOT_FLOOR * M[j, j]:
                    ok = False
                    break
                piv[j] = d
                inv = 1.0 / d
                dinv[j] = inv
                for i in range(j + 1, K):
                    s = M[i, j]
                    for p in range(j):
                        s -= M[i, p] * v[p]
                    M[i, j] = s * inv
            if not ok:
                bad[r] = True
                for a in range(K):
                    X[r, a] = 0.0
                continue
            for i in range(K):  # L z = b, then L' x = z / d
                s = b[i]
                for p in range(i):
                    s -= M[i, p] * z[p]
                z[i] = s
            for i in range(K - 1, -1, -1):
                s = z[i] * dinv[i]
                for p in range(i + 1, K):
                    s -= M[p, i] * x[p]
                x[i] = s
            # The loss from the k x k pieces instead of a pass over the predictions p = G x:
            # sum w p^2 - 2 t p = x'(G'WG)x - 2 x'(G't).
            xdx = xb = xsx = norm = 0.0
            for a in range(K):
                xa = x[a]
                X[r, a] = xa
                norm += xa * xa
                xb += xa * b[a]
                xdx += D[a, a] * xa * xa
                for c in range(a + 1, K):
                    xdx += 2.0 * D[c, a] * xa * x[c]
                if has_shift:
                    for c in range(K):
                        xsx += xa * shift[a, c] * x[c]
            fit += xdx - 2.0 * xb
            tsq += st
            quad += xsx
            pen += lam[r] * norm
        sums[0] += fit
        sums[1] += tsq
        sums[2] += quad
        sums[3] += pen

    return _solve_rows


def _cg_rows(
    indptr, cols, weight, target, offset, Y, shift, lam, longest, has_shift, diagonal, x0, steps, X, sums
):  # pragma: no cover
    """`steps` conjugate-gradient steps on every row's system from x0 (kernels.solve.cg_stack, row by
    row); the system is never formed. Arguments as `_solve_rows`, plus diagonal (S has nothing off
    its diagonal: S v costs O(width), not O(width^2)), x0 : (n, width) float32 and steps : int;
    writes X and adds the same four loss pieces to sums.

    The row's factor rows are copied once into an (L, width) buffer, one row per rating; each
    product A v = G' W G v + S v + lambda v then reads it once (a dot product and an axpy per rating).
    """
    n = indptr.size - 1
    width = Y.shape[1]
    unit = weight.size == 0
    has_offset = offset.size > 0
    S32 = shift.astype(np.float32)  # the products S v inside the steps, 8 lanes wide
    G = np.empty((longest, width), np.float32)
    T = np.empty(longest, np.float32)
    W = np.empty(longest, np.float32)
    P = np.empty(longest, np.float32)  # predictions G x
    GP = np.empty(longest, np.float32)  # G p of the current direction
    x = np.empty(width, np.float64)
    res = np.empty(width, np.float64)
    d = np.empty(width, np.float64)
    ad = np.empty(width, np.float64)
    vf = np.empty(width, np.float32)
    acc = np.empty(width, np.float32)
    fit = tsq = quad = pen = 0.0
    for r in range(n):
        s0 = indptr[r]
        L = indptr[r + 1] - s0
        lr = lam[r]
        for e in range(L):
            j = cols[s0 + e]
            for a in range(width):  # an explicit loop: numba runs it faster than the slice copy G[e, :] = Y[j]
                G[e, a] = Y[j, a]
            T[e] = target[s0 + e] - offset[j] if has_offset else target[s0 + e]
            W[e] = 1.0 if unit else weight[s0 + e]
        for a in range(width):
            x[a] = x0[r, a]
            d[a] = x[a]
        # Product 0 is A x0 (with G x0 into P, and G't subtracted on the way); product i > 0 is A d
        # for step i (G d into GP).
        rs = 0.0
        for step in range(steps + 1):
            if step > 0 and not rs > 0.0:
                break
            first = step == 0
            out = P if first else GP
            ts = np.float32(1.0) if first else np.float32(0.0)
            for a in range(width):
                vf[a] = d[a]
                acc[a] = 0.0
            # Four entries at a time: vf is read once for four dot products and acc is updated once
            # for four entries, faster than one entry at a time on both sides, the items' most.
            e = 0
            while e + 4 <= L:
                g0 = g1 = g2 = g3 = np.float32(0.0)
                for a in range(width):
                    va = vf[a]
                    g0 += G[e, a] * va
                    g1 += G[e + 1, a] * va
                    g2 += G[e + 2, a] * va
                    g3 += G[e + 3, a] * va
                out[e], out[e + 1], out[e + 2], out[e + 3] = g0, g1, g2, g3
                h0 = W[e] * g0 - ts * T[e]
                h1 = W[e + 1] * g1 - ts * T[e + 1]
                h2 = W[e + 2] * g2 - ts * T[e + 2]
                h3 = W[e + 3] * g3 - ts * T[e + 3]
                for a in range(width):
                    acc[a] += h0 * G[e, a] + h1 * G[e + 1, a] + h2 * G[e + 2, a] + h3 * G[e + 3, a]
                e += 4
            while e < L:
                g = np.float32(0.0)
                for a in range(width):
                    g += G[e, a] * vf[a]
                out[e] = g
                wg = W[e] * g - ts * T[e]
                for a in range(width):
                    acc[a] += wg * G[e, a]
                e += 1
            dad = 0.0
            for a in range(width):
                v = acc[a] + lr * d[a]
                if diagonal:
                    v += S32[a, a] * vf[a]
                elif has_shift:
                    sv = np.float32(0.0)
                    for c in range(width):
                        sv += S32[a, c] * vf[c]
                    v += sv
                ad[a] = v
                dad += d[a] * v
            if first:  # r = G't - A x0, the first direction
                for a in range(width):
                    res[a] = -ad[a]
                    d[a] = res[a]
                    rs += res[a] * res[a]
                continue
            if not dad > 0.0:
                break
            alpha = rs / dad
            new = 0.0
            for a in range(width):
                x[a] += alpha * d[a]
                res[a] -= alpha * ad[a]
                new += res[a] * res[a]
            af = np.float32(alpha)
            for e in range(L):
                P[e] += af * GP[e]
            beta = new / rs
            for a in range(width):
                d[a] = res[a] + beta * d[a]
            rs = new
        norm = 0.0
        for a in range(width):
            X[r, a] = x[a]
            norm += x[a] * x[a]
            if diagonal:
                quad += x[a] * shift[a, a] * x[a]
            elif has_shift:
                for c in range(width):
                    quad += x[a] * shift[a, c] * x[c]
        pen += lr * norm
        sf = np.float32(0.0)
        st = np.float32(0.0)
        for e in range(L):
            p = P[e]
            t = T[e]
            sf += W[e] * p * p - np.float32(2.0) * t * p
            st += t * t
        fit += sf
        tsq += st
    sums[0] += fit
    sums[1] += tsq
    sums[2] += quad
    sums[3] += pen


def _best_rows(S, n, idx, top):  # pragma: no cover
    """The n largest scores of every row of S (c, m) float32, best first, ties by lower index:
    writes idx (c, n) int64 and top (c, n) float32. Slots that no finite score fills (fewer than n
    scores above -inf) keep -inf and the index m + slot.

    One pass per row in index order: a score enters only when it beats the current n-th best
    (strictly, so an equal score seen later never displaces an earlier one) and is inserted in order.
    After the first few hundred items almost every score fails the one comparison.
    """
    c, m = S.shape
    for r in range(c):
        for q in range(n):
            top[r, q] = -np.inf
            idx[r, q] = m + q
        worst = -np.inf
        for j in range(m):
            v = S[r, j]
            if v > worst:
                q = n - 1
                while q > 0 and top[r, q - 1] < v:
                    top[r, q] = top[r, q - 1]
                    idx[r, q] = idx[r, q - 1]
                    q -= 1
                top[r, q] = v
                idx[r, q] = j
                worst = top[r, n - 1]


def _predict_rows(X, Y, user_bias, item_bias, u, i, mu, cold, lo, hi, out):  # pragma: no cover - compiled
    k = X.shape[1]
    biased = user_bias.size > 0
    for r in range(u.size):
        a, b = u[r], i[r]
        if a >= 0 and b >= 0:
            acc = 0.0
            for j in range(k):
                acc += np.float64(X[a, j]) * np.float64(Y[b, j])
            p = mu + acc
        else:
            p = cold
        if biased:
            if a >= 0:
                p += user_bias[a]
            if b >= 0:
                p += item_bias[b]
        if lo <= hi:
            p = min(max(p, lo), hi)
        out[r] = p


def _sgd_epoch(u, i, r, order, X, Y, bu, bi, mu, lr, reg, reg_b, biased):  # pragma: no cover - compiled
    k = X.shape[1]
    for t in range(order.size):
        n = order[t]
        a, b = u[n], i[n]
        dot = 0.0
        for f in range(k):
            dot += X[a, f] * Y[b, f]
        e = r[n] - mu - dot
        if biased:
            e -= bu[a] + bi[b]
            bu[a] += lr * (e - reg_b * bu[a])
            bi[b] += lr * (e - reg_b * bi[b])
        for f in range(k):
            x, y = X[a, f], Y[b, f]
            X[a, f] = x + lr * (e * y - reg * x)
            Y[b, f] = y + lr * (e * x - reg * y)


def sgd_epoch(u, i, r, order, X, Y, bu, bi, mu: float, lr: float, reg: float, reg_b: float, biased: bool) -> None:
    """One SGD step per rating in `order` (kernels.sgd): X, Y (n, k) and bu, bi (n,) float64, updated
    in place; u, i, order int64, r float64. Sequential by nature: each step reads what the last wrote."""
    _kernel(_sgd_epoch)(u, i, r, order, X, Y, bu, bi, float(mu), float(lr), float(reg), float(reg_b), bool(biased))


def _java_gaussians(state, out):  # pragma: no cover - compiled
    """Fill `out` with java.util.Random.nextGaussian() draws (the polar method, its second value
    kept for the next call) over Spark's XORShiftRandom `next(bits)`, from the generator state
    `state` (uint64)."""
    s = state
    low26, low27 = np.uint64((1 << 26) - 1), np.uint64((1 << 27) - 1)
    a21, a35, a4 = np.uint64(21), np.uint64(35), np.uint64(4)
    i = 0
    while i < out.size:
        while True:
            v1 = v2 = 0.0
            for j in range(2):  # v1, v2 from nextDouble(): next(26) << 27 + next(27), over 2^53
                s ^= s << a21
                s ^= s >> a35
                s ^= s << a4
                hi = s & low26
                s ^= s << a21
                s ^= s >> a35
                s ^= s << a4
                lo = s & low27
                d = 2.0 * ((np.float64(hi) * 134217728.0 + np.float64(lo)) * 1.1102230246251565e-16) - 1.0
                if j == 0:
                    v1 = d
                else:
                    v2 = d
            q = v1 * v1 + v2 * v2
            if q < 1.0 and q != 0.0:
                break
        m = np.sqrt(-2.0 * np.log(q) / q)
        out[i] = v1 * m
        if i + 1 < out.size:
            out[i + 1] = v2 * m
        i += 2


# Up to this many draws the plain loop ends before numba would have been imported and the kernel
# loaded from its cache, which a driver that never solves would otherwise pay for (docs/performance.md).
PLAIN_DRAWS = 1 << 17


def java_gaussians(state: int, n: int) -> np.ndarray:
    """(n,) float64: the first n nextGaussian() draws of a Spark XORShiftRandom whose hashed seed is
    `state` (kernels.init.mllib_factors). Sequential by nature: compiled for many draws, plain Python
    for few (or where numba is missing)."""
    out = np.empty(n, np.float64)
    (_kernel(_java_gaussians) if AVAILABLE and n > PLAIN_DRAWS else _java_gaussians)(np.uint64(state), out)
    return out


def predict_rows(
    X: np.ndarray,
    Y: np.ndarray,
    user_bias: np.ndarray | None,
    item_bias: np.ndarray | None,
    u: np.ndarray,
    i: np.ndarray,
    mu: float,
    cold: float,
    clip: tuple[float, float] | None,
) -> np.ndarray:
    """(m,) float64 predictions of pairs (u, i) (-1 = unknown): mu + b_u + b_i + x_u.y_i for known
    pairs, cold plus whatever bias is known otherwise, clipped to `clip`; summed in float64, one
    pass over the pairs with no (m, k) temporaries (model.Scorer.predict_idx)."""
    out = np.empty(u.size, np.float64)
    none = np.zeros(0, np.float32)
    lo, hi = clip if clip is not None else (1.0, 0.0)
    _kernel(_predict_rows)(
        np.ascontiguousarray(X, np.float32),
        np.ascontiguousarray(Y, np.float32),
        none if user_bias is None else np.ascontiguousarray(user_bias, np.float32),
        none if item_bias is None else np.ascontiguousarray(item_bias, np.float32),
        np.ascontiguousarray(u, np.int64),
        np.ascontiguousarray(i, np.int64),
        float(mu),
        float(cold),
        float(lo),
        float(hi),
        out,
    )
    return out


# Spark SQL's xxhash64 (catalyst's XXH64: standard XXH64 over little-endian words; an int seed column
# is hashed as 4 bytes, a long as 8; each column's hash seeds the next; Spark's own seed is 42).
SPARK_HASH_SEED = 42
_P1, _P2, _P3 = np.uint64(0x9E3779B185EBCA87), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
_P4, _P5 = np.uint64(0x85EBCA77C2B2AE63), np.uint64(0x27D4EB2F165667C5)


def _xxhash_pairs(seed, seed_is_int, a_data, a_off, b_data, b_off, out):  # pragma: no cover - compiled
    u64 = np.uint64
    h = u64(SPARK_HASH_SEED)
    if seed_is_int:
        h = h + _P5 + u64(4)
        h ^= (seed & u64(0xFFFFFFFF)) * _P1
        h = ((h << u64(23)) | (h >> u64(41))) * _P2 + _P3
    else:
        h = h + _P5 + u64(8)
        k = seed * _P2
        h ^= ((k << u64(31)) | (k >> u64(33))) * _P1
        h = ((h << u64(27)) | (h >> u64(37))) * _P1 + _P4
    h ^= h >> u64(33)
    h *= _P2
    h ^= h >> u64(29)
    h *= _P3
    h ^= h >> u64(32)
    first = h
    for r in range(out.size):
        h = first
        for c in range(2):
            data = a_data if c == 0 else b_data
            start = a_off[r] if c == 0 else b_off[r]
            end = a_off[r + 1] if c == 0 else b_off[r + 1]
            s = h
            at = start
            if end - start >= 32:
                v1, v2, v3, v4 = s + _P1 + _P2, s + _P2, s, s - _P1
                while at <= end - 32:
                    for lane in range(4):
                        w = u64(0)
                        for b in range(7, -1, -1):
                            w = (w << u64(8)) | u64(data[at + 8 * lane + b])
                        v = (v1, v2, v3, v4)[lane] + w * _P2
                        v = ((v << u64(31)) | (v >> u64(33))) * _P1
                        if lane == 0:
                            v1 = v
                        elif lane == 1:
                            v2 = v
                        elif lane == 2:
                            v3 = v
                        else:
                            v4 = v
                    at += 32
                h = (
                    ((v1 << u64(1)) | (v1 >> u64(63)))
                    + ((v2 << u64(7)) | (v2 >> u64(57)))
                    + ((v3 << u64(12)) | (v3 >> u64(52)))
                    + ((v4 << u64(18)) | (v4 >> u64(46)))
                )
                for v in (v1, v2, v3, v4):
                    k = v * _P2
                    h = (h ^ (((k << u64(31)) | (k >> u64(33))) * _P1)) * _P1 + _P4
            else:
                h = s + _P5
            h += u64(end - start)
            while at <= end - 8:
                w = u64(0)
                for b in range(7, -1, -1):
                    w = (w << u64(8)) | u64(data[at + b])
                k = w * _P2
                h ^= ((k << u64(31)) | (k >> u64(33))) * _P1
                h = ((h << u64(27)) | (h >> u64(37))) * _P1 + _P4
                at += 8
            if at + 4 <= end:
                w = u64(0)
                for b in range(3, -1, -1):
                    w = (w << u64(8)) | u64(data[at + b])
                h ^= w * _P1
                h = ((h << u64(23)) | (h >> u64(41))) * _P2 + _P3
                at += 4
            while at < end:
                h ^= u64(data[at]) * _P5
                h = ((h << u64(11)) | (h >> u64(53))) * _P1
                at += 1
            h ^= h >> u64(33)
            h *= _P2
            h ^= h >> u64(29)
            h *= _P3
            h ^= h >> u64(32)
        out[r] = np.float64(h >> u64(11)) / 9007199254740992.0  # top 53 bits / 2^53: exact


def uniform_hash(seed: int, a_data: np.ndarray, a_off: np.ndarray, b_data: np.ndarray, b_off: np.ndarray) -> np.ndarray:
    """(n,) float64 in [0, 1): (xxhash64(seed, a_r, b_r) >>> 11) / 2^53 as Spark SQL computes it, for
    byte strings a_r = a_data[a_off[r]:a_off[r + 1]] (uint8, int64 offsets) and b_r likewise, with
    `seed` a literal (an int column when it fits 32 bits, as F.lit makes it)."""
    out = np.empty(a_off.size - 1, np.float64)
    if out.size:
        _kernel(_xxhash_pairs)(
            np.int64(seed).view(np.uint64),
            -(2**31) <= seed < 2**31,
            np.ascontiguousarray(a_data, np.uint8),
            np.ascontiguousarray(a_off, np.int64),
            np.ascontiguousarray(b_data, np.uint8),
            np.ascontiguousarray(b_off, np.int64),
            out,
        )
    return out


def chosen(backend: str) -> bool:
    """Whether `backend` (one of BACKENDS) means these kernels: "compiled", or "auto" where numba is
    installed. ValueError for any other name, or for "compiled" without numba."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "compiled" and not AVAILABLE:
        raise ValueError("the compiled backend needs numba (not installed)")
    return AVAILABLE and backend != "numpy"


_compiled: dict = {}
# How long a first call waits for another process compiling the same kernel before compiling it too:
# compiling takes seconds, so a lock held longer belongs to a stopped or stuck process.
COMPILE_WAIT = 60.0


def _kernel(fn, width: int | None = None):
    """`fn` compiled, on first use; with `width`, fn is a factory and this is its kernel for that
    width. The machine code is cached on disk (beside this file, or in numba's user cache where that
    is read-only), so a process compiles once per install and width and later ones load it, far
    faster; where no cache location is writable it compiles in every process."""
    key = fn if width is None else (fn, width)
    if key not in _compiled:
        import numba

        _stable_zip_cache()
        options = dict(nogil=True, fastmath=_FASTMATH, error_model="numpy")
        py = fn if width is None else fn(width)
        try:
            _compiled[key] = _OneCompiles(
                f"{fn.__module__}.{fn.__qualname__}/{width}", numba.njit(cache=True, **options)(py)
            )
        except RuntimeError:  # "cannot cache function ...: no locator available"
            _compiled[key] = numba.njit(**options)(py)
    return _compiled[key]


class _OneCompiles:
    """A cached kernel whose first call runs under a lock of this machine named for the kernel.

    The processes that need a kernel first all at once (a stage's Python workers on an executor, the
    first run after an install) would each compile it: with the lock, one compiles and caches it, and
    the others, waiting, load it from the cache when their turn comes. A lock not had within
    COMPILE_WAIT seconds, or no lock to be had (no fcntl, no writable temporary folder), is not waited
    for: the call compiles as it would without it."""

    def __init__(self, name: str, dispatcher) -> None:
        self.dispatcher, self.ready = dispatcher, False
        digest = hashlib.sha1(f"{os.path.abspath(__file__)}:{name}".encode()).hexdigest()[:20]
        self.lock_path = os.path.join(tempfile.gettempdir(), f"mf_spark-kernel-{digest}.lock")

    def __call__(self, *args):
        if self.ready:
            return self.dispatcher(*args)
        fd = _locked(self.lock_path, COMPILE_WAIT)
        try:
            out = self.dispatcher(*args)
        finally:
            if fd is not None:
                os.close(fd)  # closing the file releases its lock
        self.ready = True
        return out


def _locked(path: str, wait: float) -> int | None:
    """A file descriptor of `path` holding its exclusive lock, or None when none was had in `wait` s."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # read-only: another user's lock file serves too
    except (ImportError, OSError):
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        except OSError:
            break
    os.close(fd)
    return None


def _stable_zip_cache() -> None:
    """Key the machine-code cache of a zipped copy of this package on its path inside the zip.

    spark-submit --py-files gives every application its own copy of the zip, in a folder of its own,
    and numba keys a zipped module's cache on that folder: every run's executors would compile every
    kernel again. Keyed on the path inside the zip (numba still checks the module's content hash
    before loading), later runs load what the first one compiled."""
    from numba.core import caching

    base = getattr(caching, "ZipCacheLocator", None)
    impl = getattr(caching, "CacheImpl", None)
    if base is None or impl is None or any(getattr(k, "stable", False) for k in impl._locator_classes):
        return

    class StableZipLocator(base):
        stable = True

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            inside = hashlib.sha1(self._internal_path.encode()).hexdigest()[:16]
            self._cache_path = os.path.join(os.path.dirname(self._cache_path), f"mf_spark_zip_{inside}")

    impl._locator_classes.insert(0, StableZipLocator)


def _common(indptr, cols, weight, target, offset, Y, shift, lam) -> tuple:
    """The arguments both kernels share, checked and cast to their one compiled signature, then the
    two facts both size their work by: the most entries of a row, and whether S is nonzero."""
    n = indptr.size - 1
    width = Y.shape[1]
    if shift.shape != (width, width) or lam.shape != (n,) or target.shape != cols.shape:
        raise ValueError(
            f"compiled solve: {n} rows, {cols.size} entries, width {width}; got shift "
            f"{shift.shape}, lam {lam.shape}, target {target.shape}"
        )
    f32 = np.float32
    return (
        np.ascontiguousarray(indptr, np.int64),
        np.ascontiguousarray(cols, np.int32),
        np.zeros(0, f32) if weight is None else np.ascontiguousarray(weight, f32),
        np.ascontiguousarray(target, f32),
        np.zeros(0, f32) if offset is None else np.ascontiguousarray(offset, f32),
        np.ascontiguousarray(Y, f32),
        np.ascontiguousarray(shift, np.float64),
        np.ascontiguousarray(lam, np.float64),
        int(np.diff(indptr).max()) if n > 0 else 0,
        bool(np.any(shift)),
    )


def solve_rows(
    indptr: np.ndarray,
    cols: np.ndarray,
    weight: np.ndarray | None,
    target: np.ndarray,
    offset: np.ndarray | None,
    Y: np.ndarray,
    shift: np.ndarray,
    lam: np.ndarray,
    rooted: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact solves of every row of a CSR block (module docstring). `rooted`: weight is sqrt(w) and
    target t / sqrt(w) (`_solve_rows`). Returns X (n, width) float64, bad (n,) bool and the loss
    pieces (4,) float64."""
    args = _common(indptr, cols, weight, target, offset, Y, shift, lam)
    X = np.empty((indptr.size - 1, Y.shape[1]), np.float64)
    bad = np.empty(indptr.size - 1, np.bool_)
    sums = np.zeros(4, np.float64)
    if rooted and weight is None:
        raise ValueError("solve_rows: rooted weights need the weights")
    _kernel(_solve_rows_of, Y.shape[1])(*args, bool(rooted), X, bad, sums)
    return X, bad, sums


def cg_rows(
    indptr: np.ndarray,
    cols: np.ndarray,
    weight: np.ndarray | None,
    target: np.ndarray,
    offset: np.ndarray | None,
    Y: np.ndarray,
    shift: np.ndarray,
    lam: np.ndarray,
    x0: np.ndarray,
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`steps` conjugate-gradient steps for every row of a CSR block from x0 ((n, width) float32), as
    `kernels.solve.cg_stack`. Returns X (n, width) float64 and the loss pieces (4,) float64."""
    args = _common(indptr, cols, weight, target, offset, Y, shift, lam)
    if x0.shape != (indptr.size - 1, Y.shape[1]):
        raise ValueError(f"cg_rows: x0 of shape {x0.shape}, expected {(indptr.size - 1, Y.shape[1])}")
    X = np.empty((indptr.size - 1, Y.shape[1]), np.float64)
    sums = np.zeros(4, np.float64)
    diagonal = args[-1] and not np.any(shift - np.diag(np.diagonal(shift)))  # args[-1]: S is nonzero
    _kernel(_cg_rows)(*args, bool(diagonal), np.ascontiguousarray(x0, np.float32), int(steps), X, sums)
    return X, sums


def best_rows(S: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(idx (c, n) int64, top (c, n) float32): each row's n largest scores, best first, ties by
    lower index; slots past the row's finite scores hold -inf (`_best_rows`). n >= 1."""
    S = np.ascontiguousarray(S, np.float32)
    idx = np.empty((S.shape[0], n), np.int64)
    top = np.empty((S.shape[0], n), np.float32)
    _kernel(_best_rows)(S, int(n), idx, top)
    return idx, top
