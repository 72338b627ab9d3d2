"""Batched normal-equation solves for one block of rows (users, or items).

Explicit ALS row u (biases: y_i augmented with a constant 1, x_u with b_u, target r_ui - mu - b_i):

    (Y_u^T Y_u + lambda_u I) x_u = Y_u^T t_u,                 lambda_u = lambda * n_u^s

Weighted ALS row u (unobserved entries weighted w0, never materialized thanks to G = Y^T Y):

    (w0 G + Y_u^T (C_u - w0 I) Y_u + lambda_u I) x_u = Y_u^T C_u p_u

Where numba is installed, unconstrained solves run compiled, row by row with no padding
(`kernels.compiled`): conjugate gradients at any width, exact solves up to COMPILED_MAX_WIDTH
unknowns. Otherwise (nonnegative factors, wider exact solves, or backend "numpy"), rows are sorted by
length and cut into chunks of similar length; each chunk is padded to its longest row with a zero
factor row, so its Gramians come from one stacked `np.matmul` and its systems from one stacked
`np.linalg.solve`. The Python loop is over chunks (tens per block), never over rows.

Worked example (k = 2, one block of three users, fixed item factors Y with 4 rows):

    indptr = [0, 2, 3, 6]   user 0 rated items 1,3; user 1 item 0; user 2 items 0,2,3
    cols   = [1, 3, 0, 0, 2, 3]
    sorted by length -> chunk [user 1 (L=1)], [user 0 (L=2), user 2 (L=3)] padded to L=3:
    idx    = [[1, 3, Z], [0, 2, 3]]   Z = index of the appended zero row of Y
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mf_spark.kernels import compiled

# Gathered factors per chunk. A chunk that stays in cache between its products is faster than a
# bigger one: exact solves were fastest at 2 MiB, conjugate gradients, which read the chunk once per
# step, at 4 MiB.
CHUNK_FLOATS = 1 << 19
CG_CHUNK_FLOATS = 1 << 20
# A chunk only takes rows up to 1.25x its shortest row (past 8), so padding wastes < 25% of the flops.
LENGTH_RATIO = 1.25
MIN_PAD = 8
# The compiled solve forms width(width+1)/2 dot products per row; its lead over stacked BLAS shrinks
# with the width; wider exact solves keep stacked BLAS (not measured past 64).
COMPILED_MAX_WIDTH = 64


@dataclass(frozen=True, slots=True)
class SolveSpec:
    """What one half-step solves; built once from ModelConfig."""

    kind: str = "explicit"  # explicit | implicit
    reg: float = 0.1  # lambda
    reg_exponent: float = 1.0  # nu of lambda_u = lambda * n_u^nu: 1 = ALS-WR, 0 = plain lambda
    with_bias: bool = False  # explicit: solve [x_u, b_u] against [y_i, 1]
    bias_reg: float = 1.0  # with_bias: lambda of a bias over lambda_u of the factors
    mu: float = 0.0  # explicit global mean subtracted from every rating
    alpha: float = 1.0  # implicit confidence slope
    confidence: str = "linear"  # linear: 1 + alpha*r | log: 1 + alpha*log(1 + r/eps)
    epsilon: float = 1.0
    target: str = "preference"  # implicit p_ui: 1, or the observed value
    w0: float = 1.0  # weight of unobserved entries
    nonnegative: bool = False  # projected (NNLS) solve
    cg_steps: int = 0  # > 0: that many conjugate-gradient steps from the previous factors
    history_prior: float = 0.0  # explicit, gamma: rows shrink toward gamma n^-1/2 sum of their entries' Y
    item_reg_scale: float = 1.0  # the item side's lambda over the user side's (applied by `on`)

    def __post_init__(self) -> None:
        if self.kind not in ("explicit", "implicit"):
            raise ValueError(f"kind must be explicit or implicit, got {self.kind!r}")
        if self.cg_steps < 0:
            raise ValueError(f"cg_steps must be >= 0, got {self.cg_steps}")
        if self.kind == "implicit" and self.with_bias:
            raise ValueError("biases apply to explicit models only")
        if not 0.0 < self.bias_reg < float("inf"):
            raise ValueError(f"bias_reg must be a number > 0, got {self.bias_reg}")
        if self.history_prior and (self.kind != "explicit" or self.nonnegative):
            raise ValueError("history_prior applies to explicit models without nonnegative factors only")
        if not 0.0 < self.item_reg_scale < float("inf"):
            raise ValueError(f"item_reg_scale must be a number > 0, got {self.item_reg_scale}")

    def on(self, side: str) -> "SolveSpec":
        """What the half-step of `side` solves: items with lambda x item_reg_scale; the history prior
        shrinks users only (the rows whose ratings name the items), never items."""
        if side != "item" or (not self.history_prior and self.item_reg_scale == 1.0):
            return self
        return replace(self, reg=self.reg * self.item_reg_scale, item_reg_scale=1.0, history_prior=0.0)

    @property
    def bias_unit(self) -> float:
        """What stands for 1 in the fixed side's bias column: 1 / sqrt(bias_reg). The row's unknown
        is then b_u / bias_unit, so the plain ridge lambda_u on it is lambda_u * bias_reg on b_u,
        and every solver (exact, dual, cg, compiled or not) serves a separate bias regularization
        unchanged."""
        return float(self.bias_reg) ** -0.5

    def counted(self, counts: np.ndarray) -> np.ndarray:
        """n_u of `row_reg` from `entry_counts`: a row's entries, or for weighted ALS, as MLlib counts
        them, its entries > 0. A negative value (a dislike) weighs in the row's loss, not in its lambda."""
        return counts[1 if self.kind == "implicit" else 0]

    def row_reg(self, n: np.ndarray) -> np.ndarray:
        """lambda_u of rows with n_u counted entries (`counted`): lambda * n_u^nu (float64; nu = 1 is
        ALS-WR), and 0 for a row without any, which pays no penalty."""
        n = np.asarray(n, np.float64)
        if self.reg_exponent == 0.0:
            return np.where(n > 0, self.reg, 0.0)
        return self.reg * (n if self.reg_exponent == 1.0 else n**self.reg_exponent)


@dataclass(frozen=True, slots=True)
class BlockSolution:
    """New factors for the rows of one block and the pieces of the objective they give."""

    factors: np.ndarray  # (n_rows, k) float32
    bias: np.ndarray | None  # (n_rows,) float32 when with_bias, else None
    data_loss: float  # explicit: sum of squared errors; implicit: weighted loss incl. w0 part
    reg_loss: float  # sum_u lambda_u (|x_u|^2 + bias_reg b_u^2)
    sq_err: float  # explicit: sum over observed entries of (r - prediction)^2; implicit: 0


def confidence(values: np.ndarray, spec: SolveSpec) -> np.ndarray:
    """c_ui from r_ui. |r| keeps c >= 1 for negative signals (Hu, Koren & Volinsky assume r >= 0)."""
    r = np.abs(values.astype(np.float64))
    if spec.confidence == "log":
        return 1.0 + spec.alpha * np.log1p(r / spec.epsilon)
    return 1.0 + spec.alpha * r


def preference(values: np.ndarray, spec: SolveSpec) -> np.ndarray:
    """p_ui: 1 for an observed interaction (preference), or the observed value itself (WALS form)."""
    if spec.target == "value":
        return values.astype(np.float64)
    return (values > 0).astype(np.float64)


def entry_counts(indptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(2, n_rows) int64: the entries of each CSR row, and its entries > 0 (`SolveSpec.counted`)."""
    positive = np.zeros(values.size + 1, np.int64)
    np.cumsum(values > 0, out=positive[1:])
    return np.stack([np.diff(indptr), positive[indptr[1:]] - positive[indptr[:-1]]]).astype(np.int64)


def chunks(lengths: np.ndarray, rank: int, budget: int = CHUNK_FLOATS) -> list[tuple[np.ndarray, int]]:
    """Group row positions into (rows, padded length) chunks of similar length within `budget` floats."""
    order = np.argsort(lengths, kind="stable")
    sorted_len = lengths[order]
    out: list[tuple[np.ndarray, int]] = []
    start, n = 0, order.size
    while start < n:
        first = max(int(sorted_len[start]), 1)
        cap = max(int(first * LENGTH_RATIO), first + MIN_PAD)
        stop_len = int(np.searchsorted(sorted_len, cap, side="right"))
        max_len = int(sorted_len[stop_len - 1]) if stop_len > start else first
        by_budget = start + max(1, budget // (max(max_len, 1) * rank))
        stop = max(start + 1, min(stop_len, by_budget, n))
        out.append((order[start:stop], max(int(sorted_len[stop - 1]), 1)))
        start = stop
    return out


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows of one block with similar lengths, padded to the longest (b rows, padded length L)."""

    rows: np.ndarray  # (b,) int64 positions of the rows in the block
    idx: np.ndarray  # (b, L) int32 fixed-side indices; n_fixed (a zero factor row) at padding
    vals: np.ndarray  # (b, L) float32 values; 0 at padding
    mask: np.ndarray  # (b, L) bool, True at real entries
    conf: np.ndarray | None = None  # implicit: (b, L) float32 confidence c_ui, 0 at padding
    pref: np.ndarray | None = None  # implicit: (b, L) float32 preference p_ui, 0 at padding


@dataclass(frozen=True, slots=True)
class Layout:
    """How a block is solved for `width` unknowns per row against `n_fixed` fixed rows: padded chunks
    (numpy backend), or per-entry weights for the compiled one. It depends on the block and the spec
    alone, not on the factors, so a task holding a block builds it once per fit."""

    spec: SolveSpec
    n_fixed: int
    width: int
    chunks: tuple[Chunk, ...]
    max_floats: int  # largest b * L * width: one gather buffer serves every chunk
    counted: np.ndarray  # (n_rows,) int64: the entries each row's lambda counts (SolveSpec.counted)
    compiled: bool = False
    weight: np.ndarray | None = None  # compiled weighted ALS: (nnz,) float32 c - w0
    target: np.ndarray | None = None  # compiled weighted ALS: (nnz,) float32 c * p
    fixed_loss: np.ndarray | None = None  # compiled weighted ALS: (n_rows,) float64 sum of c p^2 per row
    # compiled exact weighted ALS where every c - w0 > 0: sqrt(c - w0) and c p / sqrt(c - w0), so the
    # kernel copies one buffer of scaled factors instead of two, which is faster;
    # weight and target are then None (the rows solved by pseudo-inverse take them from these)
    root_weight: np.ndarray | None = None
    root_target: np.ndarray | None = None


def backend_for(spec: SolveSpec, width: int, backend: str = "auto") -> str:
    """ "compiled" or "numpy": the backend that solves `spec` with `width` unknowns per row. "auto" takes
    the compiled one where numba is installed for unconstrained solves: conjugate gradients at any
    width, exact solves up to COMPILED_MAX_WIDTH unknowns. Asking for "compiled" where it cannot serve
    (nonnegative factors, or no numba) raises ValueError."""
    use = compiled.chosen(backend)
    if backend == "compiled" and spec.nonnegative:
        raise ValueError("the compiled backend solves unconstrained systems only")
    if backend == "auto":
        fits = not spec.nonnegative and (spec.cg_steps > 0 or width <= COMPILED_MAX_WIDTH)
        return "compiled" if use and fits else "numpy"
    return backend


def layout(
    indptr: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    spec: SolveSpec,
    n_fixed: int,
    width: int,
    budget: int | None = None,
    backend: str = "auto",
) -> Layout:
    """How to solve a CSR block against `n_fixed` fixed rows (`backend_for`). Numpy backend: the padded
    chunks (see `chunks`), for weighted ALS with each entry's confidence and preference; `budget`:
    floats of gathered factors per chunk (default by solver: CHUNK_FLOATS, or CG_CHUNK_FLOATS for
    conjugate gradients). Compiled backend: for weighted ALS, each entry's weight and target."""
    counted = spec.counted(entry_counts(indptr, vals))
    if backend_for(spec, width, backend) == "compiled":
        if spec.kind == "explicit":
            return Layout(spec, n_fixed, width, (), 0, counted, compiled=True)
        c, p = confidence(vals, spec), preference(vals, spec)
        per_row = np.add.reduceat(c * p * p, indptr[:-1]) if cols.size else np.zeros(indptr.size - 1)
        per_row[np.diff(indptr) == 0] = 0.0  # reduceat gives the next row's entry for an empty row
        weight, target = (c - spec.w0).astype(np.float32), (c * p).astype(np.float32)
        root_weight = root_target = None
        if spec.cg_steps == 0 and np.all(weight > 0):
            root_weight = np.sqrt(weight)
            root_target = target / root_weight
            weight = target = None
        return Layout(
            spec,
            n_fixed,
            width,
            (),
            0,
            counted,
            compiled=True,
            weight=weight,
            target=target,
            fixed_loss=per_row,
            root_weight=root_weight,
            root_target=root_target,
        )
    budget = budget or (CG_CHUNK_FLOATS if spec.cg_steps else CHUNK_FLOATS)
    out = []
    for rows, L in chunks(np.diff(indptr), width, budget):
        starts = indptr[rows]
        lens = indptr[rows + 1] - starts
        mask = np.arange(L, dtype=np.int64)[None, :] < lens[:, None]
        pos = np.where(mask, starts[:, None] + np.arange(L, dtype=np.int64)[None, :], 0)
        idx = np.where(mask, cols[pos] if cols.size else 0, n_fixed).astype(np.int32)
        v = np.where(mask, vals[pos] if vals.size else 0, 0).astype(np.float32)
        conf = pref = None
        if spec.kind == "implicit":
            conf = np.where(mask, confidence(v, spec), 0.0).astype(np.float32)
            pref = np.where(mask, preference(v, spec), 0.0).astype(np.float32)
        out.append(Chunk(rows, idx, v, mask, conf, pref))
    biggest = max((c.idx.size for c in out), default=0) * width
    return Layout(spec, n_fixed, width, tuple(out), biggest, counted)


def _solve_spd(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stacked solve of (b, k, k) systems; singular ones (reg = 0, too few ratings) via pseudo-inverse."""
    try:
        return np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(A, hermitian=True) @ b[..., None])[..., 0]


def _implicit_few(
    G: np.ndarray, d: np.ndarray, cp: np.ndarray, lam: np.ndarray, w0: float, evals: np.ndarray, V: np.ndarray
) -> np.ndarray:
    """Weighted-ALS solves for rows with fewer observed entries L than factors k, in O(L k^2 + L^3).

    A = B + G' D G with B = w0 Y'Y + lam I = V diag(w0 evals + lam) V' (one eigendecomposition of the
    Gramian per block), so by Woodbury A^-1 b = y - B^-1 G' (I + D G B^-1 G')^-1 D G y, y = B^-1 b,
    b = G' (c p): an L x L system per row instead of k x k. Padded entries have d = 0 and cp = 0.
    G : (b, L, k) float32, d : (b, L) = c - w0 (0 at padding), cp : (b, L), lam : (b,) > 0.
    """
    Gv = np.matmul(G.astype(np.float64), V)  # G in the eigenbasis, (b, L, k)
    S = 1.0 / (w0 * evals[None, :] + lam[:, None])  # B^-1 in the eigenbasis, (b, k)
    yv = S * np.matmul(cp[:, None, :].astype(np.float64), Gv)[:, 0, :]
    K = np.matmul(Gv * S[:, None, :], Gv.transpose(0, 2, 1))  # G B^-1 G', (b, L, L)
    M = d[:, :, None] * K
    M[:, np.arange(M.shape[1]), np.arange(M.shape[1])] += 1.0
    z = np.linalg.solve(M, d[:, :, None] * np.matmul(Gv, yv[:, :, None]))[..., 0]
    return (yv - S * np.matmul(z[:, None, :], Gv)[:, 0, :]) @ V.T


def start_point(factors: np.ndarray, bias: np.ndarray | None, spec: SolveSpec) -> np.ndarray:
    """x0 for `solve_block`: (n, k) factors, with the bias (0 when unknown) in the solve's units
    (b / spec.bias_unit) as column k when the spec has biases; (n, width) float32."""
    if not spec.with_bias:
        return np.ascontiguousarray(factors, dtype=np.float32)
    b = np.zeros(len(factors)) if bias is None else np.asarray(bias, np.float64) / spec.bias_unit
    return np.column_stack([factors, b]).astype(np.float32)


def cg_stack(
    G: np.ndarray,
    weight: np.ndarray | None,
    target: np.ndarray,
    lam: np.ndarray,
    x0: np.ndarray,
    steps: int,
    w0: float = 0.0,
    gram: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate-gradient steps on A x = G' target, A = G' diag(weight) G + w0 gram + diag(lam), from x0.

    A is never formed: each step costs two batched mat-vecs with G, O(L k) per row against O(L k^2 +
    k^3) for forming and factoring A, which is what makes it pay at high rank (Takacs, Pilaszy & Tikk
    2011; the `implicit` library's default). Every step minimizes x'Ax/2 - rhs'x exactly along a
    direction conjugate to the earlier ones, so from the previous factors the objective of the
    half-step never rises, and `steps` >= k reaches the exact solution (in exact arithmetic).
    G : (b, L, w) float32 with zero rows at padding; weight : (b, L) float32 (None: all ones);
    target : (b, L) float32, 0 at padding (explicit t, weighted ALS c * p); x0 : (b, w); lam : (b,).
    Returns x (b, w) float64 and the predictions G x (b, L) float32.
    """
    GT = G.transpose(0, 2, 1)

    def finish(v, gtw):  # A v from G' diag(weight) G v
        out = gtw.astype(np.float64)
        out += lam[:, None] * v
        if w0:
            out += w0 * (v @ gram)
        return out

    def apply(v):
        gv = np.matmul(G, v.astype(np.float32)[..., None])[..., 0]  # (b, L)
        return finish(v, np.matmul(GT, (gv if weight is None else gv * weight)[..., None])[..., 0]), gv

    x = x0.astype(np.float64)
    ax, pred = apply(x)
    # (One product with a two-column right side would read G once for both, but numpy's stacked
    # matmul runs it slower than two mat-vecs.)
    r = np.matmul(GT, target[..., None])[..., 0].astype(np.float64) - ax
    p = r.copy()
    rs = np.einsum("bk,bk->b", r, r)
    for _ in range(steps):
        ap, gp = apply(p)
        pap = np.einsum("bk,bk->b", p, ap)
        a = np.divide(rs, pap, out=np.zeros_like(rs), where=pap > 0)
        x += a[:, None] * p
        pred += a.astype(np.float32)[:, None] * gp
        r -= a[:, None] * ap
        new = np.einsum("bk,bk->b", r, r)
        if not np.any(new > 0):
            break
        p = r + np.divide(new, rs, out=np.zeros_like(rs), where=rs > 0)[:, None] * p
        rs = new
    return x, pred


def nnls_stack(A: np.ndarray, b: np.ndarray, free: int = 0, sweeps: int = 100, tol: float = 1e-9) -> np.ndarray:
    """min x^T A x / 2 - b^T x subject to x >= 0, for a stack of SPD systems.

    Projected coordinate descent: each sweep minimizes exactly along every coordinate in turn
    (clipped at 0), vectorized over the stack, so the objective never increases. The last `free`
    coordinates (a bias) are left unconstrained. A : (b, k, k) float64, b : (b, k) float64.
    """
    n, k = b.shape
    lower = np.zeros(k)
    lower[k - free :] = -np.inf
    diag = np.maximum(np.einsum("bii->bi", A), 1e-300)
    x = np.maximum(_solve_spd(A, b), lower)
    for _ in range(sweeps):
        biggest = 0.0
        for j in range(k):
            grad = np.einsum("bk,bk->b", A[:, j, :], x) - b[:, j]
            new = np.maximum(x[:, j] - grad / diag[:, j], lower[j])
            biggest = max(biggest, float(np.max(np.abs(new - x[:, j]))) if n else 0.0)
            x[:, j] = new
        if biggest <= tol:
            break
    return x


def _entry_chunks(indptr: np.ndarray, most: int = CHUNK_FLOATS):
    """Row ranges [lo, hi) of about `most` entries each (a longer row makes a range of its own)."""
    n = indptr.size - 1
    lo = 0
    while lo < n:
        hi = max(int(np.searchsorted(indptr, indptr[lo] + most, side="right")) - 1, lo + 1)
        yield lo, min(hi, n)
        lo = min(hi, n)


def history_mean(indptr: np.ndarray, cols: np.ndarray, Y: np.ndarray, gamma: float) -> np.ndarray:
    """gamma n_u^-1/2 sum_{i in row u} y_i for every row (zeros for rows without entries): where the
    history prior (SolveSpec.history_prior) centres each row's factors."""
    Z = np.zeros((indptr.size - 1, Y.shape[1]), np.float32)
    for lo, hi in _entry_chunks(indptr, max(CHUNK_FLOATS // max(Y.shape[1], 1), 1)):
        counts = np.diff(indptr[lo : hi + 1])
        full = np.flatnonzero(counts)
        if full.size:
            a = indptr[lo]
            sums = np.add.reduceat(Y[cols[a : indptr[hi]]], indptr[lo + full] - a, axis=0, dtype=np.float64)
            Z[lo + full] = gamma * sums / np.sqrt(counts[full])[:, None]
    return Z


def _solve_toward_history(indptr, cols, vals, Y, spec: SolveSpec, fixed_bias, budget, backend, x0) -> BlockSolution:
    """Ridge toward the history mean z_u (`history_mean`) instead of toward 0: with x_u = z_u + d_u,
    the row solves the plain system for d_u against the targets less z_u . y_i, so every solver
    serves it unchanged, and the reported regularization is lambda_u |x_u - z_u|^2 (+ the bias's)."""
    Z = history_mean(indptr, cols, Y, spec.history_prior)
    shift = np.empty(vals.shape, np.float32)
    for lo, hi in _entry_chunks(indptr, max(CHUNK_FLOATS // max(Y.shape[1], 1), 1)):
        a, b = indptr[lo], indptr[hi]
        rows = np.repeat(np.arange(lo, hi), np.diff(indptr[lo : hi + 1]))
        shift[a:b] = np.einsum("ek,ek->e", Z[rows], Y[cols[a:b]])
    start = None
    if x0 is not None:
        start = np.array(x0, np.float32)
        start[:, : Z.shape[1]] -= Z
    plain = replace(spec, history_prior=0.0)
    sol = solve_block(indptr, cols, vals - shift, Y, plain, fixed_bias, budget=budget, x0=start, backend=backend)
    return replace(sol, factors=(sol.factors + Z).astype(np.float32))


def solve_block(
    indptr: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    fixed_bias: np.ndarray | None = None,
    gram: np.ndarray | None = None,
    budget: int | None = None,
    plan: Layout | None = None,
    x0: np.ndarray | None = None,
    backend: str = "auto",
) -> BlockSolution:
    """Solve every row of a CSR block against the fixed side's factors.

    Parameters
    ----------
    indptr : (n_rows + 1,) int64    row pointers of the block
    cols : (nnz,) int32             global indices on the fixed side
    vals : (nnz,) float32           ratings (explicit) or interaction strengths (implicit)
    Y : (n_fixed, k) float32        fixed-side factors
    fixed_bias : (n_fixed,) float32 fixed-side biases, required when spec.with_bias
    gram : (k, k) float64           Y^T Y, required for implicit (computed once per half-step)
    plan : Layout                   this block's `layout`, kept by callers that solve it again
    x0 : (n_rows, width) float32    the rows' current factors (and bias), required when spec.cg_steps
    backend : str                    auto | compiled | numpy (`backend_for`), when no plan is given
    Returns a BlockSolution. Raises ValueError when shapes disagree.
    """
    n_rows, (n_fixed, k) = indptr.size - 1, Y.shape
    width = k + 1 if spec.with_bias else k
    cg = spec.cg_steps > 0 and not spec.nonnegative
    _check_block(indptr, cols, vals, n_fixed, k, width, spec, fixed_bias, gram, x0 if cg else None, cg)
    if plan is None:
        plan = layout(indptr, cols, vals, spec, n_fixed, width, budget, backend)
    elif plan.n_fixed != n_fixed or plan.width != width or plan.spec != spec:
        raise ValueError(
            f"layout for {plan.n_fixed} fixed rows x {plan.width} unknowns ({plan.spec}), "
            f"solving against {n_fixed} x {width} ({spec})"
        )
    if spec.history_prior:
        return _solve_toward_history(
            indptr,
            cols,
            vals,
            Y,
            spec,
            fixed_bias,
            budget,
            "compiled" if plan.compiled else "numpy",
            x0 if cg else None,
        )
    if plan.compiled:
        return _solve_compiled(indptr, cols, vals, Y, spec, fixed_bias, gram, plan, x0 if cg else None)
    Yf, offset = _padded_fixed(Y, spec, fixed_bias)
    buf = np.empty(plan.max_floats, dtype=np.float32)
    wbuf = np.empty(plan.max_floats if spec.kind == "implicit" else 0, dtype=np.float32)
    X = np.zeros((n_rows, width), dtype=np.float64)
    data_loss = reg_loss = sq_err = 0.0
    eig = None
    if spec.kind == "implicit":
        evals, V = np.linalg.eigh(gram)
        eig = (np.maximum(evals, 0.0), V)
    for ch in plan.chunks:
        b, L = ch.idx.shape
        G = np.take(Yf, ch.idx, axis=0, out=buf[: b * L * width].reshape(b, L, width))  # (b, L, width)
        t = ch.vals if offset is None else np.where(ch.mask, ch.vals - offset[ch.idx], np.float32(0))
        lam = spec.row_reg(plan.counted[ch.rows])
        x0_rows = x0[ch.rows] if cg else None
        x, pred = _solve_chunk(ch, G, t, lam, spec, gram, eig, wbuf, x0_rows, k)
        X[ch.rows] = x
        # Padded entries have a zero factor row and t = 0, so their error is 0 without a mask.
        if pred is None:
            pred = np.matmul(G, x.astype(np.float32)[..., None])[..., 0]  # (b, L)
        reg_loss += float(np.sum(lam * np.sum(x * x, axis=1)))
        if spec.kind == "explicit":
            err = (t - pred).astype(np.float64)
            sq = float(np.vdot(err, err))
            sq_err += sq
            data_loss += sq
        else:
            perr = (ch.pref - pred).astype(np.float64)  # c = 0 at padding
            data_loss += float(
                np.vdot(ch.conf * perr, perr)
                - spec.w0 * np.vdot(pred, pred.astype(np.float64))
                + spec.w0 * np.sum((x @ gram) * x)
            )
    bias = (X[:, k] * spec.bias_unit).astype(np.float32) if spec.with_bias else None
    return BlockSolution(X[:, :k].astype(np.float32), bias, data_loss, reg_loss, sq_err)


def _check_block(indptr, cols, vals, n_fixed: int, k: int, width: int, spec: SolveSpec, fixed_bias, gram, x0, cg):
    """ValueError naming what solve_block's inputs disagree on."""
    if indptr[-1] != cols.size or cols.size != vals.size:
        raise ValueError(f"bad CSR: indptr ends at {indptr[-1]}, {cols.size} cols, {vals.size} values")
    if spec.with_bias and (fixed_bias is None or fixed_bias.shape != (n_fixed,)):
        raise ValueError("with_bias needs fixed_bias of shape (n_fixed,)")
    if spec.kind == "implicit" and (gram is None or gram.shape != (k, k)):
        raise ValueError(f"implicit solve needs the ({k}, {k}) Gramian of the fixed side")
    n_rows = indptr.size - 1
    if cg and (x0 is None or x0.shape != (n_rows, width)):
        raise ValueError(
            f"conjugate-gradient solves need x0 of shape ({n_rows}, {width}), got {None if x0 is None else x0.shape}"
        )


def _padded_fixed(Y: np.ndarray, spec: SolveSpec, fixed_bias: np.ndarray | None):
    """The fixed factors with the bias column and a last all-zero row that padded entries point at
    ((n_fixed + 1, width) float32), and what an explicit rating is fitted to beyond the factors,
    mu + b_i per fixed row (0 at padding, like the padded factor rows), or None."""
    n_fixed, k = Y.shape
    Yf = np.zeros((n_fixed + 1, k + 1 if spec.with_bias else k), dtype=np.float32)
    Yf[:n_fixed, :k] = Y
    if spec.with_bias:
        Yf[:n_fixed, k] = spec.bias_unit
    offset = None
    if spec.kind == "explicit" and (spec.mu or spec.with_bias):
        offset = np.full(n_fixed + 1, spec.mu, dtype=np.float32)
        if spec.with_bias:
            offset[:n_fixed] += fixed_bias
    return Yf, offset


def _solve_chunk(ch, G, t, lam, spec: SolveSpec, gram, eig, wbuf, x0_rows, k: int):
    """The new factors of one chunk's rows ((b, width) float64), and their predictions at the rows'
    entries when the solve made them (conjugate gradients), else None. G (b, L, width) holds the
    fixed factors of each row's entries, t (b, L) the targets, lam (b,) the rows' lambdas."""
    width, L = G.shape[2], G.shape[1]
    GT = G.transpose(0, 2, 1)
    mask = ch.mask
    # Gramians and right sides in float32 BLAS (the factors are float32), the k x k solves in float64.
    if x0_rows is not None:
        if spec.kind == "explicit":
            return cg_stack(G, None, t, lam, x0_rows, spec.cg_steps)
        weight = ch.conf - np.float32(spec.w0) * mask
        return cg_stack(G, weight, ch.conf * ch.pref, lam, x0_rows, spec.cg_steps, spec.w0, gram)
    if spec.kind == "explicit" and L < width and not spec.nonnegative and np.all(lam > 0):
        # Fewer ratings than unknowns: the L x L dual system gives the same x (push-through
        # identity: (G'G + lam I)^-1 G't = G'(GG' + lam I)^-1 t); padded entries have t = 0.
        K = np.matmul(G, GT).astype(np.float64)
        K[:, np.arange(L), np.arange(L)] += lam[:, None]
        return np.matmul(GT.astype(np.float64), _solve_spd(K, t.astype(np.float64))[..., None])[..., 0], None
    if spec.kind == "explicit":
        A = np.matmul(GT, G).astype(np.float64)
        rhs = np.matmul(GT, t[..., None])[..., 0].astype(np.float64)
    else:
        c, p = ch.conf, ch.pref
        weight = c - np.float32(spec.w0) * mask  # c - w0 at observed entries, 0 at padding
        if L * 3 < width * 2 and not spec.nonnegative and np.all(lam > 0):
            # Woodbury pays O(L k^2 + L^3) per row against O(L k^2 + k^3) for the k x k system,
            # but at float64 and in smaller products: faster for rows of up to about 2k/3
            # entries (the test above), slower for longer ones.
            return _implicit_few(G, weight, c * p, lam, spec.w0, *eig), None
        Gw = np.multiply(G, weight[:, :, None], out=wbuf[: G.size].reshape(G.shape))
        A = np.matmul(GT, Gw).astype(np.float64)
        A += spec.w0 * gram
        rhs = np.matmul(GT, (c * p)[..., None])[..., 0].astype(np.float64)
    A[:, np.arange(width), np.arange(width)] += lam[:, None]
    return (nnls_stack(A, rhs, free=width - k) if spec.nonnegative else _solve_spd(A, rhs)), None


def _cg_in_eigenbasis(indptr, cols, weight, target, Y, gram, spec: SolveSpec, lam, x0) -> tuple:
    """Weighted ALS's conjugate-gradient steps with the factors turned into the eigenbasis of Y'Y.

    With G = V diag(e) V', the unobserved entries' term w0 G becomes diagonal for Y V, so each step's
    product with it costs O(k) per row instead of O(k^2): per row the work grows with k times the
    row's entries, and the k^2 part is three matrix products per block (Y V, x0 V, X V'), which BLAS
    runs far faster than a row-by-row product. The turn is orthogonal: the steps, the factors and
    the loss are those of the plain basis (up to rounding).
    """
    evals, V = np.linalg.eigh(gram)
    V32 = V.astype(np.float32)
    shift = np.diag(spec.w0 * np.maximum(evals, 0.0))
    X, sums = compiled.cg_rows(
        indptr, cols, weight, target, None, Y @ V32, shift, lam, np.asarray(x0, np.float32) @ V32, spec.cg_steps
    )
    return X.astype(np.float32) @ V32.T, sums


def _solve_compiled(
    indptr: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    fixed_bias: np.ndarray | None,
    gram: np.ndarray | None,
    plan: Layout,
    x0: np.ndarray | None,
) -> BlockSolution:
    """`solve_block` by `kernels.compiled`: conjugate gradients from x0 when given, else exact solves.
    Rows whose exact system is singular (lambda = 0 and too few entries) get the minimum-norm solution,
    by a pseudo-inverse, one row at a time."""
    n_fixed, k = Y.shape
    width = plan.width
    lam = spec.row_reg(plan.counted)
    Yw, weight, offset = Y, plan.weight, None
    if spec.kind == "explicit":
        target, shift = vals, np.zeros((width, width))
        if spec.with_bias:
            Yw = np.empty((n_fixed, width), np.float32)
            Yw[:, :k], Yw[:, k] = Y, spec.bias_unit
        if spec.mu or spec.with_bias:
            offset = np.full(n_fixed, spec.mu, dtype=np.float32)
            if spec.with_bias:
                offset += fixed_bias
    else:
        target, shift = plan.target, spec.w0 * gram
    if x0 is not None and spec.kind == "implicit":
        X, sums = _cg_in_eigenbasis(indptr, cols, weight, target, Yw, gram, spec, lam, x0)
        bad = np.zeros(X.shape[0], np.bool_)
    elif x0 is not None:
        X, sums = compiled.cg_rows(indptr, cols, weight, target, offset, Yw, shift, lam, x0, spec.cg_steps)
        bad = np.zeros(X.shape[0], np.bool_)
    elif plan.root_weight is not None:
        X, bad, sums = compiled.solve_rows(
            indptr, cols, plan.root_weight, plan.root_target, offset, Yw, shift, lam, rooted=True
        )
    else:
        X, bad, sums = compiled.solve_rows(indptr, cols, weight, target, offset, Yw, shift, lam)
    for r in np.flatnonzero(bad):
        sl = slice(indptr[r], indptr[r + 1])
        G = Yw[cols[sl]].astype(np.float64)
        if plan.root_weight is not None:  # w = sqrt(w)^2, t = (t / sqrt(w)) sqrt(w)
            root = plan.root_weight[sl].astype(np.float64)
            w, t = root * root, plan.root_target[sl] * root
        else:
            w = 1.0 if weight is None else weight[sl].astype(np.float64)
            t = target[sl].astype(np.float64) - (0.0 if offset is None else offset[cols[sl]])
        A = G.T @ (w * G.T).T + shift + lam[r] * np.eye(width)
        X[r] = np.linalg.pinv(A, hermitian=True) @ (G.T @ t)
        p = G @ X[r]
        sums += (np.sum(w * p * p - 2.0 * t * p), np.sum(t * t), X[r] @ shift @ X[r], lam[r] * (X[r] @ X[r]))
    if spec.kind == "explicit":
        data_loss = sq_err = float(sums[0] + sums[1])
    else:
        data_loss, sq_err = float(sums[0] + sums[2] + plan.fixed_loss.sum()), 0.0
    bias = (X[:, k] * spec.bias_unit).astype(np.float32) if spec.with_bias else None
    return BlockSolution(X[:, :k].astype(np.float32), bias, data_loss, float(sums[3]), sq_err)


def warm_up(spec: SolveSpec, rank: int) -> None:
    """Solve a three-entry block the way a fit of `spec` at `rank` solves its blocks, so that the
    compiled kernels it uses are loaded (from numba's disk cache, or compiled) before the fit needs
    them. Scoring a top-N (kernels.topk) is warmed the same way by the caller."""
    Y = np.arange(3 * rank, dtype=np.float32).reshape(3, rank) / (3 * rank)
    gram = Y.T.astype(np.float64) @ Y if spec.kind == "implicit" else None
    solve_block(
        np.array([0, 2, 3], np.int64),
        np.array([0, 1, 2], np.int32),
        np.ones(3, np.float32),
        Y,
        spec,
        fixed_bias=np.zeros(3, np.float32) if spec.with_bias else None,
        gram=gram,
        x0=np.zeros((2, rank + spec.with_bias), np.float32) if spec.cg_steps else None,
    )
