"""Ranking metrics against hand-computed values and a per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mf_spark.kernels.metrics import ranking_metrics


def reference(recs, relevant, k):
    out = {"p": [], "r": [], "n": [], "m": []}
    for lst, rel in zip(recs, relevant):
        if not rel:
            continue
        lst = [x for x in lst[:k] if x >= 0]
        hit = [x in rel for x in lst]
        dcg = sum(1 / math.log2(j + 2) for j, h in enumerate(hit) if h)
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
        ap, found = 0.0, 0
        for j, h in enumerate(hit):
            if h:
                found += 1
                ap += found / (j + 1)
        out["p"].append(sum(hit) / k)
        out["r"].append(sum(hit) / len(rel))
        out["n"].append(dcg / idcg)
        out["m"].append(ap / min(k, len(rel)))
    return {key: float(np.mean(v)) for key, v in out.items()}


def csr(relevant):
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in relevant])]).astype(np.int64)
    items = np.array([x for r in relevant for x in sorted(r)], dtype=np.int64)
    return indptr, items


def test_hand_example():
    recs = np.array([[3, 1, 2], [0, 4, -1]])
    relevant = [{1}, {0, 4, 2}]
    got = ranking_metrics(recs, *csr(relevant), n_items=5, k=3)
    # user 0: hit at rank 2. user 1: hits at ranks 1, 2 of 3 relevant.
    assert got["precision_at_k"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert got["recall_at_k"] == pytest.approx((1 + 2 / 3) / 2)
    ndcg1 = (1 / math.log2(3)) / 1.0
    ndcg2 = (1 + 1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert got["ndcg_at_k"] == pytest.approx((ndcg1 + ndcg2) / 2)
    assert got["map_at_k"] == pytest.approx((0.5 + (1 + 1) / 3) / 2)
    assert got["coverage"] == pytest.approx(5 / 5)
    assert got["n_users_evaluated"] == 2


def test_matches_reference_on_random_lists(rng):
    n_items, k = 30, 5
    recs = np.stack([rng.permutation(n_items)[:8] for _ in range(40)])
    recs[::7, 6:] = -1
    relevant = [set(rng.choice(n_items, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(40)]
    got = ranking_metrics(recs, *csr(relevant), n_items=n_items, k=k)
    want = reference(recs.tolist(), relevant, k)
    assert got["precision_at_k"] == pytest.approx(want["p"])
    assert got["recall_at_k"] == pytest.approx(want["r"])
    assert got["ndcg_at_k"] == pytest.approx(want["n"])
    assert got["map_at_k"] == pytest.approx(want["m"])


def test_relevant_items_in_any_order_within_a_user(rng):
    n_items, k = 30, 5
    recs = np.stack([rng.permutation(n_items)[:k] for _ in range(25)])
    relevant = [set(rng.choice(n_items, size=rng.integers(0, 8), replace=False).tolist()) for _ in range(25)]
    indptr, items = csr(relevant)
    shuffled = np.concatenate([rng.permutation(items[a:b]) for a, b in zip(indptr[:-1], indptr[1:])])
    assert ranking_metrics(recs, indptr, shuffled, n_items, k) == ranking_metrics(recs, indptr, items, n_items, k)


def test_no_relevant_items_gives_none():
    got = ranking_metrics(np.array([[0, 1]]), np.array([0, 0]), np.array([], dtype=np.int64), 3, 2)
    assert got["ndcg_at_k"] is None and got["n_users_evaluated"] == 0


def test_perfect_lists_score_one():
    recs = np.array([[2, 0, 1]])
    got = ranking_metrics(recs, *csr([{0, 1, 2}]), n_items=3, k=3)
    assert got["ndcg_at_k"] == pytest.approx(1.0) and got["map_at_k"] == pytest.approx(1.0)
