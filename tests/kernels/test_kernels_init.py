"""init_factors: rows are a pure function of (seed, side, global index) (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from mf_spark.kernels.init import init_factors


@pytest.mark.parametrize("side", ["user", "item"])
def test_shape_dtype_and_unit_norm(side):
    F = init_factors(7, side, np.arange(500), 8)
    assert F.shape == (500, 8) and F.dtype == np.float32
    assert np.all(np.isfinite(F))
    np.testing.assert_allclose(np.linalg.norm(F.astype(np.float64), axis=1), 1.0, rtol=1e-5)


def test_same_arguments_same_rows():
    a = init_factors(3, "user", np.arange(100), 5)
    b = init_factors(3, "user", np.arange(100), 5)
    np.testing.assert_array_equal(a, b)


def test_rows_depend_only_on_index_not_on_the_batch(rng):
    full = init_factors(11, "item", np.arange(1000), 6)
    subset = np.sort(rng.choice(1000, size=73, replace=False))
    np.testing.assert_array_equal(init_factors(11, "item", subset, 6), full[subset])
    # order, repeats, a single row and other integer dtypes give the same rows
    shuffled = rng.permutation(subset)
    np.testing.assert_array_equal(init_factors(11, "item", shuffled, 6), full[shuffled])
    np.testing.assert_array_equal(init_factors(11, "item", [5, 5, 999], 6), full[[5, 5, 999]])
    np.testing.assert_array_equal(init_factors(11, "item", np.array([42], np.int32), 6), full[[42]])
    # blocks by index % num_blocks, as the blocked fit uses them, reassemble to the same matrix
    for num_blocks in (2, 3, 7):
        rebuilt = np.empty_like(full)
        for b in range(num_blocks):
            idx = np.arange(b, 1000, num_blocks)
            rebuilt[idx] = init_factors(11, "item", idx, 6)
        np.testing.assert_array_equal(rebuilt, full)


def test_large_indices_are_fine():
    idx = np.array([0, 2**31 - 2, 2**31 - 1], dtype=np.int64)
    F = init_factors(1, "user", idx, 4)
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(F[1], F[2])


def test_different_seeds_differ():
    idx = np.arange(200)
    a, b = init_factors(0, "user", idx, 4), init_factors(1, "user", idx, 4)
    assert not np.any(np.all(np.isclose(a, b), axis=1))


def test_negative_and_huge_seeds_are_accepted_and_distinct():
    idx = np.arange(50)
    rows = [init_factors(s, "user", idx, 4) for s in (-1, 2**63 + 5, 5)]
    for r in rows:
        np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(rows[0], rows[1]) and not np.allclose(rows[1], rows[2])


def test_user_and_item_sides_differ():
    idx = np.arange(200)
    u, i = init_factors(5, "user", idx, 4), init_factors(5, "item", idx, 4)
    assert not np.any(np.all(np.isclose(u, i), axis=1))


def test_rows_within_a_matrix_differ():
    F = init_factors(5, "user", np.arange(300), 3).astype(np.float64)
    G = F @ F.T
    np.fill_diagonal(G, 0.0)
    assert np.max(np.abs(G)) < 1.0 - 1e-6  # no two rows identical (or opposite)


def test_looks_like_normalized_gaussian_draws():
    # the direction of a standard normal vector is uniform on the sphere: each coordinate has mean 0,
    # variance 1/k, both signs equally often; bands wide enough for 20000 draws
    k = 4
    F = init_factors(9, "user", np.arange(20000), k).astype(np.float64)
    assert np.all(np.abs(F.mean(axis=0)) < 0.03)
    np.testing.assert_allclose(F.var(axis=0), 1.0 / k, rtol=0.05)
    assert 0.45 < np.mean(F > 0) < 0.55


def test_nonnegative_option():
    idx = np.arange(300)
    F = init_factors(2, "item", idx, 5, nonnegative=True)
    assert F.dtype == np.float32 and np.all(F >= 0.0)
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), 1.0, rtol=1e-5)
    # the absolute values of the same draws
    np.testing.assert_allclose(F, np.abs(init_factors(2, "item", idx, 5)), rtol=1e-6)
    plain = init_factors(2, "item", idx, 5)
    assert np.any(plain < 0)


def test_empty_index():
    F = init_factors(0, "user", np.zeros(0, np.int64), 3)
    assert F.shape == (0, 3) and F.dtype == np.float32


@pytest.mark.parametrize("side", ["users", "items", "User", "", None])
def test_bad_side_raises(side):
    with pytest.raises(ValueError, match="side"):
        init_factors(0, side, np.arange(3), 2)


# MLlib's initialization, checked against the JVM's own generator and MLlib's ALS (through py4j on the
# classic test session).


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


@pytest.mark.parametrize("seed", [0, 1, 42, -7, 123456789012, 2**62 + 5, -(2**63)])
def test_the_generator_draws_what_sparks_xorshiftrandom_draws(spark, seed, monkeypatch):
    from mf_spark.kernels import compiled
    from mf_spark.kernels.init import _byteswap64, _hash_seed, _next_long

    jvm_random = spark._jvm.org.apache.spark.util.random.XORShiftRandom
    theirs = jvm_random(seed)
    state, ours = _hash_seed(seed), []
    for _ in range(3):
        state, value = _next_long(state)
        ours.append(_signed(value))
    assert ours == [theirs.nextLong() for _ in range(3)]
    theirs = jvm_random(seed)
    drawn = [theirs.nextGaussian() for _ in range(501)]  # an odd count: the polar method's kept value
    for plain_draws in (compiled.PLAIN_DRAWS, 0):  # the plain loop, then the compiled kernel
        monkeypatch.setattr(compiled, "PLAIN_DRAWS", plain_draws)
        np.testing.assert_allclose(compiled.java_gaussians(_hash_seed(seed), 501), drawn, rtol=1e-13, atol=1e-15)
    hashing = getattr(spark._jvm.scala.util.hashing, "package$").__getattr__("MODULE$")
    assert _signed(_byteswap64(seed & (2**64 - 1))) == hashing.byteswap64(seed)


def test_the_plain_python_generator_draws_what_the_compiled_one_draws(monkeypatch):
    from mf_spark.kernels import compiled
    from mf_spark.kernels.init import _hash_seed

    plain = compiled.java_gaussians(_hash_seed(5), 999)  # few draws: the plain loop
    monkeypatch.setattr(compiled, "PLAIN_DRAWS", 0)
    np.testing.assert_allclose(plain, compiled.java_gaussians(_hash_seed(5), 999), rtol=1e-13, atol=1e-15)  # fastmath


@pytest.mark.parametrize(("seed", "blocks", "rank"), [(0, 10, 10), (-9, 40, 3)])
def test_mllib_factors_are_mllibs_initial_user_factors(spark, seed, blocks, rank):
    from pyspark.ml.recommendation import ALS as MLlibALS

    from mf_spark.kernels.init import mllib_factors

    rng = np.random.default_rng(seed & 0xFFFF)
    users = np.unique(rng.integers(-300, 300, 120))  # negative IDs; with 40 blocks, some blocks empty
    rows = [(int(u), int(i), 1.0 + float(i % 5)) for u in users for i in rng.choice(30, 2, replace=False)]
    frame = spark.createDataFrame(rows, "user int, item int, rating float")
    # maxIter=0: MLlib returns the factors it starts from
    theirs = MLlibALS(rank=rank, maxIter=0, seed=seed, numUserBlocks=blocks).fit(frame)
    by_id = {r.id: r.features for r in theirs.userFactors.collect()}
    ours = mllib_factors(seed, users, rank, blocks)
    np.testing.assert_allclose(ours, np.array([by_id[u] for u in users]), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.linalg.norm(ours.astype(np.float64), axis=1), 1.0, rtol=1e-6)
