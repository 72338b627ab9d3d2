"""Held-out evaluation on Spark: error metrics, relevant sets, ranking metrics with seen items excluded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mf_spark import evaluate
from mf_spark.core.types import Factors
from mf_spark.data import ready
from mf_spark.kernels.metrics import ranking_metrics
from mf_spark.model.factors import Scorer
from mf_spark.model.topn import seen_lists


def test_relevant_items_drop_cold_and_apply_threshold():
    ho = ready.HeldOut(
        np.array([2, 0, 0, -1, 1], np.int32), np.array([1, 3, 2, 0, -1], np.int32), np.array([5.0, 2.0, 4.0, 5.0, 5.0])
    )
    rel = evaluate.relevant_items(ho, None)
    assert rel.users.tolist() == [0, 2] and rel.indptr.tolist() == [0, 2, 3] and rel.items.tolist() == [2, 3, 1]
    rel = evaluate.relevant_items(ho, 4.0)
    assert rel.users.tolist() == [0, 2] and rel.items.tolist() == [2, 1]
    assert ho.n_cold == 2


def test_an_implicit_dislike_held_out_is_not_relevant():
    """data.nonpositive = "negative" keeps dislikes (< 0): a top list is not credited for them."""
    from mf_spark.core.config import load

    run = load(None, ["model.kind=implicit", "data.nonpositive=negative"])
    ho = ready.HeldOut(np.array([0, 0, 1], np.int32), np.array([1, 2, 1], np.int32), np.array([3.0, -2.0, 1e-3]))
    rel = evaluate.relevant_items(ho, evaluate.relevance_threshold(run))
    assert rel.users.tolist() == [0, 1] and rel.items.tolist() == [1, 1]


def test_error_metrics_clip_and_cold_rows():
    f = Factors(np.array([[1.0], [2.0]], np.float32), np.array([[3.0]], np.float32), None, None, 0.0)
    scorer = Scorer("explicit", f, 2.5, (1.0, 5.0))
    ho = ready.HeldOut(np.array([0, 1, -1], np.int32), np.array([0, 0, 0], np.int32), np.array([3.0, 5.0, 2.5]))
    got = evaluate.error_metrics(scorer, ho)  # predictions 3, 6 -> 5 (clipped), 2.5 (cold)
    assert got["rmse"] == pytest.approx(0.0) and got["mae"] == pytest.approx(0.0)
    assert evaluate.error_metrics(Scorer("implicit", f, 0.0, None), ho) == {"rmse": None, "mae": None}


def _ranking_case(spark, rng, n_users=25, n_items=40):
    X = rng.normal(size=(n_users, 4)).astype(np.float32)
    Y = rng.normal(size=(n_items, 4)).astype(np.float32)
    train = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.3]
    test = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.1 and (u, i) not in set(train)]
    tu, ti = np.array(train).T
    train_df = spark.createDataFrame(
        pa.table({"user_idx": pa.array(tu, pa.int32()), "item_idx": pa.array(ti, pa.int32())})
    )
    hu, hi = np.array(test).T
    rel = evaluate.relevant_items(ready.HeldOut(hu.astype(np.int32), hi.astype(np.int32), np.ones(hu.size)), None)
    S = X @ Y.T
    S[tu, ti] = -np.inf  # training items never recommended
    return X, Y, train_df, rel, S


def test_driver_evaluator_of_pairs_and_top_lists_match_brute_force(spark, rng):
    """The sample evaluator (on_driver, fed the training pairs as a DataFrame or as driver arrays) and
    ranking_of_top (top lists with training items excluded) give the brute-force metrics."""
    from mf_spark.als.loop import TopLists
    from mf_spark.data.ready import Triples

    n_items, k = 40, 5
    X, Y, train_df, rel, S = _ranking_case(spark, rng)
    want = ranking_metrics(np.argsort(-S, axis=1, kind="stable")[rel.users, :k], rel.indptr, rel.items, n_items, k)
    got = evaluate.RankingEvaluator(train_df, rel, n_items, k, on_driver=True)(
        Scorer("implicit", Factors(X, Y, None, None, 0.0), 0.0, None)
    )
    order = np.argsort(-S, axis=1, kind="stable")[:, :7]
    top = TopLists(
        np.full(X.shape[0], 7, np.int32),
        order.astype(np.int32),
        np.take_along_axis(S, order, axis=1).astype(np.float32),
    )
    from_top = evaluate.ranking_of_top(top, rel, n_items, k)
    t = train_df.toArrow()  # the same pairs held by the driver
    held = Triples(spark, t.column("user_idx").to_numpy(), t.column("item_idx").to_numpy(), np.ones(t.num_rows))
    of_held = evaluate.RankingEvaluator(held, rel, n_items, k, on_driver=True)(
        Scorer("implicit", Factors(X, Y, None, None, 0.0), 0.0, None)
    )
    for key in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "n_users_evaluated"):
        assert got[key] == pytest.approx(want[key]), key
        assert from_top[key] == pytest.approx(want[key]), key
        assert of_held[key] == pytest.approx(want[key]), key


def test_ranking_evaluator_matches_driver_brute_force(spark, rng):
    n_users, n_items, k = 25, 40, 5
    X = rng.normal(size=(n_users, 4)).astype(np.float32)
    Y = rng.normal(size=(n_items, 4)).astype(np.float32)
    train = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.3]
    test = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.1 and (u, i) not in set(train)]
    tu, ti = np.array(train).T
    train_df = spark.createDataFrame(
        pa.table({"user_idx": pa.array(tu, pa.int32()), "item_idx": pa.array(ti, pa.int32())})
    )
    hu, hi = np.array(test).T
    ho = ready.HeldOut(hu.astype(np.int32), hi.astype(np.int32), np.ones(hu.size))
    rel = evaluate.relevant_items(ho, None)
    ev = evaluate.RankingEvaluator(seen_lists(train_df), rel, n_items, k)
    scorer = Scorer("implicit", Factors(X, Y, None, None, 0.0), 0.0, None)
    got = ev(scorer)
    ev.close()
    S = X @ Y.T
    S[tu, ti] = -np.inf  # training items never recommended
    recs = np.argsort(-S, axis=1, kind="stable")[rel.users, :k]
    want = ranking_metrics(recs, rel.indptr, rel.items, n_items, k)
    for key in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "n_users_evaluated"):
        assert got[key] == pytest.approx(want[key]), key
    assert 0 < got["ndcg_at_k"] < 1


def test_sample_users_keeps_their_items():
    ho = ready.HeldOut(
        np.repeat(np.arange(50, dtype=np.int32), 3), np.tile(np.array([1, 4, 7], np.int32), 50), np.ones(150)
    )
    rel = evaluate.relevant_items(ho, None)
    sub = evaluate.sample_users(rel, 10, seed=1)
    assert sub.users.size == 10 and np.all(np.diff(sub.users) > 0)
    assert sub.indptr.tolist() == list(range(0, 31, 3)) and sub.items.tolist() == [1, 4, 7] * 10
    assert evaluate.sample_users(rel, 10, seed=1).users.tolist() == sub.users.tolist()
    assert evaluate.sample_users(rel, 100) is rel


def _held_out_of(spark, path, driver_rows, sql):
    from mf_spark.core.config import from_dict
    from mf_spark.data import prepare

    cfg = from_dict(
        {
            "data": {"front_end": "spark"},
            "split": {"method": "per_user", "test_fraction": 0.3},
            "eval": {"driver_rows": driver_rows},
        }
    )
    front = prepare.front_end(spark, cfg, sql=sql, input=path)
    front.load()
    return front.split_index()


@pytest.mark.parametrize("ids,sql", [("int", False), ("text", True)])
def test_past_driver_rows_the_final_metrics_score_every_row_in_the_tasks(spark, rng, tmp_path, ids, sql):
    """More held-out rows than eval.driver_rows: the driver keeps whole users of a sample (the same
    ones whatever else), and evaluate.InTasks scores every row where the tasks keep them, as the
    driver scores them all; from the executors' front end and from Spark SQL's stages."""
    n_users, n_items, k = 90, 30, 5
    rows = [(u, i, float(rng.integers(1, 6))) for u in range(n_users) for i in range(n_items) if rng.random() < 0.35]
    rows += [(u, n_items + u, 4.0) for u in range(n_users)]  # an item of one user's: cold where held out
    name = (lambda v: f"u{v}") if ids == "text" else (lambda v: v * 1000003)
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"{name(u)},{i},{r}\n" for u, i, r in rows))
    whole = _held_out_of(spark, str(path), 10**9, sql)
    part = _held_out_of(spark, str(path), 60, sql)
    assert whole.heldout.whole and not part.heldout.whole
    assert part.heldout.n == whole.heldout.n and part.heldout.n_cold == whole.heldout.n_cold > 0
    assert 0 < part.heldout.r.size < whole.heldout.n
    # the sample is whole users: each sampled user's held-out rows, all of them
    sampled = np.unique(part.heldout.u)
    mine = np.isin(whole.heldout.u, sampled)
    assert np.count_nonzero(mine) == part.heldout.r.size
    assert np.array_equal(np.unique(_held_out_of(spark, str(path), 60, sql).heldout.u), sampled)
    # as many as the limit: every row from the tasks' job (the input's size alone allowed no less)
    exact = _held_out_of(spark, str(path), whole.heldout.n, sql).heldout
    assert exact.whole
    a, b = np.lexsort((exact.i, exact.u)), np.lexsort((whole.heldout.i, whole.heldout.u))
    for c in ("u", "i", "r", "t"):
        assert np.array_equal(getattr(exact, c)[a], getattr(whole.heldout, c)[b]), c

    X = rng.normal(size=(whole.users.size, 3)).astype(np.float32)
    Y = rng.normal(size=(whole.items.size, 3)).astype(np.float32)
    f = Factors(X, Y, rng.normal(size=whole.users.size), rng.normal(size=whole.items.size), 3.0)
    scorer = Scorer("explicit", f, 3.2, (1.0, 5.0))
    recs = np.argsort(-(X @ Y.T), axis=1, kind="stable")[:, :k].astype(np.int64)
    recs[::4, -2:] = -1  # short lists
    for threshold in (None, 4.0):
        rel = evaluate.relevant_items(whole.heldout, threshold)
        want = {
            **evaluate.error_metrics(scorer, whole.heldout),
            **ranking_metrics(recs[rel.users], rel.indptr, rel.items, whole.items.size, k),
        }
        remote = evaluate.InTasks(part.heldout, part.users, part.items, threshold, k)
        got = remote(scorer, recs)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9), key
        assert np.array_equal(remote.evaluated_users(), rel.users)
    # the evaluated users' lists scored with their training items excluded, as RankingEvaluator does
    seen = seen_lists(ready.as_df(whole.train)).cache()
    rel = evaluate.relevant_items(whole.heldout, None)
    lists = evaluate.InTasks(part.heldout, part.users, part.items, None, k).lists(seen, scorer)
    want = evaluate.RankingEvaluator(seen, rel, whole.items.size, k).lists(scorer)
    assert np.array_equal(lists[rel.users], want) and np.all(np.delete(lists, rel.users, axis=0) == -1)
    seen.unpersist()
    # the compare job's table: every method scored on every held-out row either way
    from mf_spark.core.config import from_dict
    from mf_spark.run import compare

    run = from_dict({"model": {"rank": 3, "iterations": 2}, "eval": {"k": k}})
    chosen = [m for m in compare.methods("explicit") if m.name in ("popularity", "als_biases")]
    tables = [compare.compare(r, run, chosen).drop_columns(["fit_seconds"]).to_pylist() for r in (whole, part)]
    for a, b in zip(*tables):
        assert a["method"] == b["method"] and a["ndcg_at_k"] is not None
        for key, value in a.items():
            assert b[key] == (value if value is None or key == "method" else pytest.approx(value, rel=1e-9)), key
    for r in (whole, part):
        r.release()
