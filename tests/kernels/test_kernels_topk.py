"""top_n against a brute-force reference: full score matrix, seen items at -inf, stable sort (no Spark).
Every test runs with both ways of picking the best n (compiled, numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from mf_spark.kernels import compiled, topk
from mf_spark.kernels.topk import positions, top_n


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def selection(request, monkeypatch):
    """backend="auto" (every call below) takes the compiled selection where numba is installed; the
    numpy run hides it."""
    if request.param == "numpy":
        monkeypatch.setattr(compiled, "AVAILABLE", False)
    return request.param


def reference(X, Y, n, seen=None, user_offset=None, item_offset=None):
    """Per user: every unseen item, sorted by (-score, item), the first n. Lists of (items, scores)."""
    S = X.astype(np.float64) @ Y.T.astype(np.float64)
    if item_offset is not None:
        S = S + item_offset[None, :]
    if user_offset is not None:
        S = S + user_offset[:, None]
    out = []
    for u in range(X.shape[0]):
        s = S[u].copy()
        if seen is not None:
            s[list(seen[u])] = -np.inf
        order = np.lexsort((np.arange(s.size), -s))  # last key first: -score, then item
        order = order[np.isfinite(s[order])][:n]
        out.append((order, s[order]))
    return out


def to_csr(seen):
    lens = [len(s) for s in seen]
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    cols = np.concatenate([np.asarray(sorted(s), dtype=np.int32) for s in seen]) if sum(lens) else np.zeros(0, np.int32)
    return indptr, cols


def split(counts, items, scores):
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [(items[a:b], scores[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def check(got, want, rtol=1e-5, atol=1e-5):
    counts, items, scores = got
    assert counts.dtype == np.int32 and items.dtype == np.int32 and scores.dtype == np.float32
    assert counts.tolist() == [len(w[0]) for w in want]
    assert items.size == scores.size == counts.sum()
    for u, ((gi, gs), (wi, ws)) in enumerate(zip(split(counts, items, scores), want)):
        np.testing.assert_array_equal(gi, wi, err_msg=f"user {u}")
        np.testing.assert_allclose(gs, ws, rtol=rtol, atol=atol, err_msg=f"user {u}")


def random_factors(rng, b=12, n_items=30, k=4):
    return (rng.normal(size=(b, k)).astype(np.float32), rng.normal(size=(n_items, k)).astype(np.float32))


def random_seen(rng, b, n_items, max_seen=10):
    return [set(rng.choice(n_items, size=int(rng.integers(0, max_seen)), replace=False).tolist()) for _ in range(b)]


@pytest.mark.parametrize("n", [1, 5, 29, 30])
def test_no_seen_matches_reference(rng, n):
    X, Y = random_factors(rng)
    check(top_n(X, Y, n), reference(X, Y, n))


@pytest.mark.parametrize("n", [1, 5, 30])
def test_seen_items_are_excluded(rng, n):
    X, Y = random_factors(rng)
    seen = random_seen(rng, X.shape[0], Y.shape[0])
    indptr, cols = to_csr(seen)
    counts, items, scores = got = top_n(X, Y, n, indptr, cols)
    check(got, reference(X, Y, n, seen))
    for u, (gi, _) in enumerate(split(counts, items, scores)):
        assert not set(gi.tolist()) & seen[u]


def test_offsets_shift_scores_and_item_offsets_change_ranks(rng):
    X, Y = random_factors(rng)
    seen = random_seen(rng, X.shape[0], Y.shape[0])
    indptr, cols = to_csr(seen)
    uo = rng.normal(size=X.shape[0]).astype(np.float32) + 3.0
    io = (2.0 * rng.normal(size=Y.shape[0])).astype(np.float32)
    got = top_n(X, Y, 7, indptr, cols, user_offset=uo, item_offset=io)
    check(got, reference(X, Y, 7, seen, user_offset=uo, item_offset=io))
    # item offsets are large enough to reorder the items compared with the plain dot product
    assert not np.array_equal(got[1], top_n(X, Y, 7, indptr, cols)[1])


def test_n_larger_than_unseen_items_gives_fewer_results(rng):
    X, Y = random_factors(rng, b=3, n_items=8)
    seen = [{0, 1, 2, 3, 4}, set(), {7}]
    indptr, cols = to_csr(seen)
    got = top_n(X, Y, 6, indptr, cols)
    assert got[0].tolist() == [3, 6, 6]
    check(got, reference(X, Y, 6, seen))
    # n beyond the number of items at all
    got = top_n(X, Y, 100, indptr, cols)
    assert got[0].tolist() == [3, 8, 7]
    check(got, reference(X, Y, 100, seen))


def test_user_who_has_seen_every_item_gets_nothing(rng):
    X, Y = random_factors(rng, b=3, n_items=6)
    seen = [set(), set(range(6)), {2}]
    indptr, cols = to_csr(seen)
    for n in (2, 6, 10):
        got = top_n(X, Y, n, indptr, cols)
        assert got[0][1] == 0
        check(got, reference(X, Y, n, seen))


def test_everyone_has_seen_everything(rng):
    X, Y = random_factors(rng, b=2, n_items=3)
    indptr, cols = to_csr([{0, 1, 2}, {0, 1, 2}])
    counts, items, scores = top_n(X, Y, 2, indptr, cols)
    assert counts.tolist() == [0, 0] and items.size == 0 and scores.size == 0


def test_no_users():
    Y = np.ones((5, 3), np.float32)
    counts, items, scores = top_n(np.zeros((0, 3), np.float32), Y, 2)
    assert counts.shape == (0,) and items.shape == (0,) and scores.shape == (0,)


@pytest.mark.parametrize("score_floats", [1, 30, 95, 240])
def test_chunking_gives_the_same_result(rng, monkeypatch, score_floats):
    # 30 items: SCORE_FLOATS 1 and 30 -> one user per chunk; 95 -> 3 users; 240 -> 8 users (ragged end)
    X, Y = random_factors(rng, b=13, n_items=30)
    seen = random_seen(rng, 13, 30, max_seen=25)
    seen[4] = set(range(30))
    indptr, cols = to_csr(seen)
    uo = rng.normal(size=13).astype(np.float32)
    io = rng.normal(size=30).astype(np.float32)
    want = reference(X, Y, 6, seen, uo, io)
    whole = top_n(X, Y, 6, indptr, cols, uo, io)
    monkeypatch.setattr(topk, "SCORE_FLOATS", score_floats)
    chunked = top_n(X, Y, 6, indptr, cols, uo, io)
    check(chunked, want)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-6, atol=1e-6)  # BLAS rounding per chunk


def test_chunking_with_seen_pointer_not_starting_at_zero(rng, monkeypatch):
    # a CSR slice of a larger block: indptr[0] > 0, the columns before it belong to other users
    X, Y = random_factors(rng, b=5, n_items=10)
    seen = random_seen(rng, 5, 10, max_seen=6)
    indptr, cols = to_csr(seen)
    cols = np.concatenate([np.array([0, 1, 2], np.int32), cols])
    monkeypatch.setattr(topk, "SCORE_FLOATS", 20)  # 2 users per chunk
    check(top_n(X, Y, 4, indptr + 3, cols), reference(X, Y, 4, seen))


def test_ties_are_broken_by_lower_item_index_without_partition():
    X = np.ones((2, 2), np.float32)
    Y = np.ones((6, 2), np.float32)
    Y[[1, 4]] = 2.0  # items 1, 4 score 4; the rest tie at 2
    counts, items, _ = top_n(X, Y, 6)  # n == n_items: no argpartition
    assert counts.tolist() == [6, 6]
    assert items.tolist() == [1, 4, 0, 2, 3, 5] * 2


def test_ties_at_the_cut_off_keep_lower_item_indices():
    X = np.ones((1, 2), np.float32)
    Y = np.ones((50, 2), np.float32)
    Y[::7] = 2.0  # items 0, 7, ..., 49 score 4; the other 42 tie at 2
    counts, items, _ = top_n(X, Y, 10)
    assert items.tolist() == [0, 7, 14, 21, 28, 35, 42, 49, 1, 2]


def test_rank_mismatch_raises():
    with pytest.raises(ValueError, match="rank mismatch"):
        top_n(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), 1)


def test_unknown_engine_raises():
    with pytest.raises(ValueError, match="backend"):
        top_n(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 1, backend="gpu")


def test_seen_indptr_wrong_shape_raises():
    X, Y = np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="seen_indptr"):
        top_n(X, Y, 1, np.zeros(3, np.int64), np.zeros(0, np.int32))


def test_fast_cut_matches_the_exact_rule_on_rows_with_and_without_ties(rng):
    from mf_spark.kernels.topk import _best, _best_exact

    S = rng.normal(size=(200, 60)).astype(np.float32)
    S[::3] = np.round(S[::3])  # every third row: many ties, also at the cut-off
    S[5, :] = -np.inf  # a user who has seen everything
    S[7, 10:] = -np.inf  # fewer unseen items than n
    for n in (1, 5, 10, 59):
        np.testing.assert_array_equal(np.sort(_best(S, n), axis=1), np.sort(_best_exact(S, n), axis=1))


def test_compiled_selection_keeps_the_n_best_in_order_with_ties_to_lower_indices(rng):
    S = rng.normal(size=(200, 60)).astype(np.float32)
    S[::3] = np.round(S[::3])  # many ties, also at the cut-off
    S[5, :] = -np.inf  # nothing left to recommend
    S[7, 10:] = -np.inf  # fewer finite scores than n
    for n in (1, 5, 10, 59, 60, 70):
        idx, top = compiled.best_rows(S, n)
        for r in range(S.shape[0]):
            order = np.lexsort((np.arange(S.shape[1]), -S[r]))[:n]
            finite = order[np.isfinite(S[r, order])]
            np.testing.assert_array_equal(idx[r, : finite.size], finite, err_msg=f"row {r}, n {n}")
            np.testing.assert_array_equal(top[r, : finite.size], S[r, finite])
            assert np.all(top[r, finite.size :] == -np.inf) and np.all(idx[r, finite.size :] >= S.shape[1])


def test_positions_number_each_list_from_zero():
    assert positions(np.array([2, 0, 3, 1])).tolist() == [0, 1, 0, 1, 2, 0]
    assert positions(np.zeros(3, np.int32)).size == 0
    counts = np.random.default_rng(3).integers(0, 5, 50)
    want = np.concatenate([np.arange(c) for c in counts])
    np.testing.assert_array_equal(positions(counts), want)
