"""SGD matrix factorization against hand-computed steps and a plain-Python reference (no Spark)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import planted

from mf_spark.kernels import compiled
from mf_spark.kernels.sgd import SgdFit, SgdSpec, epoch_order, fit_sgd, init_factors, objective, predict, sgd_epoch

BACKENDS = ["numpy", "compiled"] if compiled.AVAILABLE else ["numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every exactness test runs on both backends against the same reference."""
    return request.param


def reference_fit(u, i, r, n_users, n_items, spec):
    """The recipe in plain Python floats, one scalar at a time: (X, Y, b_u, b_i, mu, losses)."""
    X0, Y0 = init_factors(spec, n_users, n_items)
    X, Y = X0.tolist(), Y0.tolist()
    bu, bi = [0.0] * n_users, [0.0] * n_items
    mu = float(np.mean(r.astype(np.float64))) if spec.biases else 0.0
    lr, reg, rb, k = spec.learning_rate, spec.reg, spec.bias_reg, spec.rank
    losses = []
    for epoch in range(spec.epochs):
        for n in epoch_order(spec.seed, epoch, len(r)):
            a, b = int(u[n]), int(i[n])
            e = float(r[n]) - mu - bu[a] - bi[b] - sum(X[a][f] * Y[b][f] for f in range(k))
            if spec.biases:
                bu[a] += lr * (e - rb * bu[a])
                bi[b] += lr * (e - rb * bi[b])
            xa, yb = X[a][:], Y[b][:]
            X[a] = [xa[f] + lr * (e * yb[f] - reg * xa[f]) for f in range(k)]
            Y[b] = [yb[f] + lr * (e * xa[f] - reg * yb[f]) for f in range(k)]
        J = 0.0
        for a, b, v in zip(u, i, r):
            e = float(v) - mu - bu[a] - bi[b] - sum(X[a][f] * Y[b][f] for f in range(k))
            J += e * e + reg * (sum(x * x for x in X[a]) + sum(y * y for y in Y[b])) + rb * (bu[a] ** 2 + bi[b] ** 2)
        losses.append(J)
    return np.array(X), np.array(Y), np.array(bu), np.array(bi), mu, losses


def split(u, i, r, frac=0.2, seed=0):
    test = np.random.default_rng(seed).random(u.size) < frac
    return (u[~test], i[~test], r[~test]), (u[test], i[test], r[test])


def rmse(fit, u, i, r):
    return float(np.sqrt(np.mean((predict(fit, u, i) - r) ** 2)))


def biases_only_rmse(train, test, n_users, n_items, lam=1.0, passes=30):
    """Held-out RMSE of mu + b_u + b_i fitted by alternating ridge solves: the baseline to beat."""
    u, i, r = train
    mu = r.mean()
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(passes):
        bu = np.bincount(u, r - mu - bi[i], n_users) / (np.bincount(u, minlength=n_users) + lam)
        bi = np.bincount(i, r - mu - bu[u], n_items) / (np.bincount(i, minlength=n_items) + lam)
    tu, ti, tr = test
    return float(np.sqrt(np.mean((mu + bu[tu] + bi[ti] - tr) ** 2)))


def test_defaults_are_surprise_svd_but_rank():
    s = SgdSpec()
    assert (s.rank, s.epochs, s.learning_rate, s.reg, s.reg_bias, s.init_std, s.seed, s.biases) == (
        10,
        20,
        0.005,
        0.02,
        None,
        0.1,
        0,
        True,
    )
    assert s.bias_reg == 0.02 and SgdSpec(reg_bias=0.5).bias_reg == 0.5


def test_two_steps_match_hand_computation(backend):
    """User 0 rates item 0 (4.0) and item 1 (2.0), visited item 1 first; k = 2, lr = 0.1, reg = 0.2,
    reg_b = 0.5, mu = 3. The second step must see what the first wrote to x_0 and b_0."""
    spec = SgdSpec(rank=2, learning_rate=0.1, reg=0.2, reg_bias=0.5)
    u, i, r = np.array([0, 0]), np.array([0, 1]), np.array([4.0, 2.0])
    X = np.array([[0.5, -1.0]])
    Y = np.array([[1.0, 2.0], [2.0, 0.0]])
    bu, bi = np.array([0.2]), np.array([0.1, -0.3])
    sgd_epoch(u, i, r, np.array([1, 0]), X, Y, bu, bi, 3.0, spec, backend)
    # step 1, rating (0, 1): e = 2 - (3 + 0.2 - 0.3 + 0.5*2 + (-1)*0) = -1.9
    b0, b1 = 0.2 + 0.1 * (-1.9 - 0.5 * 0.2), -0.3 + 0.1 * (-1.9 - 0.5 * -0.3)  # 0.0, -0.475
    x = [0.5 + 0.1 * (-1.9 * 2.0 - 0.2 * 0.5), -1.0 + 0.1 * (-1.9 * 0.0 - 0.2 * -1.0)]  # 0.11, -0.98
    y1 = [2.0 + 0.1 * (-1.9 * 0.5 - 0.2 * 2.0), 0.0 + 0.1 * (-1.9 * -1.0 - 0.2 * 0.0)]  # 1.865, 0.19
    # step 2, rating (0, 0): e = 4 - (3 + b0 + 0.1 + x . (1, 2))
    e = 4.0 - (3.0 + b0 + 0.1 + x[0] * 1.0 + x[1] * 2.0)
    b0, b00 = b0 + 0.1 * (e - 0.5 * b0), 0.1 + 0.1 * (e - 0.5 * 0.1)
    x_new = [x[0] + 0.1 * (e * 1.0 - 0.2 * x[0]), x[1] + 0.1 * (e * 2.0 - 0.2 * x[1])]
    y0 = [1.0 + 0.1 * (e * x[0] - 0.2 * 1.0), 2.0 + 0.1 * (e * x[1] - 0.2 * 2.0)]
    np.testing.assert_allclose(X, [x_new], rtol=1e-12)
    np.testing.assert_allclose(Y, [y0, y1], rtol=1e-12)
    np.testing.assert_allclose(bu, [b0], atol=1e-12)
    np.testing.assert_allclose(bi, [b00, b1], rtol=1e-12)


@pytest.mark.parametrize("biases", [True, False])
def test_fit_matches_plain_python_reference(backend, biases):
    g = np.random.default_rng(3)
    u, i = g.integers(0, 7, 40).astype(np.int32), g.integers(0, 5, 40).astype(np.int32)
    r = g.uniform(1, 5, 40).astype(np.float32)
    spec = SgdSpec(rank=3, epochs=3, learning_rate=0.03, reg=0.05, reg_bias=0.1, seed=11, biases=biases)
    X, Y, bu, bi, mu, losses = reference_fit(u, i, r, 7, 5, spec)
    fit = fit_sgd(u, i, r, 7, 5, spec, backend=backend)
    np.testing.assert_allclose(fit.X, X, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.Y, Y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.losses, losses, rtol=1e-9)
    assert fit.mu == pytest.approx(mu)
    if biases:
        np.testing.assert_allclose(fit.user_bias, bu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fit.item_bias, bi, rtol=1e-5, atol=1e-6)
    else:
        assert fit.user_bias is None and fit.item_bias is None and fit.mu == 0.0


@pytest.mark.skipif(not compiled.AVAILABLE, reason="numba not installed")
def test_engines_agree_on_planted_data():
    u, i, r, _ = planted()
    spec = SgdSpec(rank=5, epochs=5, learning_rate=0.02)
    a, b = fit_sgd(u, i, r, 60, 40, spec, backend="numpy"), fit_sgd(u, i, r, 60, 40, spec, backend="compiled")
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.item_bias, b.item_bias, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-9)


def test_deterministic_for_a_seed_and_different_for_another():
    u, i, r, _ = planted()
    spec = SgdSpec(rank=4, epochs=3, seed=5)
    a, b = fit_sgd(u, i, r, 60, 40, spec), fit_sgd(u, i, r, 60, 40, spec)
    c = fit_sgd(u, i, r, 60, 40, dataclasses.replace(spec, seed=6))
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.item_bias, b.item_bias)
    assert a.losses == b.losses
    assert not np.allclose(a.X, c.X) and a.losses != c.losses
    assert not np.array_equal(epoch_order(5, 0, 100), epoch_order(5, 1, 100))


def test_planted_low_rank_beats_biases_only_and_objective_falls():
    u, i, r, _ = planted()
    train, test = split(u, i, r)
    baseline = biases_only_rmse(train, test, 60, 40)
    held_out = []
    spec = SgdSpec(rank=5, epochs=200, learning_rate=0.02)
    fit = fit_sgd(*train, 60, 40, spec, on_epoch=lambda ep, f: held_out.append((ep, rmse(f, *test))))
    assert [ep for ep, _ in held_out] == list(range(200))
    assert rmse(fit, *test) < 0.5 * baseline, (rmse(fit, *test), baseline)
    assert held_out[-1][1] < held_out[0][1]
    rises = np.sum(np.diff(fit.losses) > 0)
    assert rises <= 10 and fit.losses[-1] < 0.2 * fit.losses[0], fit.losses
    # init_std = 0 leaves the factors at 0 forever: SGD fits the biases only, near the ridge baseline
    flat = fit_sgd(*train, 60, 40, dataclasses.replace(spec, init_std=0.0))
    assert not np.any(flat.X) and rmse(flat, *test) == pytest.approx(baseline, rel=0.1)


def test_without_biases_fits_the_product_alone():
    u, i, r, _ = planted()
    train, test = split(u, i, r)
    fit = fit_sgd(*train, 60, 40, SgdSpec(rank=6, epochs=200, learning_rate=0.02, biases=False))
    assert fit.user_bias is None and fit.item_bias is None and fit.mu == 0.0
    assert fit.losses[-1] < 0.1 * fit.losses[0]
    # mu 1 1' + planted rank 5 is rank 6: the product alone still beats the biases
    assert rmse(fit, *test) < biases_only_rmse(train, test, 60, 40)
    np.testing.assert_allclose(predict(fit, [0, -1], [-1, 3]), [0.0, 0.0])


def test_shapes_dtypes_and_snapshots():
    u, i, r, _ = planted()
    seen = []
    fit = fit_sgd(u, i, r, 70, 45, SgdSpec(rank=3, epochs=2), on_epoch=lambda ep, f: seen.append(f))
    assert isinstance(fit, SgdFit)
    assert fit.X.shape == (70, 3) and fit.Y.shape == (45, 3)
    assert fit.X.dtype == fit.Y.dtype == fit.user_bias.dtype == fit.item_bias.dtype == np.float32
    assert fit.user_bias.shape == (70,) and fit.item_bias.shape == (45,)
    assert isinstance(fit.mu, float) and fit.mu == pytest.approx(float(np.mean(r.astype(np.float64))))
    assert len(fit.losses) == 2 and all(isinstance(v, float) for v in fit.losses)
    assert [len(s.losses) for s in seen] == [1, 2]
    np.testing.assert_array_equal(seen[-1].X, fit.X)
    np.testing.assert_array_equal(fit.X[60:], seen[0].X[60:])  # users 60..69 rated nothing: never stepped
    p = predict(fit, u[:5], i[:5])
    assert p.shape == (5,) and p.dtype == np.float64
    assert objective(
        u, i, r.astype(np.float64), fit.X, fit.Y, fit.user_bias, fit.item_bias, fit.mu, SgdSpec(rank=3)
    ) == pytest.approx(fit.losses[-1], rel=1e-5)


def test_predict_unknowns_get_mu_plus_known_bias():
    fit = SgdFit(
        np.array([[1.0, 2.0]], np.float32),
        np.array([[3.0, -1.0], [0.5, 0.5]], np.float32),
        np.array([0.25], np.float32),
        np.array([-0.5, 1.0], np.float32),
        3.0,
    )
    got = predict(fit, np.array([0, 0, -1, 0, -1]), np.array([0, 1, 1, -1, -1]))
    np.testing.assert_allclose(got, [3 + 0.25 - 0.5 + 1.0, 3 + 0.25 + 1.0 + 1.5, 3 + 1.0, 3 + 0.25, 3.0])
    empty = predict(fit, np.array([], np.int32), np.array([], np.int32))
    assert empty.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rank=-1), "rank"),
        (dict(rank=0), "rank"),
        (dict(rank=2.5), "rank"),
        (dict(epochs=0), "epochs"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(reg=-0.1), "reg"),
        (dict(reg_bias=-1.0), "reg_bias"),
        (dict(init_std=-1.0), "init_std"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_spec_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        SgdSpec(**kwargs)


def test_bad_fit_and_predict_arguments_name_the_argument():
    u, i, r = np.array([0, 1], np.int32), np.array([0, 2], np.int32), np.array([4.0, 3.0])
    spec = SgdSpec(rank=2, epochs=1)
    with pytest.raises(ValueError, match="users: id 1 outside"):
        fit_sgd(u, i, r, 1, 3, spec)
    with pytest.raises(ValueError, match="items: id 2 outside"):
        fit_sgd(u, i, r, 2, 2, spec)
    with pytest.raises(ValueError, match="users: id -1 outside"):
        fit_sgd(np.array([-1, 0]), i, r, 2, 3, spec)
    with pytest.raises(ValueError, match="n_users"):
        fit_sgd(u, i, r, -1, 3, spec)
    with pytest.raises(ValueError, match="ratings"):
        fit_sgd(u, i, r[:1], 2, 3, spec)
    with pytest.raises(ValueError, match="ratings"):
        fit_sgd(u, i, np.array([4.0, np.nan]), 2, 3, spec)
    with pytest.raises(ValueError, match="items must be a 1-d integer"):
        fit_sgd(u, np.array([0.0, 1.0]), r, 2, 3, spec)
    with pytest.raises(ValueError, match="backend"):
        fit_sgd(u, i, r, 2, 3, spec, backend="gpu")
    fit = fit_sgd(u, i, r, 2, 3, spec)
    with pytest.raises(ValueError, match="users: id -2 outside"):
        predict(fit, np.array([-2]), np.array([0]))
    with pytest.raises(ValueError, match="items: id 3 outside"):
        predict(fit, np.array([0]), np.array([3]))
