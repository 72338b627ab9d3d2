"""Block-parallel ALS on Spark: planted recovery, monotone objective, block-count independence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import planted

from mf_spark.als import loop as als
from mf_spark.core.config import ModelConfig


def ratings_df(spark, u, i, r):
    import pyarrow as pa

    return spark.createDataFrame(
        pa.table(
            {
                "user_idx": pa.array(u, pa.int32()),
                "item_idx": pa.array(i, pa.int32()),
                "rating": pa.array(r.astype(np.float64)),
            }
        )
    )


@pytest.fixture(scope="module")
def planted_split():
    u, i, r, full = planted(n_users=80, n_items=50, rank=5, density=0.6, noise=0.05, seed=3)
    g = np.random.default_rng(0)
    test = g.random(u.size) < 0.15
    return u, i, r, test, full


def heldout_rmse(res, u, i, r):
    f = res.factors
    pred = f.mu + np.sum(f.X[u] * f.Y[i], axis=1)
    if f.user_bias is not None:
        pred += f.user_bias[u] + f.item_bias[i]
    return float(np.sqrt(np.mean((pred - r) ** 2)))


def test_planted_rank5_recovered(spark, planted_split):
    u, i, r, test, _ = planted_split
    cfg = ModelConfig(rank=5, iterations=15, reg=0.002, num_user_blocks=3, num_item_blocks=2, biases=True)
    res = als.fit(ratings_df(spark, u[~test], i[~test], r[~test]), 80, 50, cfg)
    assert heldout_rmse(res, u[test], i[test], r[test]) < 0.12  # noise is 0.05
    assert res.history[-1]["train_rmse"] < 0.06
    assert len(res.history) == 15


@pytest.mark.parametrize(
    "biases,scaling,solver,bias_reg,item_scale",
    [
        (False, "count", "exact", 1.0, 1.0),
        (True, "none", "exact", 1.0, 2.5),
        (True, "count", "cg", 1.0, 1.0),
        (False, "none", "cg", 1.0, 1.0),
        (True, "count", "exact", 0.1, 1.0),
        (True, "count", "cg", 10.0, 0.4),
    ],
)
def test_objective_never_increases(spark, planted_split, biases, scaling, solver, bias_reg, item_scale):
    """The objective includes the biases' own penalty (bias_reg times the factors' lambda), and the
    items' lambda is item_reg_scale times the users'."""
    u, i, r, _, _ = planted_split
    cfg = ModelConfig(
        rank=4,
        iterations=6,
        reg=0.05,
        reg_scaling=scaling,
        biases=biases,
        num_user_blocks=2,
        num_item_blocks=3,
        solver=solver,
        cg_steps=2,
        bias_reg=bias_reg,
        item_reg_scale=item_scale,
    )
    res = als.fit(ratings_df(spark, u, i, r), 80, 50, cfg)
    losses = np.array(res.losses)
    assert losses.size == 12
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), losses
    # the last loss is the objective of the final factors
    f = res.factors
    pred = f.mu + np.sum(f.X[u].astype(np.float64) * f.Y[i], axis=1)
    penalty = 0.0
    sides = (
        (f.X, f.user_bias, np.bincount(u, minlength=80), 1.0),
        (f.Y, f.item_bias, np.bincount(i, minlength=50), item_scale),
    )
    for F, b, n, scale in sides:
        lam = 0.05 * scale * (n if scaling == "count" else (n > 0))
        penalty += np.sum(lam * np.sum(F.astype(np.float64) ** 2, axis=1))
        if b is not None:
            penalty += bias_reg * np.sum(lam * b.astype(np.float64) ** 2)
    if biases:
        pred += f.user_bias[u] + f.item_bias[i]
    assert losses[-1] == pytest.approx(np.sum((r - pred) ** 2) + penalty, rel=1e-4)


def test_the_drivers_blas_runs_on_one_thread_during_a_fit_and_after_it_as_before(spark, planted_split):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    u, i, r, _, _ = planted_split
    before, seen = blas_threads(), []

    def probe(it, factors):
        seen.append(blas_threads())
        return {}

    probe.spark_free = True
    als.fit(
        ratings_df(spark, u, i, np.abs(r)),
        80,
        50,
        ModelConfig(kind="implicit", rank=4, iterations=2),
        on_iteration=probe,
    )
    assert len(seen) == 2 and all(t and set(t) == {1} for t in seen), seen
    assert blas_threads() == before


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_implicit_objective_never_increases(spark, planted_split, solver):
    u, i, r, _, _ = planted_split
    cfg = ModelConfig(
        kind="implicit",
        rank=4,
        iterations=5,
        reg=0.05,
        alpha=2.0,
        unobserved_weight=0.3,
        num_user_blocks=2,
        num_item_blocks=2,
        solver=solver,
        cg_steps=2,
    )
    res = als.fit(ratings_df(spark, u, i, np.abs(r)), 80, 50, cfg)
    losses = np.array(res.losses)
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), losses


def test_the_reported_loss_is_the_objective_of_the_final_factors_dislikes_included(spark, planted_split):
    """Weighted ALS over strengths some of which are < 0 (dislikes: preference 0, confidence
    1 + alpha |r|): the last loss is the whole objective at the factors returned, its lambdas
    counting each row's entries > 0 on both sides, as MLlib counts them."""
    u, i, r, _, _ = planted_split
    r = np.where(np.arange(r.size) % 5 == 0, -np.abs(r), np.abs(r))
    cfg = ModelConfig(kind="implicit", rank=4, iterations=2, reg=0.05, alpha=2.0, unobserved_weight=0.3)
    res = als.fit(ratings_df(spark, u, i, r), 80, 50, cfg)
    X, Y = res.factors.X.astype(np.float64), res.factors.Y.astype(np.float64)
    weight, pref = np.full((80, 50), 0.3), np.zeros((80, 50))
    weight[u, i], pref[u, i] = 1.0 + 2.0 * np.abs(r), r > 0
    lam_u, lam_i = 0.05 * np.bincount(u[r > 0], minlength=80), 0.05 * np.bincount(i[r > 0], minlength=50)
    want = np.sum(weight * (pref - X @ Y.T) ** 2) + lam_u @ np.sum(X * X, 1) + lam_i @ np.sum(Y * Y, 1)
    assert res.losses[-1] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_same_factors_for_any_block_count(spark, planted_split, solver):
    u, i, r, _, _ = planted_split
    df = ratings_df(spark, u, i, r).cache()
    base = ModelConfig(rank=6, iterations=5, reg=0.05, biases=True, solver=solver)
    fits = [als.fit(df, 80, 50, dataclasses.replace(base, num_user_blocks=b, num_item_blocks=b)) for b in (1, 4, 7)]
    for other in fits[1:]:
        assert np.max(np.abs(other.factors.X - fits[0].factors.X)) < 1e-4
        assert np.max(np.abs(other.factors.Y - fits[0].factors.Y)) < 1e-4
        assert np.max(np.abs(other.factors.user_bias - fits[0].factors.user_bias)) < 1e-4


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_nonnegative_factors(spark, planted_split, kind):
    u, i, r, _, _ = planted_split
    cfg = ModelConfig(
        kind=kind,
        rank=4,
        iterations=4,
        reg=0.05,
        nonnegative=True,
        biases=kind == "explicit",
        num_user_blocks=2,
        num_item_blocks=2,
    )
    res = als.fit(ratings_df(spark, u, i, np.abs(r)), 80, 50, cfg)
    assert np.all(res.factors.X >= 0) and np.all(res.factors.Y >= 0)
    losses = np.array(res.losses)
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), losses


def test_resume_from_checkpoint_gives_the_uninterrupted_factors(spark, planted_split, tmp_path):
    from mf_spark.als.checkpoint import CheckpointStore

    u, i, r, _, _ = planted_split
    df = ratings_df(spark, u, i, r)
    cfg = ModelConfig(
        rank=4, iterations=5, reg=0.05, biases=True, checkpoint_interval=2, num_user_blocks=2, num_item_blocks=2
    )
    whole = als.fit(df, 80, 50, cfg)
    store = CheckpointStore(spark, str(tmp_path / "out"))

    def die_at_3(iteration, factors):
        if iteration == 3:
            raise RuntimeError("killed")
        return {}

    with pytest.raises(RuntimeError, match="killed"):
        als.fit(df, 80, 50, cfg, on_iteration=die_at_3, checkpoints=store)
    state, _ = store.latest()
    assert state["iteration"] == 2
    resumed = als.fit(df, 80, 50, cfg, checkpoints=store, resume=True)
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert np.max(np.abs(resumed.factors.X - whole.factors.X)) < 1e-5
    assert np.max(np.abs(resumed.factors.Y - whole.factors.Y)) < 1e-5
    assert np.max(np.abs(resumed.factors.item_bias - whole.factors.item_bias)) < 1e-5
    with pytest.raises(Exception, match="does not match"):
        als.fit(df, 80, 50, ModelConfig(rank=3, iterations=5, checkpoint_interval=2), checkpoints=store, resume=True)


def test_tolerance_stops_once_an_iteration_barely_lowers_the_objective(spark, planted_split):
    u, i, r, _, _ = planted_split
    df = ratings_df(spark, u, i, r).cache()
    cfg = ModelConfig(
        rank=5, iterations=60, reg=0.05, biases=True, tolerance=1e-3, num_user_blocks=2, num_item_blocks=2
    )
    res = als.fit(df, 80, 50, cfg)
    losses = np.array([h["loss"] for h in res.history])
    n = losses.size
    assert 2 <= n < 60
    drops = (losses[:-1] - losses[1:]) / losses[:-1]
    assert drops[-1] <= 1e-3 and np.all(drops[:-1] > 1e-3), drops
    # the same fit as asking for those iterations
    fixed = als.fit(df, 80, 50, dataclasses.replace(cfg, iterations=n, tolerance=0.0))
    np.testing.assert_array_equal(res.factors.X, fixed.factors.X)
    with pytest.raises(Exception, match="model.tolerance"):
        dataclasses.replace(cfg, tolerance=1.0)


def test_the_join_strategy_says_when_it_sets_the_stream_exchange_aside(caplog):
    from mf_spark.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.exchange"):
        ModelConfig(strategy="join", exchange="stream")
    over = ModelConfig(exchange="stream", broadcast_budget_mb=0)
    with caplog.at_level("WARNING", logger="mf_spark"):
        assert als.strategy(over, 80, 50) == "join"
    assert "model.exchange = stream is not used" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mf_spark"):
        assert als.strategy(ModelConfig(broadcast_budget_mb=0), 80, 50) == "join"
        assert als.strategy(ModelConfig(exchange="stream"), 80, 50) == "broadcast"
    assert not caplog.text


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_the_item_half_step_solves_with_the_items_own_lambda(spark, planted_split, solver):
    """item_reg_scale s: the items' ridge (their biases' too) is s times the users'. Items go first
    (MLlib's order), so one iteration's item factors are the ridge solutions against the initial users."""
    from mf_spark.core.types import Factors
    from mf_spark.data.ready import Triples

    u, i, r, test, _ = planted_split
    u, i, r = u[~test].astype(np.int32), i[~test].astype(np.int32), r[~test]
    g = np.random.default_rng(4)
    start = Factors(
        g.normal(size=(80, 5)).astype(np.float32),
        g.normal(size=(50, 5)).astype(np.float32),
        g.normal(size=80).astype(np.float32),
        g.normal(size=50).astype(np.float32),
        0.0,
    )
    cfg = ModelConfig(
        rank=5, iterations=1, reg=0.3, reg_exponent=0.5, biases=True, bias_reg=2.0, item_reg_scale=3.0, solver=solver
    )
    cfg = dataclasses.replace(cfg, cg_steps=60) if solver == "cg" else cfg
    got = als.fit(Triples(spark, u, i, r), 80, 50, cfg, initial=start).factors
    mu = float(r.mean())
    for item in range(50):
        rows = np.flatnonzero(i == item)
        A = np.hstack([start.X[u[rows]], np.ones((rows.size, 1))]).astype(np.float64)
        lam = 0.3 * 3.0 * rows.size**0.5
        penalty = np.diag([lam] * 5 + [lam * 2.0])
        want = np.linalg.solve(A.T @ A + penalty, A.T @ (r[rows] - mu - start.user_bias[u[rows]]))
        np.testing.assert_allclose(got.Y[item], want[:5], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got.item_bias[item], want[5], rtol=1e-3, atol=1e-4)
