"""Fold-in of users and items, candidate filters and audiences on FactorModel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from conftest import frame, planted

from mf_spark.als import loop as als
from mf_spark.core.config import ModelConfig
from mf_spark.core.errors import InputError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel

N_USERS, N_ITEMS = 30, 20
CONFIGS = {
    "explicit": ModelConfig(rank=4, iterations=4, reg=0.05, biases=True, num_user_blocks=2, num_item_blocks=2),
    "history prior": ModelConfig(  # and the items' own lambda, which the users' fold-in leaves alone
        rank=4,
        iterations=4,
        reg=0.05,
        biases=True,
        history_prior=0.3,
        item_reg_scale=3.0,
        num_user_blocks=2,
        num_item_blocks=2,
    ),
    "implicit": ModelConfig(
        kind="implicit",
        rank=4,
        iterations=4,
        reg=0.05,
        alpha=2.0,
        unobserved_weight=0.5,
        num_user_blocks=2,
        num_item_blocks=2,
    ),
}


def user_id(u):
    return f"u{u:03d}"


def item_id(i):
    return 1000 + int(i)


@pytest.fixture(scope="module")
def fitted(spark):
    """CONFIGS' name -> (model with string user and long item IDs, its training rows with those IDs)."""
    u, i, r, _ = planted(n_users=N_USERS, n_items=N_ITEMS, rank=3, density=0.4, seed=11)
    out = {}
    for name, cfg in CONFIGS.items():
        kind = cfg.kind
        ratings = np.round(np.abs(r) * 2) + 1 if kind == "implicit" else r
        train = spark.createDataFrame(
            pa.table(
                {
                    "user_idx": pa.array(u, pa.int32()),
                    "item_idx": pa.array(i, pa.int32()),
                    "rating": pa.array(ratings.astype(np.float64)),
                }
            )
        )
        res = als.fit(train, N_USERS, N_ITEMS, cfg)
        users = IdMap(pa.array([user_id(x) for x in range(N_USERS)]), "user")
        items = IdMap(pa.array([item_id(x) for x in range(N_ITEMS)], pa.int64()), "item")
        model = FactorModel(
            kind,
            res.factors,
            users,
            items,
            float(ratings.mean()) if kind == "explicit" else 0.0,
            (float(ratings.min()), float(ratings.max())) if kind == "explicit" else None,
            {"model": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}},
        )
        rows = frame(
            spark,
            [(user_id(a), item_id(b), float(c)) for a, b, c in zip(u, i, ratings)],
            "user string, item long, rating double",
        )
        out[name] = (model, rows)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folding_in_trained_users_own_rows_gives_their_factors_and_recommendations(spark, fitted, name):
    """The fit's last half-step solves the users, so their own rows fold in to their factors, the
    history prior's centre included (its fold-in shrinks toward it as the fit did)."""
    model, rows = fitted[name]
    folded = model.fold_in(rows)
    assert folded.users.ids.equals(model.users.ids) and folded.items is model.items
    np.testing.assert_allclose(folded.factors.X, model.factors.X, rtol=1e-4, atol=1e-5)
    if model.kind == "explicit":
        np.testing.assert_allclose(folded.factors.user_bias, model.factors.user_bias, rtol=1e-4, atol=1e-5)
    recs_model = model.recommend(None, 5, seen=rows).orderBy("user", "rank")
    recs_folded = folded.recommend(None, 5, seen=rows).orderBy("user", "rank")
    assert_df_equality(recs_model.select("user", "rank", "item"), recs_folded.select("user", "rank", "item"))


def test_a_new_user_gets_the_one_half_step_solution(spark, fitted):
    model, _ = fitted["explicit"]
    f = model.factors
    history = frame(
        spark,
        [
            ("new", item_id(1), 5.0),
            ("new", item_id(4), 1.0),
            ("new", item_id(4), 3.0),
            ("new", 999999, 4.0),
            ("lost", 999998, 2.0),
        ],
        "user string, item long, rating double",
    )
    folded = model.fold_in(history)
    assert folded.users.ids.to_pylist() == ["new"]  # "lost" names only unknown items
    # Duplicates are averaged (item 4: 2.0); ALS-WR regularization over the user's 2 distinct items.
    items, r = np.array([1, 4]), np.array([5.0, 2.0])
    A = np.hstack([f.Y[items].astype(np.float64), np.ones((2, 1))])
    t = r - f.mu - f.item_bias[items]
    sol = np.linalg.solve(A.T @ A + 0.05 * 2 * np.eye(5), A.T @ t)
    np.testing.assert_allclose(folded.factors.X[0], sol[:4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(folded.factors.user_bias[0], sol[4], rtol=1e-4, atol=1e-5)


def test_implicit_fold_in_uses_the_gramian_and_needs_no_rating_column(spark, fitted):
    model, _ = fitted["implicit"]
    Y = model.factors.Y.astype(np.float64)
    history = frame(spark, [(7, item_id(2)), (7, item_id(3)), (7, item_id(3))], "user long, item long")
    folded = model.fold_in(history)
    items, c = np.array([2, 3]), 1 + 2.0 * np.array([1.0, 2.0])  # counts summed: 1 and 2
    G = 0.5 * Y.T @ Y + Y[items].T @ np.diag(c - 0.5) @ Y[items] + 0.05 * 2 * np.eye(4)
    np.testing.assert_allclose(folded.factors.X[0], np.linalg.solve(G, Y[items].T @ c), rtol=1e-4, atol=1e-5)
    assert folded.users.ids.type == pa.int64()


def test_fold_in_items_side(spark, fitted):
    model, rows = fitted["explicit"]
    folded = model.fold_in(rows.where("item in (1000, 1003)"), side="items")
    assert folded.items.ids.to_pylist() == [1000, 1003] and folded.users is model.users
    assert folded.factors.Y.shape == (2, 4) and np.isfinite(folded.factors.Y).all()


def test_fold_in_refuses_bad_history(spark, fitted):
    model, _ = fitted["explicit"]
    with pytest.raises(InputError, match="no column 'rating'"):
        model.fold_in(frame(spark, [("a", 1000)], "user string, item long"))
    with pytest.raises(InputError, match="no column 'item'"):
        model.fold_in(frame(spark, [("a", 1000, 1.0)], "user string, thing long, rating double"))
    with pytest.raises(InputError, match="side must be"):
        model.fold_in(frame(spark, [("a", 1000, 1.0)], "user string, item long, rating double"), side="both")
    with pytest.raises(InputError, match="no history row names a known item"):
        model.fold_in(frame(spark, [("a", 5, 1.0)], "user string, item long, rating double"))


def small_model() -> FactorModel:
    g = np.random.default_rng(3)
    X, Y = g.normal(size=(4, 3)).astype(np.float32), g.normal(size=(6, 3)).astype(np.float32)
    return FactorModel(
        "implicit",
        Factors(X, Y, None, None, 0.0),
        IdMap(pa.array([1, 2, 3, 4], pa.int64()), "user"),
        IdMap(pa.array(list("abcdef")), "item"),
        0.0,
        None,
    )


def brute_force(model: FactorModel, n: int, allowed, seen=()):
    S = model.factors.X.astype(np.float64) @ model.factors.Y.T.astype(np.float64)
    rows = []
    for u in range(S.shape[0]):
        user = model.users.ids[u].as_py()
        cands = [
            i
            for i in range(S.shape[1])
            if model.items.ids[i].as_py() in allowed and (user, model.items.ids[i].as_py()) not in seen
        ]
        best = sorted(cands, key=lambda i: (-S[u, i], i))[:n]
        rows += [(user, k + 1, model.items.ids[i].as_py()) for k, i in enumerate(best)]
    return rows


def test_include_and_exclude_lists_compose_with_seen(spark):
    model = small_model()
    seen = frame(spark, [(1, "a"), (2, "b"), (2, "c")], "user long, item string")
    include = frame(spark, [("a",), ("b",), ("c",), ("d",), ("zz",)], "item string")
    got = model.recommend(None, 2, seen=seen, include=include, exclude=["d"]).orderBy("user", "rank")
    want = brute_force(model, 2, {"a", "b", "c"}, {(1, "a"), (2, "b"), (2, "c")})
    assert [tuple(r) for r in got.select("user", "rank", "item").collect()] == want
    only_exclude = model.recommend(None, 3, exclude=np.array(["a", "f"])).orderBy("user", "rank")
    assert [tuple(r) for r in only_exclude.select("user", "rank", "item").collect()] == brute_force(
        model, 3, {"b", "c", "d", "e"}
    )


def test_include_list_without_the_item_column_is_refused(spark):
    with pytest.raises(InputError, match="include: column 'item' is missing"):
        small_model().recommend(None, 2, include=frame(spark, [("a",)], "sku string"))


def test_transposed_model_gives_every_items_best_users(spark):
    model = small_model()
    S = model.factors.X @ model.factors.Y.T
    got = model.transposed().recommend(None, 2).orderBy("user", "rank").collect()
    want = [
        (model.items.ids[i].as_py(), k + 1, model.users.ids[int(u)].as_py())
        for i in range(6)
        for k, u in enumerate(sorted(range(4), key=lambda u: (-S[u, i], u))[:2])
    ]
    assert [(r["user"], r["rank"], r["item"]) for r in got] == want
    np.testing.assert_allclose(
        [r["score"] for r in got],
        [S[model.users.index_of(pa.array([w[2]]))[0], i] for i, w in zip(np.repeat(np.arange(6), 2), want)],
        rtol=1e-5,
    )
