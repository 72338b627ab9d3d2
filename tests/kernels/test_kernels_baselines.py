"""Biases-only and popularity baselines: damped means, and rank-0 factors every model path serves."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import planted

from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.kernels.baselines import biases, popularity, zero_filled_svd
from mf_spark.model.factors import FactorModel


def test_damped_means_by_hand():
    u, i = np.array([0, 0, 1]), np.array([0, 1, 0])
    r = np.array([5.0, 3.0, 4.0])
    got = biases(u, i, r, 3, 3, user_damping=1.0, item_damping=2.0)
    mu = 4.0
    bi = np.array([(1.0 + 0.0) / (2 + 2), (-1.0) / (1 + 2), 0.0])
    bu = np.array([((5 - mu - bi[0]) + (3 - mu - bi[1])) / (2 + 1), (4 - mu - bi[0]) / (1 + 1), 0.0])
    assert got.mu == mu and got.X.shape == (3, 0) and got.Y.shape == (3, 0)
    np.testing.assert_allclose(got.item_bias, bi, rtol=1e-6)
    np.testing.assert_allclose(got.user_bias, bu, rtol=1e-6)
    undamped = biases(u, i, r, 3, 3, 0.0, 0.0)
    assert np.isfinite(undamped.item_bias).all() and undamped.item_bias[2] == 0


def test_biases_beat_the_global_mean_on_held_out_ratings():
    u, i, r, _ = planted(n_users=80, n_items=50, density=0.5, seed=4)
    g = np.random.default_rng(0)
    bu_true, bi_true = 2 * g.normal(size=80), 2 * g.normal(size=50)
    r = r + bu_true[u] + bi_true[i]
    test = g.random(u.size) < 0.2
    fit = biases(u[~test], i[~test], r[~test], 80, 50)
    pred = fit.mu + fit.user_bias[u[test]] + fit.item_bias[i[test]]
    assert np.sqrt(np.mean((pred - r[test]) ** 2)) < 0.75 * np.sqrt(np.mean((r[~test].mean() - r[test]) ** 2))


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="items: indices must lie in 0..1"):
        biases(np.array([0]), np.array([2]), np.array([1.0]), 1, 2)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        biases(np.array([0]), np.array([0]), np.array([1.0]), 1, 1, user_damping=-1)
    with pytest.raises(ValueError, match="no ratings"):
        biases(np.zeros(0, int), np.zeros(0, int), np.zeros(0), 1, 1)


def test_popularity_ranks_by_count_and_rank_zero_models_predict_and_recommend(spark):
    u, i = np.array([0, 1, 2, 2, 1]), np.array([2, 2, 2, 0, 0])
    pop = popularity(u, i, 3, 4)
    np.testing.assert_allclose(pop.item_bias, np.log1p([2, 0, 3, 0]), rtol=1e-6)
    model = FactorModel(
        "implicit",
        Factors(**vars(pop)),
        IdMap(pa.array([7, 8, 9], pa.int64()), "user"),
        IdMap(pa.array(["a", "b", "c", "d"]), "item"),
        0.0,
        None,
    )
    recs = model.recommend(None, 2).orderBy("user", "rank").collect()
    assert [(r["user"], r["item"]) for r in recs] == [(u_, it) for u_ in (7, 8, 9) for it in ("c", "a")]
    bias_model = FactorModel(
        "explicit",
        Factors(**vars(biases(u, i, np.array([1.0, 2, 3, 4, 5]), 3, 4))),
        model.users,
        model.items,
        3.0,
        (1.0, 5.0),
    )
    np.testing.assert_allclose(
        bias_model.predict_idx(np.array([0, -1]), np.array([2, 3])),
        [
            bias_model.factors.mu + bias_model.factors.user_bias[0] + bias_model.factors.item_bias[2],
            3.0 + bias_model.factors.item_bias[3],
        ],
        rtol=1e-5,
    )


def test_zero_filled_svd_is_the_best_low_rank_approximation_of_the_zero_filled_matrix():
    g = np.random.default_rng(2)
    dense = (g.random((30, 20)) < 0.4) * g.integers(1, 6, (30, 20))
    u, i = np.nonzero(dense)
    got = zero_filled_svd(u, i, dense[u, i].astype(np.float64), 30, 20, rank=4, seed=1, power_iterations=6)
    U, s, Vt = np.linalg.svd(dense.astype(np.float64))
    best = (U[:, :4] * s[:4]) @ Vt[:4]
    np.testing.assert_allclose(got.X.astype(np.float64) @ got.Y.T, best, atol=1e-3 * s[0])
    assert got.X.shape == (30, 4) and got.user_bias is None
    with pytest.raises(ValueError, match="rank must be >= 1"):
        zero_filled_svd(u, i, dense[u, i], 30, 20, rank=0)
