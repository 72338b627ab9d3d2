"""CSR rating blocks: the docstring's worked example, invariants, and placement."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frame

from mf_spark.als import blocks as blocks_mod
from mf_spark.als.blocks import CsrBlock, buckets, build_blocks, row_counts


@pytest.fixture(scope="module")
def ratings(spark):
    rows = [(0, 1, 4.0), (0, 3, 2.0), (1, 0, 5.0), (2, 0, 3.0), (2, 2, 1.0)]
    return frame(spark, rows, "user_idx int, item_idx int, rating double")


def test_worked_example(ratings):
    blocks = build_blocks(ratings, "user", 2)
    got = {b.block: b for b in blocks.collect()}
    assert blocks.getNumPartitions() == 2
    assert blocks.glom().map(lambda part: [b.block for b in part]).collect() == [[0], [1]]
    b0, b1 = got[0], got[1]
    assert b0.row_ids.tolist() == [0, 2] and b0.indptr.tolist() == [0, 2, 4]
    assert b0.cols.tolist() == [1, 3, 0, 2] and b0.values.tolist() == [4, 2, 3, 1]
    assert b1.row_ids.tolist() == [1] and b1.cols.tolist() == [0] and b1.values.tolist() == [5]
    assert b0.row_ids.dtype == np.int32 and b0.indptr.dtype == np.int64 and b0.values.dtype == np.float32
    assert row_counts(blocks, 3).tolist() == [[2, 1, 2], [2, 1, 2]]  # entries, entries > 0
    blocks.unpersist()


def test_item_side_swaps_roles(ratings):
    blocks = build_blocks(ratings, "item", 3)
    by_item = {}
    for b in blocks.collect():
        for r, row in enumerate(b.row_ids):
            by_item[int(row)] = b.cols[b.indptr[r] : b.indptr[r + 1]].tolist()
            assert row % 3 == b.block
    assert by_item == {0: [1, 2], 1: [0], 2: [2], 3: [0]}
    with pytest.raises(ValueError, match="outside"):
        row_counts(blocks, 2)
    blocks.unpersist()


def test_block_invariants_are_checked():
    with pytest.raises(ValueError, match="bad block"):
        CsrBlock(
            0, np.array([0], np.int32), np.array([0, 2, 3], np.int64), np.zeros(3, np.int32), np.zeros(3, np.float32)
        )
    with pytest.raises(ValueError, match="bad block"):
        CsrBlock(0, np.array([0], np.int32), np.array([0, 2], np.int64), np.zeros(3, np.int32), np.zeros(3, np.float32))
    blk = CsrBlock.from_triples(4, np.array([5, 1, 5]), np.array([2, 7, 0]), np.array([1.0, 2.0, 3.0]))
    assert blk.row_ids.tolist() == [1, 5] and blk.cols.tolist() == [7, 0, 2] and blk.values.tolist() == [2, 3, 1]


def test_from_triples_sorts_rows_then_columns_and_keeps_values_with_their_pairs():
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 50, 500).astype(np.int32)
    cols = rng.permutation(100_000)[:500].astype(np.int32)  # distinct pairs, large column indices
    vals = rng.standard_normal(500).astype(np.float32)
    b = CsrBlock.from_triples(7, rows, cols, vals)
    order = np.lexsort((cols, rows))
    assert b.block == 7 and b.row_ids.dtype == np.int32 and b.cols.dtype == np.int32
    np.testing.assert_array_equal(b.row_ids, np.unique(rows))
    np.testing.assert_array_equal(b.counts[0], np.bincount(rows)[np.unique(rows)])
    np.testing.assert_array_equal(b.counts[1], np.bincount(rows[vals > 0], minlength=50)[np.unique(rows)])
    np.testing.assert_array_equal(b.cols, cols[order])
    np.testing.assert_array_equal(b.values, vals[order])


@pytest.mark.parametrize("top", [1000, 2**31 - 1])  # packed sort; indices too wide to pack
def test_from_triples_with_either_sort_orders_pairs_and_keeps_equal_pairs_in_input_order(top):
    rng = np.random.default_rng(5)
    rows = rng.choice(np.array([0, 3, top - 1, top]), 400).astype(np.int64).clip(max=2**31 - 1).astype(np.int32)
    cols = rng.choice(np.array([2, 9, top]), 400).astype(np.int32)  # many equal pairs
    vals = np.arange(400, dtype=np.float32)  # the input position
    b = CsrBlock.from_triples(0, rows, cols, vals)
    order = np.lexsort((np.arange(400), cols, rows))
    np.testing.assert_array_equal(b.row_ids, np.unique(rows))
    np.testing.assert_array_equal(b.cols, cols[order])
    np.testing.assert_array_equal(b.values, vals[order])
    np.testing.assert_array_equal(
        b.indptr, np.append(0, np.cumsum(np.bincount(np.unique(rows, return_inverse=True)[1])))
    )


@pytest.mark.parametrize("n", [1, 3, blocks_mod.MASK_BUCKETS + 1, 40])  # masks, and the sort
def test_buckets_give_each_keys_positions_in_input_order(n):
    keys = np.random.default_rng(n).integers(0, n, 1000)
    got = buckets(keys, n)
    assert len(got) == n
    for b, sel in enumerate(got):
        np.testing.assert_array_equal(sel, np.flatnonzero(keys == b))


def test_from_triples_of_nothing_is_an_empty_block():
    b = CsrBlock.from_triples(0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert b.row_ids.size == 0 and b.indptr.tolist() == [0] and b.cols.size == 0
