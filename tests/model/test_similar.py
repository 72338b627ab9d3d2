"""Similar items and users against a dense brute-force cosine; the jobs.similar job end to end."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from conftest import frame
from pyspark.sql.types import FloatType, IntegerType, LongType, StringType, StructField, StructType

from jobs import similar as similar_job
from mf_spark.core.errors import InputError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model import similar
from mf_spark.model.factors import FactorModel
from mf_spark.model.similar import normalize_rows, similar_items, similar_users

ROOT = Path(__file__).resolve().parents[2]
USERS_STR = ["ann", "bea", "cy", "dan", "eve", "fay", "gus", "hal", "ivy"]  # sorted: index = position
ITEMS_LONG = [3, 10, 11, 250, 1000, 4096, 70000, 123456, 2**31, 2**33, 2**40, 2**41, 2**50]
ITEMS_STR = ["i01", "i02", "i1", "i10", "i2", "j", "k", "l", "m", "n", "o", "p", "q"]
PRECISION = 1e-5  # float32 factors: cosines agree with the float64 reference to ~1e-7


def model_of(
    item_ids: list,
    user_ids: list = USERS_STR,
    rank: int = 4,
    seed: int = 0,
    zero_items: tuple[int, ...] = (),
    zero_users: tuple[int, ...] = (),
) -> FactorModel:
    """A random explicit model with biases (which similarity must ignore); chosen rows set to zero."""
    g = np.random.default_rng(seed)
    X = g.normal(size=(len(user_ids), rank)).astype(np.float32)
    Y = g.normal(size=(len(item_ids), rank)).astype(np.float32)
    X[list(zero_users)] = 0.0
    Y[list(zero_items)] = 0.0
    bu = g.normal(size=len(user_ids)).astype(np.float32)
    bi = (10 * g.normal(size=len(item_ids))).astype(np.float32)
    kind = lambda ids: pa.string() if isinstance(ids[0], str) else pa.int64()
    return FactorModel(
        "explicit",
        Factors(X, Y, bu, bi, 3.0),
        IdMap(pa.array(user_ids, kind(user_ids)), "user"),
        IdMap(pa.array(item_ids, kind(item_ids)), "item"),
        3.0,
        (1.0, 5.0),
    )


def brute_force(factors: np.ndarray, ids: list, n: int, wanted: list | None = None) -> list[tuple]:
    """(id, rank, similar id, score) rows from the full float64 cosine matrix: the row itself and
    all-zero rows at -inf, then a stable sort by (-score, index)."""
    F64 = factors.astype(np.float64)
    norms = np.linalg.norm(F64, axis=1)
    ok = norms > 0
    C = (F64 @ F64.T) / np.where(ok, norms, 1.0)[:, None] / np.where(ok, norms, 1.0)[None, :]
    rows = []
    for q in range(len(ids)) if wanted is None else [ids.index(w) for w in wanted if w in ids]:
        if not ok[q]:
            continue
        s = np.where(ok, C[q], -np.inf)
        s[q] = -np.inf
        order = [j for j in np.lexsort((np.arange(s.size), -s)) if np.isfinite(s[j])][:n]
        rows += [(ids[q], r + 1, ids[j], float(s[j])) for r, j in enumerate(order)]
    return rows


def schema(name: str, id_type) -> StructType:
    return StructType(
        [
            StructField(name, id_type),
            StructField("rank", IntegerType()),
            StructField(f"similar_{name}", id_type),
            StructField("score", FloatType()),
        ]
    )


def assert_lists(spark, got, want_rows: list[tuple], name: str, id_type) -> list:
    """`got` equals the reference rows (IDs and ranks exactly, scores to PRECISION, same schema);
    returns its rows, collected once (the comparison then runs on local data)."""
    rows = got.collect()
    want = spark.createDataFrame(want_rows, schema(name, id_type))
    assert_approx_df_equality(
        spark.createDataFrame(rows, got.schema), want, PRECISION, ignore_nullable=True, ignore_row_order=True
    )
    return rows


@pytest.fixture
def mf_log():
    """Records of the "mf_spark" logger (the jobs stop it propagating to the root, so caplog misses it)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mf_spark")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# ---- normalization (no Spark) ---------------------------------------------------------------------


def test_normalize_rows_gives_dense_cosines_and_flags_zero_rows(rng, monkeypatch):
    monkeypatch.setattr(similar, "NORMALIZE_ROWS", 3)  # several chunks, the last one short
    F = rng.normal(size=(10, 5)).astype(np.float32)
    F[4] = 0.0
    F[7] *= np.float32(1e-30)  # squares underflow in float32: still a direction, not a zero row
    Fn, nonzero = normalize_rows(F)
    assert Fn.dtype == np.float32 and Fn.shape == F.shape
    np.testing.assert_array_equal(nonzero, np.arange(10) != 4)
    np.testing.assert_array_equal(Fn[4], 0.0)
    F64 = np.delete(F.astype(np.float64), 4, axis=0)
    unit = F64 / np.linalg.norm(F64, axis=1, keepdims=True)
    ok = np.delete(Fn, 4, axis=0).astype(np.float64)
    np.testing.assert_allclose(ok @ ok.T, unit @ unit.T, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="matrix"):
        normalize_rows(F[0])


# ---- the API --------------------------------------------------------------------------------------


def test_similar_items_match_brute_force_cosine(spark):
    """Every item, long IDs (string item IDs: the subset test)."""
    m = model_of(ITEMS_LONG)
    rows = assert_lists(spark, similar_items(m, n=4), brute_force(m.factors.Y, ITEMS_LONG, 4), "item", LongType())
    assert all(r["item"] != r["similar_item"] for r in rows)
    assert all(-1.0 <= r["score"] <= 1.0 for r in rows)


def test_n_larger_than_the_catalog_lists_every_other_item(spark):
    m = model_of(ITEMS_LONG[:5], seed=2)
    rows = assert_lists(spark, similar_items(m, n=50), brute_force(m.factors.Y, ITEMS_LONG[:5], 50), "item", LongType())
    assert len(rows) == 5 * 4


def test_a_subset_of_items_skips_and_logs_unknown_ids(spark, mf_log):
    m = model_of(ITEMS_STR, seed=3)
    wanted = frame(spark, [("i1",), ("nope",), ("q",), ("i1",), (None,)], "movie string")
    got = similar_items(m, n=3, items=wanted, item_col="movie")
    assert_lists(spark, got, brute_force(m.factors.Y, ITEMS_STR, 3, ["i1", "q"]), "item", StringType())
    assert any("1 requested items are not in the model" in r.getMessage() for r in mf_log)


def test_zero_vectors_get_no_list_and_are_in_no_list(spark, mf_log):
    m = model_of(ITEMS_LONG, seed=4, zero_items=(0, 6, 12))
    got = similar_items(m, n=20, items=frame(spark, [(3,), (70000,), (11,)], "item long"))
    want = brute_force(m.factors.Y, ITEMS_LONG, 20, [3, 70000, 11])
    assert {r[0] for r in want} == {11}
    assert len(assert_lists(spark, got, want, "item", LongType())) == len(ITEMS_LONG) - 3 - 1
    assert any("3 items have all-zero factors" in r.getMessage() for r in mf_log)


def test_ties_go_to_the_lower_index_and_scores_stay_within_one(spark):
    Y = np.array([[1, 2, 0], [2, 4, 0], [1, 2, 0], [0, 0, 1], [4, 8, 0]], np.float32)  # 0, 1, 2, 4: one direction
    users = IdMap(pa.array(USERS_STR[:2]), "user")
    m = FactorModel(
        "implicit",
        Factors(np.ones((2, 3), np.float32), Y, None, None, 0.0),
        users,
        IdMap(pa.array(ITEMS_LONG[:5], pa.int64()), "item"),
        0.0,
        None,
    )
    got = similar_items(m, n=3, items=frame(spark, [(3,), (1000,)], "item long"))
    want = spark.createDataFrame(
        [
            (3, 1, 10, 1.0),
            (3, 2, 11, 1.0),
            (3, 3, 1000, 1.0),
            (1000, 1, 3, 1.0),
            (1000, 2, 10, 1.0),
            (1000, 3, 11, 1.0),
        ],
        schema("item", LongType()),
    )
    local = spark.createDataFrame(got.collect(), got.schema)
    assert_df_equality(local.drop("score"), want.drop("score"), ignore_nullable=True, ignore_row_order=True)
    assert_approx_df_equality(local, want, PRECISION, ignore_nullable=True, ignore_row_order=True)
    assert all(r["score"] <= 1.0 for r in local.collect())


def test_similar_users_match_brute_force_cosine(spark):
    m = model_of(ITEMS_STR, USERS_STR, seed=5, zero_users=(2,))  # "cy": no list, in no list
    some = frame(spark, [("bea",), ("cy",), ("zed",), ("ivy",)], "user string")
    want = brute_force(m.factors.X, USERS_STR, 3, ["bea", "ivy"])
    rows = assert_lists(spark, similar_users(m, n=3, users=some), want, "user", StringType())
    assert {r["user"] for r in rows} == {"bea", "ivy"} and "cy" not in {r["similar_user"] for r in rows}


def test_bad_arguments(spark):
    m = model_of(ITEMS_LONG[:4])
    with pytest.raises(ValueError, match="n must be"):
        similar_items(m, n=0)
    with pytest.raises(InputError, match="'item' is missing"):
        similar_items(m, items=frame(spark, [(3,)], "movie long"))


# ---- the job --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(spark, tmp_path_factory):
    """A model with long item IDs and string user IDs, saved as a training run would."""
    m = model_of(ITEMS_LONG, USERS_STR, seed=6)
    path = tmp_path_factory.mktemp("similar") / "model"
    m.save(str(path), spark)
    return m, path


def test_job_writes_every_items_list_atomically(spark, saved, tmp_path, capsys):
    m, path = saved
    out = tmp_path / "out"
    assert similar_job.main(["--model", str(path), "--output", str(out), "--n", "3"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["_SUCCESS", "similar_items"]
    got = spark.read.parquet(str(out / "similar_items"))
    assert_lists(spark, got, brute_force(m.factors.Y, ITEMS_LONG, 3), "item", LongType())
    assert "similar_items: " in capsys.readouterr().out


def test_job_items_file_and_users(spark, saved, tmp_path, capsys):
    m, path = saved
    items = tmp_path / "items.txt"
    items.write_text("item_id\n250\n99\n2199023255552\n")  # a header line, an unknown ID, 2**41
    out = tmp_path / "items_out"
    assert (
        similar_job.main(
            ["--model", str(path), "--output", str(out), "--items", str(items), "--item-col", "item_id", "--n", "2"]
        )
        == 0
    ), capsys.readouterr().err
    assert_lists(
        spark,
        spark.read.parquet(str(out / "similar_items")),
        brute_force(m.factors.Y, ITEMS_LONG, 2, [250, 2**41]),
        "item",
        LongType(),
    )
    users = tmp_path / "users.csv"
    users.write_text("who,age\nivy,3\nann,4\n")
    out = tmp_path / "users_out"
    assert (
        similar_job.main(
            [
                "--model",
                str(path),
                "--output",
                str(out),
                "--users",
                str(users),
                "--user-col",
                "who",
                "--n",
                "2",
                "--set",
                "spark.spark.sql.session.timeZone=UTC",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert_lists(
        spark,
        spark.read.parquet(str(out / "similar_users")),
        brute_force(m.factors.X, USERS_STR, 2, ["ivy", "ann"]),
        "user",
        StringType(),
    )
    assert similar_job.main(["--model", str(path), "--output", str(out), "--users"]) == 0, capsys.readouterr().err
    assert_lists(
        spark,
        spark.read.parquet(str(out / "similar_users")),
        brute_force(m.factors.X, USERS_STR, 10),
        "user",
        StringType(),
    )


def test_job_bad_arguments_exit_2(saved, tmp_path, capsys):
    _, path = saved
    out = str(tmp_path / "o")
    bad_ids = tmp_path / "ids.txt"
    bad_ids.write_text("abc\n")
    for argv, says in (
        [["--model", str(path), "--output", out, "--n", "0"], "--n 0"],
        [["--model", str(path), "--output", out, "--items", "f", "--users"], "not allowed"],
        [["--output", out], "--model"],
        [["--model", str(tmp_path / "none"), "--output", out], "model.json"],
        [["--model", str(path), "--output", out, "--items", str(tmp_path / "no.txt")], "--items"],
        [["--model", str(path), "--output", out, "--items", str(bad_ids)], "IDs are integers"],
    ):
        assert similar_job.main(argv) == 2, argv
        assert says in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_job_as_a_module_exits_2_with_one_line_for_a_missing_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.similar", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1 and "model.json does not exist" in errors[0], proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
