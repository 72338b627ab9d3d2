"""Join strategy: routed factor rows give the broadcast strategy's factors; auto picks it over budget;
lineage stays short over many half-steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import planted
from test_als import ratings_df

from mf_spark.als import loop as als
from mf_spark.als.blocks import build_all
from mf_spark.als.engines.join import Routed, _routes
from mf_spark.als.halfstep import HalfStepResult, solve_spec
from mf_spark.core.config import ModelConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def df(spark):
    u, i, r, _ = planted(n_users=80, n_items=50, rank=5, density=0.6, noise=0.05, seed=11)
    keep = ~((u == 7) | (i == 13))  # a user and an item with no ratings at all
    return ratings_df(spark, u[keep], i[keep], r[keep])


def test_auto_joins_when_the_factors_exceed_the_budget(spark, df, monkeypatch):
    cfg = ModelConfig(rank=4, iterations=1, reg=0.1, seed=2, broadcast_budget_mb=0)
    assert cfg.strategy_for(80, 50) == "join"
    assert dataclasses.replace(cfg, broadcast_budget_mb=1).strategy_for(80, 50) == "broadcast"
    used = []
    monkeypatch.setattr(Routed, "half_step", lambda self, *a, _real=Routed.half_step: used.append(1) or _real(self, *a))
    tiny = als.fit(df, 80, 50, cfg)
    assert len(used) == 2
    want = als.fit(df, 80, 50, dataclasses.replace(cfg, broadcast_budget_mb=2048))
    assert np.max(np.abs(tiny.factors.X - want.factors.X)) < 1e-4


def test_routes_name_exactly_the_rows_each_block_rates(spark, df):
    built = build_all(df, {"user": 3, "item": 2})
    try:
        routes = _routes(built["user"], 2).collect()  # item block s -> [(user block d, item rows)]
        blocks = {b.block: b for b in built["user"].collect()}
        assert len(routes) == 2
        for s, per_dst in enumerate(routes):
            for d, rows in per_dst:
                want = np.unique(blocks[d].cols)
                np.testing.assert_array_equal(rows, want[want % 2 == s])
    finally:
        for rdd in built.values():
            rdd.unpersist()


def test_lineage_stays_short_over_many_iterations(spark, df):
    cfg = ModelConfig(rank=3, iterations=7, reg=0.1, seed=2)
    built = build_all(df, {"user": 2, "item": 2})
    routed = Routed(spark.sparkContext, built, solve_spec(cfg, 0.0), reseed_every=2)
    X = np.full((80, 3), 0.1, np.float32)
    Y = np.full((50, 3), 0.1, np.float32)
    depth = []
    try:
        for _ in range(cfg.iterations):
            Y = routed.half_step("item", 50, X, None, HalfStepResult(Y, None, 0, 0, 0)).factors
            X = routed.half_step("user", 80, Y, None, HalfStepResult(X, None, 0, 0, 0)).factors
            depth.append(routed.factors["user"].toDebugString().count(b"\n"))
    finally:
        routed.close()
        for rdd in built.values():
            rdd.unpersist()
    assert max(depth[4:]) <= max(depth[:3])  # re-seeded every 2: no growth after the first cycle
    assert np.all(np.isfinite(X)) and np.all(np.isfinite(Y))


def test_blocked_top_n_equals_the_broadcast_top_n(spark):
    from mf_spark.core.types import Factors
    from mf_spark.model.factors import Scorer
    from mf_spark.model.topn import recommend_indices, recommend_indices_blocked

    g = np.random.default_rng(4)
    f = Factors(
        g.normal(size=(30, 4)).astype(np.float32),
        g.normal(size=(23, 4)).astype(np.float32),
        g.normal(size=30).astype(np.float32),
        g.normal(size=23).astype(np.float32),
        3.0,
    )
    scorer = Scorer("explicit", f, 3.0, None)
    rows = [(u, sorted(set(g.integers(0, 23, size=u % 7).tolist())) or None) for u in range(30)]
    users = spark.createDataFrame(rows, "user_idx int, seen array<int>").repartition(2)
    want = recommend_indices(spark.sparkContext.broadcast(scorer), users, 5).toPandas()
    for blocks in (1, 4, 24):  # 24 > 23 items: one item per block, one left empty
        got = recommend_indices_blocked(scorer, users, 5, blocks).toPandas()
        a = want.sort_values(["user_idx", "rank"]).reset_index(drop=True)
        b = got.sort_values(["user_idx", "rank"]).reset_index(drop=True)
        assert a[["user_idx", "rank", "item_idx"]].equals(b[["user_idx", "rank", "item_idx"]]), blocks
        np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)
        for u, seen in rows:
            assert not set(b[b.user_idx == u].item_idx) & set(seen or [])


def test_models_over_the_budget_recommend_by_item_blocks(spark):
    from mf_spark.model.topn import item_blocks

    small = {"model": {"rank": 4, "broadcast_budget_mb": 2048}}
    assert item_blocks(small, 80, 50, spark) == 0
    assert item_blocks({"model": {"rank": 4, "broadcast_budget_mb": 0, "num_item_blocks": 3}}, 80, 50, spark) == 3
    assert item_blocks({"model": {"strategy": "join"}}, 80, 50, spark) == spark.sparkContext.defaultParallelism
    assert item_blocks({"model": {"rank": "bad"}}, 80, 50, spark) == 0  # unreadable: broadcast as before
    assert item_blocks({}, 80, 50, spark) == 0


@pytest.mark.parametrize("n_parts,piece_pairs", [(1, 1 << 22), (3, 1 << 22), (8, 1 << 22), (3, 5)])
def test_top_n_grouped_from_pairs_equals_the_seen_lists_top_n(spark, n_parts, piece_pairs):
    from mf_spark.core.types import Factors
    from mf_spark.model.factors import Scorer
    from mf_spark.model.topn import recommend_indices, recommend_indices_grouped

    g = np.random.default_rng(5)
    f = Factors(
        g.normal(size=(30, 4)).astype(np.float32),
        g.normal(size=(23, 4)).astype(np.float32),
        g.normal(size=30).astype(np.float32),
        g.normal(size=23).astype(np.float32),
        3.0,
    )
    bc = spark.sparkContext.broadcast(Scorer("explicit", f, 3.0, None))
    rated = {u: sorted(set(g.integers(0, 23, size=1 + u % 9).tolist())) for u in range(0, 30, 2)}
    rated[4] = list(range(23))  # has seen everything: no recommendation
    pairs = spark.createDataFrame(
        [(u, i) for u, items in rated.items() for i in items], "user_idx int, item_idx int"
    ).repartition(4)
    lists = spark.createDataFrame(list(rated.items()), "user_idx int, seen array<int>")
    want = recommend_indices(bc, lists, 5).toPandas().sort_values(["user_idx", "rank"]).reset_index(drop=True)
    got = recommend_indices_grouped(bc, pairs, 5, n_parts, piece_pairs).toPandas().sort_values(["user_idx", "rank"])
    got = got.reset_index(drop=True)
    assert want[["user_idx", "rank", "item_idx"]].equals(got[["user_idx", "rank", "item_idx"]])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-6)
    assert 4 not in set(got.user_idx) and set(got.user_idx) == set(rated) - {4}
