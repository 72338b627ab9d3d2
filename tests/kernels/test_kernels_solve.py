"""Stacked solver against slow, obvious references (no Spark)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mf_spark.kernels import compiled
from mf_spark.kernels.solve import (
    COMPILED_MAX_WIDTH,
    SolveSpec,
    backend_for,
    chunks,
    confidence,
    history_mean,
    layout,
    nnls_stack,
    preference,
    solve_block,
    start_point,
)


@pytest.fixture(params=["numpy", "compiled"])
def backend(request):
    """Every exact-solve test runs on both backends against the same reference."""
    return request.param


def random_block(rng, n_rows=30, n_fixed=50, k=6, max_len=40, empty_rows=True):
    lens = rng.integers(0 if empty_rows else 1, max_len, n_rows)
    lens[0] = max_len + 20  # longer than k, longer than the others
    lens = np.minimum(lens, n_fixed)
    cols = np.concatenate([np.sort(rng.choice(n_fixed, size=n, replace=False)) for n in lens]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    vals = rng.uniform(1, 5, cols.size).astype(np.float32)
    Y = rng.normal(size=(n_fixed, k)).astype(np.float32)
    return indptr, cols, vals, Y


def explicit_reference(indptr, cols, vals, Y, row, spec, fixed_bias=None):
    """Per-row dense normal equations in float64."""
    sl = slice(indptr[row], indptr[row + 1])
    Yu = Y[cols[sl]].astype(np.float64)
    t = vals[sl].astype(np.float64) - spec.mu
    if spec.with_bias:
        Yu = np.hstack([Yu, np.ones((Yu.shape[0], 1))])
        t = t - fixed_bias[cols[sl]]
    n = sl.stop - sl.start
    lam = spec.reg * n**spec.reg_exponent
    penalty = np.full(Yu.shape[1], lam)
    if spec.with_bias:
        penalty[-1] *= spec.bias_reg
    A = Yu.T @ Yu + np.diag(penalty)
    if n == 0 and lam == 0:
        return np.zeros(Yu.shape[1])
    return np.linalg.solve(A, Yu.T @ t)


def implicit_dense_reference(indptr, cols, vals, Y, row, spec):
    """Weighted least squares over EVERY fixed-side column: observed with c_ui, the rest with w0."""
    n_fixed, k = Y.shape
    sl = slice(indptr[row], indptr[row + 1])
    w = np.full(n_fixed, spec.w0)
    p = np.zeros(n_fixed)
    w[cols[sl]] = confidence(vals[sl], spec)
    p[cols[sl]] = preference(vals[sl], spec)
    Yd = Y.astype(np.float64)
    n = sl.stop - sl.start
    lam = spec.reg * n**spec.reg_exponent
    A = Yd.T @ (w[:, None] * Yd) + lam * np.eye(k)
    return np.linalg.solve(A, Yd.T @ (w * p))


@pytest.mark.parametrize("reg_exponent", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("budget", [64, 1 << 22])
def test_explicit_matches_per_row(rng, backend, reg_exponent, budget):
    indptr, cols, vals, Y = random_block(rng)
    spec = SolveSpec(reg=0.1, reg_exponent=reg_exponent, mu=3.0)
    got = solve_block(indptr, cols, vals, Y, spec, budget=budget, backend=backend)
    want = np.stack([explicit_reference(indptr, cols, vals, Y, r, spec) for r in range(indptr.size - 1)])
    np.testing.assert_allclose(got.factors, want, rtol=1e-4, atol=1e-5)
    assert got.bias is None and got.factors.dtype == np.float32


@pytest.mark.parametrize("bias_reg", [1.0, 0.2, 5.0])
def test_explicit_with_bias_matches_per_row(rng, backend, bias_reg):
    """bias_reg: the bias's lambda is bias_reg times the factors' (rows longer and shorter than the
    unknowns, so the dual solve too)."""
    indptr, cols, vals, Y = random_block(rng, empty_rows=False)
    fb = rng.normal(size=Y.shape[0]).astype(np.float32)
    spec = SolveSpec(reg=0.05, with_bias=True, mu=3.2, bias_reg=bias_reg)
    got = solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, backend=backend)
    want = np.stack([explicit_reference(indptr, cols, vals, Y, r, spec, fb) for r in range(indptr.size - 1)])
    np.testing.assert_allclose(got.factors, want[:, :-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.bias, want[:, -1], rtol=1e-4, atol=1e-5)
    lens = np.diff(indptr)
    penalty = np.sum(spec.row_reg(lens) * (np.sum(want[:, :-1] ** 2, axis=1) + bias_reg * want[:, -1] ** 2))
    assert got.reg_loss == pytest.approx(penalty, rel=1e-4)
    # conjugate gradients from any start reach the same solution; their start takes the bias as is
    x0 = start_point(rng.normal(size=got.factors.shape).astype(np.float32), got.bias, spec)
    cg = solve_block(
        indptr, cols, vals, Y, dataclasses.replace(spec, cg_steps=30), fixed_bias=fb, x0=x0, backend=backend
    )
    np.testing.assert_allclose(cg.bias, got.bias, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="bias_reg"):
        SolveSpec(with_bias=True, bias_reg=0.0)


def test_explicit_loss_pieces(rng, backend):
    indptr, cols, vals, Y = random_block(rng, empty_rows=False)
    spec = SolveSpec(reg=0.2, reg_exponent=1.0)
    got = solve_block(indptr, cols, vals, Y, spec, backend=backend)
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    pred = np.sum(got.factors[rows].astype(np.float64) * Y[cols], axis=1)
    sse = np.sum((vals - pred) ** 2)
    reg = np.sum(0.2 * np.diff(indptr) * np.sum(got.factors.astype(np.float64) ** 2, axis=1))
    assert got.sq_err == pytest.approx(sse, rel=1e-4)
    assert got.data_loss == pytest.approx(sse, rel=1e-4)
    assert got.reg_loss == pytest.approx(reg, rel=1e-4)


@pytest.mark.parametrize("w0", [1.0, 0.1, 0.01])
@pytest.mark.parametrize("kind,alpha", [("linear", 2.0), ("linear", 40.0), ("log", 5.0)])
@pytest.mark.parametrize("target", ["preference", "value"])
def test_implicit_matches_dense_weighted_lsq(rng, backend, w0, kind, alpha, target):
    indptr, cols, vals, Y = random_block(rng, n_rows=20, n_fixed=45, k=5, max_len=30)
    spec = SolveSpec(kind="implicit", reg=0.05, alpha=alpha, confidence=kind, epsilon=0.5, target=target, w0=w0)
    gram = Y.T.astype(np.float64) @ Y
    got = solve_block(indptr, cols, vals, Y, spec, gram=gram, backend=backend)
    want = np.stack([implicit_dense_reference(indptr, cols, vals, Y, r, spec) for r in range(indptr.size - 1)])
    np.testing.assert_allclose(got.factors, want, rtol=2e-3, atol=2e-4)


def test_implicit_loss_equals_dense_objective(rng, backend):
    indptr, cols, vals, Y = random_block(rng, n_rows=10, n_fixed=30, k=4, max_len=20)
    spec = SolveSpec(kind="implicit", reg=0.1, alpha=3.0, w0=0.5)
    got = solve_block(indptr, cols, vals, Y, spec, gram=Y.T.astype(np.float64) @ Y, backend=backend)
    dense = 0.0
    for r in range(indptr.size - 1):
        sl = slice(indptr[r], indptr[r + 1])
        w = np.full(Y.shape[0], 0.5)
        p = np.zeros(Y.shape[0])
        w[cols[sl]] = confidence(vals[sl], spec)
        p[cols[sl]] = 1.0
        s = Y.astype(np.float64) @ got.factors[r].astype(np.float64)
        dense += np.sum(w * (p - s) ** 2)
    assert got.data_loss == pytest.approx(dense, rel=1e-4)


def test_nnls_matches_brute_force(rng):
    k = 3
    M = rng.normal(size=(40, 6, k))
    A = np.matmul(M.transpose(0, 2, 1), M) + 0.1 * np.eye(k)
    b = rng.normal(size=(40, k))
    got = nnls_stack(A, b)
    assert np.all(got >= 0)
    for a, bb, x in zip(A, b, got):  # enumerate every active set: the true constrained minimum
        best = np.inf
        for mask in range(1 << k):
            S = [j for j in range(k) if mask >> j & 1]
            z = np.zeros(k)
            if S:
                z[S] = np.linalg.solve(a[np.ix_(S, S)], bb[S])
            if np.all(z >= -1e-12):
                best = min(best, 0.5 * z @ a @ z - bb @ z)
        assert 0.5 * x @ a @ x - bb @ x <= best + 1e-8


def test_nonnegative_block_is_nonnegative(rng):
    indptr, cols, vals, Y = random_block(rng, empty_rows=False)
    got = solve_block(indptr, cols, vals, np.abs(Y), SolveSpec(reg=0.1, nonnegative=True))
    assert np.all(got.factors >= 0)


def test_chunks_cover_every_row_once(rng):
    lens = rng.integers(0, 500, 1000)
    seen = np.concatenate([rows for rows, _ in chunks(lens, 10, budget=5000)])
    assert np.array_equal(np.sort(seen), np.arange(1000))
    for rows, width in chunks(lens, 10, budget=5000):
        assert lens[rows].max() <= width


def test_shape_errors(rng):
    indptr, cols, vals, Y = random_block(rng)
    with pytest.raises(ValueError, match="bad CSR"):
        solve_block(indptr, cols[:-1], vals, Y, SolveSpec())
    with pytest.raises(ValueError, match="Gramian"):
        solve_block(indptr, cols, vals, Y, SolveSpec(kind="implicit"))
    with pytest.raises(ValueError, match="fixed_bias"):
        solve_block(indptr, cols, vals, Y, SolveSpec(with_bias=True))


@pytest.mark.parametrize("w0", [1.0, 0.05, 3.0])  # 3.0 > c for some entries: D has negative weights
@pytest.mark.parametrize("reg_exponent", [1.0, 0.0, 0.5])
def test_implicit_rows_with_fewer_entries_than_factors_match_dense(rng, backend, w0, reg_exponent):
    """Rows with L < k take the Woodbury path (L x L systems); same answer as the dense solve."""
    indptr, cols, vals, Y = random_block(rng, n_rows=40, n_fixed=60, k=16, max_len=12)
    spec = SolveSpec(kind="implicit", reg=0.1, alpha=1.5, w0=w0, reg_exponent=reg_exponent)
    got = solve_block(indptr, cols, vals, Y, spec, gram=Y.T.astype(np.float64) @ Y, backend=backend)
    want = np.stack([implicit_dense_reference(indptr, cols, vals, Y, r, spec) for r in range(indptr.size - 1)])
    np.testing.assert_allclose(got.factors, want, rtol=2e-3, atol=2e-4)


def test_explicit_rows_with_fewer_ratings_than_factors_match_per_row(rng, backend):
    """Rows with L < k solve the dual L x L system."""
    indptr, cols, vals, Y = random_block(rng, n_rows=40, n_fixed=60, k=16, max_len=12)
    spec = SolveSpec(kind="explicit", reg=0.1, mu=3.0, with_bias=True)
    fb = rng.normal(size=60).astype(np.float32)
    got = solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, backend=backend)
    want = np.stack([explicit_reference(indptr, cols, vals, Y, r, spec, fb) for r in range(indptr.size - 1)])
    np.testing.assert_allclose(got.factors, want[:, :16], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got.bias, want[:, 16], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("spec", [SolveSpec(reg=0.1, mu=3.0, with_bias=True), SolveSpec(kind="implicit", alpha=2.0)])
def test_a_kept_layout_gives_the_same_solution_and_must_match_the_fixed_side(rng, backend, spec):
    indptr, cols, vals, Y = random_block(rng)
    fb = rng.normal(size=Y.shape[0]).astype(np.float32) if spec.with_bias else None
    gram = Y.T.astype(np.float64) @ Y
    width = Y.shape[1] + spec.with_bias
    plan = layout(indptr, cols, vals, spec, Y.shape[0], width, budget=200, backend=backend)
    fresh = solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, gram=gram, budget=200, backend=backend)
    for Yi in (Y, Y * 0.5):  # the same layout serves a later half-step with other factors
        gi = Yi.T.astype(np.float64) @ Yi
        kept = solve_block(indptr, cols, vals, Yi, spec, fixed_bias=fb, gram=gi, plan=plan)
        again = solve_block(indptr, cols, vals, Yi, spec, fixed_bias=fb, gram=gi, budget=200, backend=backend)
        np.testing.assert_array_equal(kept.factors, again.factors)
        assert kept.data_loss == again.data_loss
    np.testing.assert_array_equal(
        solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, gram=gram, plan=plan).factors, fresh.factors
    )
    assert plan.compiled == (backend == "compiled")
    with pytest.raises(ValueError, match="layout for"):
        solve_block(indptr, cols, vals, Y[:-1], spec, fixed_bias=None if fb is None else fb[:-1], gram=gram, plan=plan)


EXACT_SPECS = [
    SolveSpec(reg=0.1),
    SolveSpec(reg=0.05, with_bias=True, mu=3.0),
    SolveSpec(reg=0.2, reg_exponent=0.0),
    SolveSpec(kind="implicit", reg=0.05, alpha=2.0, w0=0.3),
    SolveSpec(kind="implicit", reg=0.1, alpha=5.0, confidence="log", target="value", w0=2.0),
]


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_the_compiled_engine_gives_the_numpy_engines_factors_and_losses(rng, spec):
    indptr, cols, vals, Y = random_block(rng, n_rows=200, n_fixed=300, k=12, max_len=150)
    fb = rng.normal(size=Y.shape[0]).astype(np.float32) if spec.with_bias else None
    gram = Y.T.astype(np.float64) @ Y
    a, b = (
        solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, gram=gram, backend=e) for e in ("numpy", "compiled")
    )
    np.testing.assert_allclose(b.factors, a.factors, rtol=1e-4, atol=1e-5)
    if spec.with_bias:
        np.testing.assert_allclose(b.bias, a.bias, rtol=1e-4, atol=1e-5)
    for field in ("data_loss", "reg_loss", "sq_err"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-4), field


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])  # with 6, 7, 12, 13 above: widths below, at and past multiples of 4
@pytest.mark.parametrize("spec", [EXACT_SPECS[1], EXACT_SPECS[3]])
def test_the_compiled_kernel_of_each_width_gives_the_numpy_engines_factors_and_losses(rng, spec, k):
    """The exact kernel is compiled per width, its buffer padded to a multiple of four rows: widths
    below, at and past each multiple, odd ones (the last pair of factors is one factor and the targets)."""
    indptr, cols, vals, Y = random_block(rng, n_rows=60, n_fixed=80, k=k, max_len=30)
    fb = rng.normal(size=Y.shape[0]).astype(np.float32) if spec.with_bias else None
    gram = Y.T.astype(np.float64) @ Y
    a, b = (
        solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, gram=gram, backend=e) for e in ("numpy", "compiled")
    )
    np.testing.assert_allclose(b.factors, a.factors, rtol=1e-4, atol=1e-5)
    for field in ("data_loss", "reg_loss", "sq_err"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-4, abs=1e-8), field


@pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed")
def test_rooted_weights_give_the_two_buffer_solution_and_are_used_only_where_every_weight_is_positive(rng):
    """Weighted exact solves copy one buffer of sqrt(w)-scaled factors when every w = c - w0 > 0."""
    indptr, cols, vals, Y = random_block(rng, n_rows=50, n_fixed=70, k=5, max_len=30)
    spec = SolveSpec(kind="implicit", reg=0.05, alpha=2.0, w0=1.0)  # w = 2 r > 0
    plan = layout(indptr, cols, vals, spec, Y.shape[0], 5)
    c, p = confidence(vals, spec), preference(vals, spec)
    weight, target = (c - spec.w0).astype(np.float32), (c * p).astype(np.float32)
    assert plan.root_weight is not None and plan.weight is None and plan.target is None  # kept once
    np.testing.assert_allclose(plan.root_weight**2, weight, rtol=1e-6)
    np.testing.assert_allclose(plan.root_target * plan.root_weight, target, rtol=1e-6)
    gram = Y.T.astype(np.float64) @ Y
    lam = spec.row_reg(np.diff(indptr))
    a = compiled.solve_rows(indptr, cols, weight, target, None, Y, spec.w0 * gram, lam)
    b = compiled.solve_rows(indptr, cols, plan.root_weight, plan.root_target, None, Y, spec.w0 * gram, lam, rooted=True)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-4, atol=1e-6)
    assert not a[1].any() and not b[1].any()
    for i in (0, 2, 3):  # the pieces the weighted loss uses (sum t^2 is then sum t^2 / w)
        assert b[2][i] == pytest.approx(a[2][i], rel=1e-4)
    # some weights <= 0 (w0 above some confidences), or conjugate gradients: the two-buffer weights
    assert layout(indptr, cols, vals, SolveSpec(kind="implicit", alpha=2.0, w0=4.0), Y.shape[0], 5).root_weight is None
    assert (
        layout(indptr, cols, vals, SolveSpec(kind="implicit", alpha=2.0, cg_steps=3), Y.shape[0], 5).root_weight is None
    )
    with pytest.raises(ValueError, match="rooted"):
        compiled.solve_rows(indptr, cols, None, target, None, Y, spec.w0 * gram, lam, rooted=True)


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_compiled_rows_with_singular_systems_take_the_pseudo_inverse_like_numpy(rng, kind):
    """reg = 0 (and w0 = 0): rows with fewer entries than factors have singular systems; the compiled
    backend gives them the minimum-norm least-squares solution and solves the others exactly."""
    indptr, cols, vals, Y = random_block(rng, n_rows=40, n_fixed=60, k=8, max_len=20)
    spec = SolveSpec(kind=kind, reg=0.0, w0=0.0 if kind == "implicit" else 1.0)
    got = solve_block(indptr, cols, vals, Y, spec, gram=Y.T.astype(np.float64) @ Y, backend="compiled")
    lens = np.diff(indptr)
    assert np.any((lens > 0) & (lens < 8)) and np.any(lens >= 8)
    loss = 0.0
    for r in range(lens.size):
        sl = slice(indptr[r], indptr[r + 1])
        G = Y[cols[sl]].astype(np.float64)
        w = confidence(vals[sl], spec) if kind == "implicit" else np.ones(lens[r])
        t = preference(vals[sl], spec) if kind == "implicit" else vals[sl].astype(np.float64)
        want = np.linalg.lstsq(np.sqrt(w)[:, None] * G, np.sqrt(w) * t, rcond=None)[0]  # minimum norm
        np.testing.assert_allclose(got.factors[r], want, rtol=1e-3, atol=1e-4)
        loss += np.sum(w * (t - G @ want) ** 2)
    assert got.data_loss == pytest.approx(loss, rel=1e-4, abs=1e-6)


def test_backend_for_picks_compiled_for_unconstrained_solves_exact_ones_up_to_the_width_limit():
    auto = "compiled" if compiled.AVAILABLE else "numpy"
    assert backend_for(SolveSpec(), 10) == auto
    assert backend_for(SolveSpec(cg_steps=3), 10) == auto
    assert backend_for(SolveSpec(cg_steps=3), COMPILED_MAX_WIDTH + 1) == auto
    assert backend_for(SolveSpec(nonnegative=True), 10) == "numpy"
    assert backend_for(SolveSpec(), COMPILED_MAX_WIDTH + 1) == "numpy"
    assert backend_for(SolveSpec(), 10, "numpy") == "numpy"
    with pytest.raises(ValueError, match="unconstrained"):
        backend_for(SolveSpec(nonnegative=True), 10, "compiled")
    with pytest.raises(ValueError, match="backend must be"):
        backend_for(SolveSpec(), 10, "fast")


def test_without_numba_every_solve_takes_the_numpy_engine(monkeypatch):
    monkeypatch.setattr(compiled, "AVAILABLE", False)
    assert backend_for(SolveSpec(), 10) == "numpy"
    assert backend_for(SolveSpec(cg_steps=3), 10) == "numpy"
    with pytest.raises(ValueError, match="not installed"):
        backend_for(SolveSpec(), 10, "compiled")


CG_SPECS = [
    SolveSpec(reg=0.1),
    SolveSpec(reg=0.05, with_bias=True, mu=3.0),
    SolveSpec(reg=0.1, reg_exponent=0.0),
    SolveSpec(kind="implicit", reg=0.05, alpha=2.0, w0=0.3),
    SolveSpec(kind="implicit", reg=0.1, alpha=5.0, confidence="log", target="value", w0=1.0),
]


def _solve(block, spec, x0=None, fb=None, backend="auto"):
    indptr, cols, vals, Y = block
    gram = Y.T.astype(np.float64) @ Y if spec.kind == "implicit" else None
    return solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, gram=gram, x0=x0, backend=backend)


@pytest.mark.parametrize("spec", CG_SPECS)
def test_conjugate_gradients_reach_the_exact_solve(rng, backend, spec):
    block = random_block(rng)
    fb = rng.normal(size=block[3].shape[0]).astype(np.float32) if spec.with_bias else None
    exact = _solve(block, spec, fb=fb)
    x0 = np.zeros((block[0].size - 1, block[3].shape[1] + spec.with_bias), np.float32)
    cg = _solve(block, dataclasses.replace(spec, cg_steps=25), x0=x0, fb=fb, backend=backend)  # 25 >= 7 unknowns
    np.testing.assert_allclose(cg.factors, exact.factors, rtol=1e-4, atol=1e-5)
    if spec.with_bias:
        np.testing.assert_allclose(cg.bias, exact.bias, rtol=1e-4, atol=1e-5)
    assert cg.data_loss + cg.reg_loss == pytest.approx(exact.data_loss + exact.reg_loss, rel=1e-5)
    assert cg.sq_err == pytest.approx(exact.sq_err, rel=1e-4)


@pytest.mark.parametrize("spec", CG_SPECS)
def test_compiled_conjugate_gradients_take_the_numpy_engines_steps(rng, spec):
    block = random_block(rng, n_rows=200, n_fixed=300, k=12, max_len=150)
    n_rows, k = block[0].size - 1, block[3].shape[1]
    fb = rng.normal(size=block[3].shape[0]).astype(np.float32) if spec.with_bias else None
    x0 = start_point(
        rng.normal(size=(n_rows, k)).astype(np.float32),
        rng.normal(size=n_rows).astype(np.float32) if spec.with_bias else None,
        spec,
    )
    spec = dataclasses.replace(spec, cg_steps=3)
    a, b = (_solve(block, spec, x0=x0, fb=fb, backend=e) for e in ("numpy", "compiled"))
    np.testing.assert_allclose(b.factors, a.factors, rtol=1e-3, atol=1e-4)
    for field in ("data_loss", "reg_loss", "sq_err"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-4), field


def test_weighted_cg_in_the_gramians_eigenbasis_takes_the_plain_basis_steps(rng):
    """The compiled weighted-ALS steps run with the factors turned into the eigenbasis of Y'Y (so that
    w0 Y'Y is diagonal); they must be the steps of the plain basis, with its losses, at a rank where
    the Gramian is far from diagonal."""
    indptr, cols, vals, Y = random_block(rng, n_rows=80, n_fixed=120, k=40, max_len=60)
    Y = (Y + rng.normal(size=(1, 40)).astype(np.float32)).astype(np.float32)  # a dominant direction
    spec = SolveSpec(kind="implicit", reg=0.05, alpha=3.0, w0=0.3, cg_steps=4)
    x0 = rng.normal(size=(indptr.size - 1, 40)).astype(np.float32)
    gram = Y.T.astype(np.float64) @ Y
    assert np.abs(gram - np.diag(np.diagonal(gram))).max() > 0.1 * np.abs(gram).max()
    plan = layout(indptr, cols, vals, spec, Y.shape[0], 40, backend="compiled")
    lam = spec.row_reg(np.diff(indptr))
    plain, sums = compiled.cg_rows(indptr, cols, plan.weight, plan.target, None, Y, spec.w0 * gram, lam, x0, 4)
    got = solve_block(indptr, cols, vals, Y, spec, gram=gram, x0=x0, backend="compiled")
    np.testing.assert_allclose(got.factors, plain, rtol=1e-3, atol=1e-4)
    assert got.reg_loss == pytest.approx(sums[3], rel=1e-5)
    assert got.data_loss == pytest.approx(sums[0] + sums[2] + plan.fixed_loss.sum(), rel=1e-5)


def dense_objective(block, spec, x, fb=None):
    """The half-step objective of the rows at x ((n_rows, width) float64), dense, row by row."""
    indptr, cols, vals, Y = block
    total = 0.0
    for r in range(indptr.size - 1):
        sl = slice(indptr[r], indptr[r + 1])
        n = sl.stop - sl.start
        lam = spec.reg * n**spec.reg_exponent
        if spec.kind == "explicit":
            Yu = Y[cols[sl]].astype(np.float64)
            t = vals[sl].astype(np.float64) - spec.mu
            if spec.with_bias:
                Yu, t = np.hstack([Yu, np.ones((n, 1))]), t - fb[cols[sl]]
            total += np.sum((t - Yu @ x[r]) ** 2)
        else:
            w, p = np.full(Y.shape[0], spec.w0), np.zeros(Y.shape[0])
            w[cols[sl]], p[cols[sl]] = confidence(vals[sl], spec), preference(vals[sl], spec)
            total += np.sum(w * (p - Y.astype(np.float64) @ x[r]) ** 2)
        total += lam * np.sum(x[r] ** 2)
    return total


@pytest.mark.parametrize("spec", CG_SPECS)
def test_each_conjugate_gradient_step_lowers_the_objective_from_the_start(rng, backend, spec):
    block = random_block(rng)
    fb = rng.normal(size=block[3].shape[0]).astype(np.float32) if spec.with_bias else None
    n_rows, k = block[0].size - 1, block[3].shape[1]
    x0 = start_point(
        rng.normal(size=(n_rows, k)).astype(np.float32),
        rng.normal(size=n_rows).astype(np.float32) if spec.with_bias else None,
        spec,
    )
    objective = [dense_objective(block, spec, x0.astype(np.float64), fb)]
    for steps in (1, 2, 3, 5):
        sol = _solve(block, dataclasses.replace(spec, cg_steps=steps), x0=x0, fb=fb, backend=backend)
        objective.append(sol.data_loss + sol.reg_loss)
        x = sol.factors if sol.bias is None else np.column_stack([sol.factors, sol.bias])
        assert objective[-1] == pytest.approx(dense_objective(block, spec, x.astype(np.float64), fb), rel=1e-4)
    exact = _solve(block, spec, fb=fb)
    objective.append(exact.data_loss + exact.reg_loss)
    assert np.all(np.diff(objective) <= 1e-6 * np.abs(objective[:-1])), objective


def test_conjugate_gradients_need_the_current_factors(rng):
    block = random_block(rng)
    with pytest.raises(ValueError, match="x0"):
        _solve(block, SolveSpec(cg_steps=3))
    with pytest.raises(ValueError, match="x0"):
        _solve(block, SolveSpec(cg_steps=3), x0=np.zeros((3, 2), np.float32))


def test_conjugate_gradients_from_the_solution_stay_there(rng):
    block = random_block(rng)
    spec = SolveSpec(kind="implicit", reg=0.1, alpha=2.0, w0=0.5)
    exact = _solve(block, spec)
    again = _solve(block, dataclasses.replace(spec, cg_steps=3), x0=exact.factors)
    np.testing.assert_allclose(again.factors, exact.factors, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_the_history_prior_shrinks_toward_the_rated_items_mean(rng, backend, with_bias):
    """history_prior gamma: each row's ridge pulls toward z_u = gamma n_u^-1/2 sum of its items' y_i
    (not toward 0); the bias keeps its plain ridge. Exact solves and conjugate gradients from any
    start reach the dense reference, and the reported regularization is lambda_u |x_u - z_u|^2."""
    indptr, cols, vals, Y = random_block(rng)
    fb = rng.normal(size=Y.shape[0]).astype(np.float32) if with_bias else None
    spec = SolveSpec(reg=0.2, reg_exponent=0.5, with_bias=with_bias, mu=3.0, bias_reg=0.5, history_prior=0.4)
    lens = np.diff(indptr)
    Z = np.zeros((lens.size, Y.shape[1]))
    for u in np.flatnonzero(lens):
        Z[u] = 0.4 * Y[cols[indptr[u] : indptr[u + 1]]].astype(np.float64).sum(0) / np.sqrt(lens[u])
    np.testing.assert_allclose(history_mean(indptr, cols, Y, 0.4), Z, rtol=1e-5, atol=1e-6)
    want = []
    for u in range(lens.size):  # x = z + d, d the plain solution against the targets less z . y_i
        shifted = vals.copy()
        sl = slice(indptr[u], indptr[u + 1])
        shifted[sl] -= Y[cols[sl]] @ Z[u].astype(np.float32)
        d = explicit_reference(indptr, cols, shifted, Y, u, dataclasses.replace(spec, history_prior=0.0), fb)
        want.append(np.concatenate([d[: Y.shape[1]] + Z[u], d[Y.shape[1] :]]))
    want = np.stack(want)
    got = solve_block(indptr, cols, vals, Y, spec, fixed_bias=fb, backend=backend)
    np.testing.assert_allclose(got.factors, want[:, : Y.shape[1]], rtol=1e-4, atol=1e-4)
    if with_bias:
        np.testing.assert_allclose(got.bias, want[:, -1], rtol=1e-4, atol=1e-4)
    penalty = spec.row_reg(lens) * np.sum((want[:, : Y.shape[1]] - Z) ** 2, axis=1)
    if with_bias:
        penalty = penalty + spec.row_reg(lens) * spec.bias_reg * want[:, -1] ** 2
    assert got.reg_loss == pytest.approx(float(np.sum(penalty[lens > 0])), rel=1e-4)
    x0 = start_point(rng.normal(size=got.factors.shape).astype(np.float32), got.bias, spec)
    cg = solve_block(
        indptr, cols, vals, Y, dataclasses.replace(spec, cg_steps=30), fixed_bias=fb, x0=x0, backend=backend
    )
    np.testing.assert_allclose(cg.factors, got.factors, rtol=1e-4, atol=1e-4)
    plain = solve_block(indptr, cols, vals, Y, dataclasses.replace(spec, history_prior=0.0), fb, backend=backend)
    assert not np.allclose(plain.factors, got.factors, atol=1e-3)


def test_the_items_ridge_is_the_users_times_item_reg_scale():
    spec = SolveSpec(reg=0.1, reg_exponent=0.5, with_bias=True, bias_reg=2.0, item_reg_scale=1.5, history_prior=0.2)
    items = spec.on("item")
    assert spec.on("user") is spec
    assert items.reg == pytest.approx(0.15) and items.bias_reg == 2.0 and items.history_prior == 0.0
    assert items.on("item") == items  # applied once, however often asked
    counts = np.array([1, 4, 9])
    np.testing.assert_allclose(items.row_reg(counts), 1.5 * spec.row_reg(counts))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="item_reg_scale"):
            SolveSpec(item_reg_scale=bad)


def test_the_history_prior_is_the_users_alone_and_explicit_only():
    spec = SolveSpec(reg=0.1, history_prior=0.2)
    assert spec.on("user") is spec and spec.on("item").history_prior == 0.0
    for bad in ({"kind": "implicit"}, {"nonnegative": True}):
        with pytest.raises(ValueError, match="history_prior"):
            SolveSpec(history_prior=0.2, **bad)


_FIRST_CALL = """
import sys, time
import numpy as np
from mf_spark.kernels import compiled

compiled.COMPILE_WAIT = float(sys.argv[2])
while time.time() < float(sys.argv[1]):  # both processes call at once
    time.sleep(0.005)
indptr, cols = np.array([0, 3], np.int64), np.array([0, 1, 2], np.int32)
Y = np.eye(3, 29, dtype=np.float32)
compiled.solve_rows(indptr, cols, None, np.ones(3, np.float32), None, Y, np.zeros((29, 29)), np.ones(1))
stats = compiled._compiled[(compiled._solve_rows_of, 29)].dispatcher.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed")
def test_processes_needing_a_kernel_at_once_compile_it_once(tmp_path):
    """Two processes call the exact kernel at a width nothing else uses, on an empty machine-code cache:
    one compiles it under the kernel's lock, the other waits and loads it from the cache."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    start = f"{time.time() + 4.0}"  # past both imports
    runs = [
        subprocess.Popen([sys.executable, "-c", _FIRST_CALL, start, "60"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    hits, misses = np.sum([[int(v) for v in out.split()] for out in outs], axis=0)
    assert (hits, misses) == (1, 1), outs
