"""FactorModel, Scorer and load_model against numpy formulas; checkpoints of the factors."""

from __future__ import annotations

import json
import os
import posixpath
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa.row_comparer import are_rows_approx_equal
from chispa.rows_comparer import assert_generic_rows_equality
from pyspark.sql import Row

from mf_spark.als import checkpoint
from mf_spark.als.checkpoint import CheckpointStore, factor_table
from mf_spark.core.errors import InputError, ModelError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel, Scorer, load_model

USERS_STR = ["alice", "bob", "carol", "dave", "erin"]  # sorted: index = position
ITEMS_INT = [3, 10, 11, 250, 1000, 4096, 2**40]
USERS_INT = [-7, 0, 5, 12]
ITEMS_STR = ["i01", "i02", "i1", "i10", "i2", "x"]


def explicit_model(rank=3, seed=0) -> FactorModel:
    """String users, int64 items, biases, mu != global mean, factors large enough to hit the clip."""
    g = np.random.default_rng(seed)
    X = (1.5 * g.normal(size=(len(USERS_STR), rank))).astype(np.float32)
    Y = (1.5 * g.normal(size=(len(ITEMS_INT), rank))).astype(np.float32)
    bu = g.normal(scale=0.5, size=len(USERS_STR)).astype(np.float32)
    bi = g.normal(scale=0.5, size=len(ITEMS_INT)).astype(np.float32)
    return FactorModel(
        "explicit",
        Factors(X, Y, bu, bi, 3.5),
        IdMap(pa.array(USERS_STR, pa.string()), "user"),
        IdMap(pa.array(ITEMS_INT, pa.int64()), "item"),
        3.25,
        (1.0, 5.0),
        {"model": {"rank": rank, "biases": True}},
    )


def implicit_model(rank=2, seed=1) -> FactorModel:
    """int64 users, string items, no biases, no clipping."""
    g = np.random.default_rng(seed)
    X = g.normal(size=(len(USERS_INT), rank)).astype(np.float32)
    Y = g.normal(size=(len(ITEMS_STR), rank)).astype(np.float32)
    return FactorModel(
        "implicit",
        Factors(X, Y, None, None, 0.0),
        IdMap(pa.array(USERS_INT, pa.int64()), "user"),
        IdMap(pa.array(ITEMS_STR, pa.string()), "item"),
        0.0,
        None,
    )


MODELS = {"explicit": explicit_model, "implicit": implicit_model}


def reference_predict(m: FactorModel, u, i):
    """Row by row: known pair mu + b_u + b_i + x.y; otherwise global mean + known biases; clipped."""
    f = m.factors
    out = []
    for a, b in zip(u, i):
        bu = float(f.user_bias[a]) if f.user_bias is not None and a >= 0 else 0.0
        bi = float(f.item_bias[b]) if f.item_bias is not None and b >= 0 else 0.0
        if a >= 0 and b >= 0:
            p = f.mu + bu + bi + float(np.dot(f.X[a].astype(np.float64), f.Y[b].astype(np.float64)))
        else:
            p = m.global_mean + bu + bi
        if m.kind == "explicit" and m.rating_range is not None:
            p = min(max(p, m.rating_range[0]), m.rating_range[1])
        out.append(p)
    return np.array(out)


def reference_recs(m: FactorModel, user_ids, n, seen_pairs=()):
    """(user, rank, item, score) rows: full score matrix, seen at -inf, stable sort by (-score, item)."""
    f = m.factors
    users, items = m.users.ids.to_pylist(), m.items.ids.to_pylist()
    S = f.X.astype(np.float64) @ f.Y.T.astype(np.float64) + f.mu
    if f.user_bias is not None:
        S += f.user_bias[:, None] + f.item_bias[None, :]
    rows = []
    for uid in user_ids:
        if uid not in users:
            continue
        u = users.index(uid)
        s = S[u].copy()
        for su, si in seen_pairs:
            if su == uid and si in items:
                s[items.index(si)] = -np.inf
        order = [j for j in np.lexsort((np.arange(s.size), -s)) if np.isfinite(s[j])][:n]
        rows += [(uid, r + 1, items[j], float(s[j])) for r, j in enumerate(order)]
    return rows


# ---- construction -------------------------------------------------------------------------------


def test_factors_check_shapes():
    X, Y = np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        Factors(X, np.zeros((4, 3), np.float32), None, None, 0.0)
    with pytest.raises(ValueError, match="user biases"):
        Factors(X, Y, np.zeros(2, np.float32), np.zeros(4, np.float32), 0.0)
    with pytest.raises(ValueError, match="item biases"):
        Factors(X, Y, np.zeros(3, np.float32), np.zeros(5, np.float32), 0.0)


def test_model_checks_ids_against_factor_rows():
    m = explicit_model()
    with pytest.raises(ValueError, match="IDs"):
        FactorModel("explicit", m.factors, IdMap(pa.array(USERS_STR[:-1]), "user"), m.items, 3.0, None)
    assert m.rank == 3


# ---- predict_idx --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_predict_idx_matches_formula_incl_cold_rows(kind):
    m = MODELS[kind]()
    nu, ni = m.users.size, m.items.size
    uu, ii = np.meshgrid(np.arange(-1, nu), np.arange(-1, ni), indexing="ij")  # every pair + cold
    u, i = uu.ravel(), ii.ravel()
    got = m.predict_idx(u, i)
    assert got.dtype == np.float64 and got.shape == u.shape
    np.testing.assert_allclose(got, reference_predict(m, u, i), rtol=1e-6, atol=1e-6)
    both_cold = (u < 0) & (i < 0)
    np.testing.assert_allclose(got[both_cold], m.global_mean)
    if kind == "explicit":
        # the factors are large: some predictions are clipped at each end, so the clip is exercised
        assert np.any(got == 1.0) and np.any(got == 5.0)
        # cold rows use the global mean (3.25), not mu (3.5), plus the known side's bias
        cold_user = (u < 0) & (i >= 0)
        np.testing.assert_allclose(got[cold_user], np.clip(3.25 + m.factors.item_bias[i[cold_user]], 1, 5), rtol=1e-6)
        cold_item = (u >= 0) & (i < 0)
        np.testing.assert_allclose(got[cold_item], np.clip(3.25 + m.factors.user_bias[u[cold_item]], 1, 5), rtol=1e-6)
    else:
        assert np.any(got < 0)  # implicit scores are never clipped


def test_predict_idx_no_clip_without_range():
    m = explicit_model()
    s = Scorer("explicit", m.factors, m.global_mean, None)
    u, i = np.repeat(np.arange(5), 7), np.tile(np.arange(7), 5)
    raw = s.predict_idx(u, i)
    assert raw.min() < 1.0 and raw.max() > 5.0
    np.testing.assert_allclose(m.predict_idx(u, i), np.clip(raw, 1.0, 5.0))


def test_predict_idx_implicit_is_never_clipped():
    m = implicit_model()
    s = Scorer("implicit", m.factors, 0.0, (0.0, 0.1))
    u, i = np.repeat(np.arange(4), 6), np.tile(np.arange(6), 4)
    want = np.einsum("ij,ij->i", m.factors.X[u].astype(np.float64), m.factors.Y[i].astype(np.float64))
    np.testing.assert_allclose(s.predict_idx(u, i), want, rtol=1e-6, atol=1e-7)


def test_predict_idx_empty():
    assert explicit_model().predict_idx(np.zeros(0, np.int32), np.zeros(0, np.int32)).shape == (0,)


# ---- predict on Spark ---------------------------------------------------------------------------


def sort_key(row):
    return tuple((v is None, v if v is not None else 0) for v in row)


def assert_rows(df, want_rows, columns, dtypes=None, precision=1e-6):
    """One action: collect `df`, then chispa's approximate row comparison in a fixed order."""
    assert df.columns == columns
    if dtypes is not None:
        assert [t for _, t in df.dtypes] == dtypes
    make = Row(*columns)
    got = sorted(df.collect(), key=sort_key)
    want = sorted((make(*r) for r in want_rows), key=sort_key)
    assert len(got) == len(want)
    assert_generic_rows_equality(got, want, are_rows_approx_equal, {"precision": precision})
    return got


def test_predict_keeps_every_row_and_column_string_users(spark):
    m = explicit_model()
    rows = [
        ("alice", 3, "a"),
        ("bob", 2**40, "b"),
        ("erin", 1000, "c"),
        ("zed", 10, "unknown user"),
        ("carol", 99, "unknown item"),
        ("nobody", 7, "both unknown"),
        (None, 11, "null user"),
        ("dave", None, "null item"),
        ("alice", 3, "a duplicate row"),
    ]
    rows += [(u, i, "grid") for u in USERS_STR for i in ITEMS_INT]
    df = spark.createDataFrame(rows, "user string, item long, note string")
    u = m.users.index_of(pa.array([r[0] for r in rows], pa.string()))
    i = m.items.index_of(pa.array([r[1] for r in rows], pa.int64()))
    want = [(*r, float(p)) for r, p in zip(rows, reference_predict(m, u, i))]
    assert_rows(m.predict(df), want, ["user", "item", "note", "prediction"], ["string", "bigint", "string", "double"])


def test_predict_int_users_other_column_names(spark):
    m = implicit_model()
    rows = [(0, "i1", 1.0), (12, "x", 2.0), (-7, "i02", 3.0), (99, "i1", 4.0), (5, "zz", 5.0)]
    df = spark.createDataFrame(rows, "uid int, sku string, weight double")  # int32 column, int64 map
    u = m.users.index_of(np.array([r[0] for r in rows]))
    i = m.items.index_of(pa.array([r[1] for r in rows]))
    want = [(*r, float(p)) for r, p in zip(rows, reference_predict(m, u, i))]
    assert_rows(
        m.predict(df, user_col="uid", item_col="sku", output_col="score"),
        want,
        ["uid", "sku", "weight", "score"],
        ["int", "string", "double", "double"],
    )


def test_predict_missing_column_raises(spark):
    df = spark.createDataFrame([("alice", 3)], "u string, item long")
    with pytest.raises(InputError, match="'user'"):
        explicit_model().predict(df)


def test_predict_long_column_against_string_ids_keeps_rows(spark):
    m = FactorModel(
        "implicit",
        Factors(np.ones((2, 2), np.float32), np.ones((1, 2), np.float32), None, None, 0.0),
        IdMap(pa.array(["01", "1"]), "user"),
        IdMap(pa.array(["a"]), "item"),
        0.0,
        None,
    )
    df = spark.createDataFrame([(1, "a")], "user long, item string")
    assert m.predict(df).count() == 1


# ---- recommend ----------------------------------------------------------------------------------

RECS_COLUMNS = ["user", "rank", "item", "score"]
RECS_TYPES = {"explicit": ["string", "int", "bigint", "float"], "implicit": ["bigint", "int", "string", "float"]}


def check_recs(df, want_rows, kind, n, seen=()):
    got = assert_rows(df, want_rows, RECS_COLUMNS, RECS_TYPES[kind], precision=1e-4)
    # structural properties of what came back: nothing seen, ranks 1..m per user, scores descending
    by_user = {}
    for r in got:
        assert (r.user, r.item) not in set(seen)
        by_user.setdefault(r.user, []).append((r.rank, r.score))
    for ranked in by_user.values():
        ranks, scores = zip(*sorted(ranked))
        assert list(ranks) == list(range(1, len(ranks) + 1)) and len(ranks) <= n
        assert list(scores) == sorted(scores, reverse=True)


def test_recommend_for_listed_users_matches_brute_force(spark):
    m = explicit_model()
    asked = ["alice", "bob", "erin", "bob", "ghost"]  # a repeat and an unknown user
    users = spark.createDataFrame([(a,) for a in asked], "user string")
    want = reference_recs(m, ["alice", "bob", "erin"], 4)
    assert len(want) == 12
    check_recs(m.recommend(users, 4), want, "explicit", 4)


def test_recommend_all_users_excluding_seen(spark):
    m = explicit_model()
    pairs = [
        ("alice", 3),
        ("alice", 2**40),
        ("bob", 11),
        ("carol", 3),
        ("carol", 10),
        ("carol", 11),
        ("carol", 250),
        ("carol", 1000),
        ("carol", 4096),
        ("ghost", 3),
        ("dave", 77),
    ]
    seen = spark.createDataFrame(pairs, "user string, item long")
    want = reference_recs(m, USERS_STR, 5, pairs)
    counts = {u: sum(1 for r in want if r[0] == u) for u in USERS_STR}
    assert counts == {"alice": 5, "bob": 5, "carol": 1, "dave": 5, "erin": 5}  # carol: 1 unseen item
    check_recs(m.recommend(None, 5, seen=seen), want, "explicit", 5, pairs)


def test_recommend_implicit_seen_everything_and_n_beyond_catalogue(spark):
    m = implicit_model()
    pairs = [(5, it) for it in ITEMS_STR] + [(0, "i1"), (0, "x"), (12, "i01"), (99, "i1"), (-7, "nope")]
    seen = spark.createDataFrame(pairs, "user bigint, item string")
    users = spark.createDataFrame([(5,), (0,), (-7,), (404,)], "user bigint")
    want = reference_recs(m, [5, 0, -7], 50, pairs)
    assert {r[0] for r in want} == {0, -7} and len(want) == 4 + 6  # 5 has seen every item
    check_recs(m.recommend(users, 50, seen=seen), want, "implicit", 50, pairs)


def test_recommend_missing_column_raises(spark):
    with pytest.raises(InputError, match="'user'"):
        explicit_model().recommend(spark.createDataFrame([("bob",)], "uid string"), 2)


# ---- save / load --------------------------------------------------------------------------------


def assert_same_model(a: FactorModel, b: FactorModel):
    assert (b.kind, b.rank, b.global_mean, b.rating_range) == (a.kind, a.rank, a.global_mean, a.rating_range)
    assert b.factors.mu == a.factors.mu
    assert b.users.ids.equals(a.users.ids) and b.items.ids.equals(a.items.ids)
    for x, y in ((a.factors.X, b.factors.X), (a.factors.Y, b.factors.Y)):
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, x)
    for x, y in ((a.factors.user_bias, b.factors.user_bias), (a.factors.item_bias, b.factors.item_bias)):
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(y, x)


@pytest.fixture(scope="module")
def saved_models(spark, tmp_path_factory):
    """Each model kind saved once; tests copy the folder before damaging it."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind, make in MODELS.items():
        out[kind] = str(root / kind)
        make().save(out[kind], spark, extra={"note": "kept"})
    return out


def saved(saved_models, tmp_path, kind="explicit"):
    path = str(tmp_path / "model")
    shutil.copytree(saved_models[kind], path)
    return path


@pytest.mark.parametrize("kind", MODELS)
def test_save_load_round_trip(spark, saved_models, kind):
    m = MODELS[kind]()
    path = saved_models[kind]
    assert sorted(p for p in os.listdir(path) if not p.startswith(".")) == ["factors", "model.json"]
    meta = json.loads(open(os.path.join(path, "model.json")).read())
    assert meta["kind"] == kind and meta["note"] == "kept" and meta["rank"] == m.rank
    loaded = load_model(path, spark)
    assert_same_model(m, loaded)
    assert loaded.config == m.config
    u = np.arange(-1, m.users.size).repeat(m.items.size + 1)
    i = np.tile(np.arange(-1, m.items.size), m.users.size + 1)
    np.testing.assert_array_equal(loaded.predict_idx(u, i), m.predict_idx(u, i))


def test_saved_factor_tables_have_the_documented_schema(spark, saved_models):
    def dtypes(kind, side):
        return spark.read.parquet(posixpath.join(saved_models[kind], "factors", side)).dtypes

    assert dtypes("explicit", "users") == [("id", "string"), ("bias", "float"), ("factors", "array<float>")]
    assert dtypes("explicit", "items") == [("id", "bigint"), ("bias", "float"), ("factors", "array<float>")]
    assert dtypes("implicit", "users") == [("id", "bigint"), ("factors", "array<float>")]


def part_files(folder):
    return sorted(
        os.path.join(folder, p) for p in os.listdir(folder) if p.startswith("part-") and p.endswith(".parquet")
    )


def drop_crc(folder):
    for p in os.listdir(folder):
        if p.endswith(".crc"):
            os.remove(os.path.join(folder, p))


@pytest.mark.parametrize(
    "side, damage", [("users", "garbage"), ("items", "truncated"), ("items", "truncated_with_crc")]
)
def test_corrupted_factor_file_raises_model_error(spark, saved_models, tmp_path, side, damage):
    path = saved(saved_models, tmp_path)
    folder = os.path.join(path, "factors", side)
    (part,) = part_files(folder)
    data = open(part, "rb").read()
    if damage != "truncated_with_crc":
        drop_crc(folder)  # let the Parquet reader itself meet the damage
    with open(part, "wb") as fh:
        fh.write(b"this is not parquet at all" * 20 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert posixpath.join(path, "factors", side) in str(info.value)


def test_missing_factor_folder_raises_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    shutil.rmtree(os.path.join(path, "factors", "items"))
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert posixpath.join(path, "factors", "items") in str(info.value)


def test_missing_model_json_raises_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    os.remove(os.path.join(path, "model.json"))
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert posixpath.join(path, "model.json") in str(info.value)


def test_not_a_model_folder_raises_model_error(spark, tmp_path):
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path / "nothing"), spark)
    assert str(tmp_path / "nothing") in str(info.value)


def rewrite_json(path, edit):
    p = os.path.join(path, "model.json")
    drop_crc(path)
    meta = json.loads(open(p).read())
    edit(meta)
    with open(p, "w") as fh:
        fh.write(json.dumps(meta))


def test_model_json_not_json_raises_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    drop_crc(path)
    with open(os.path.join(path, "model.json"), "w") as fh:
        fh.write('{"kind": "explicit", ')
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert posixpath.join(path, "model.json") in str(info.value)


@pytest.mark.parametrize("key", ["kind", "rank", "mu", "n_users", "format_version"])
def test_model_json_missing_key_raises_model_error(spark, saved_models, tmp_path, key):
    path = saved(saved_models, tmp_path)
    rewrite_json(path, lambda meta: meta.pop(key))
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    msg = str(info.value)
    assert posixpath.join(path, "model.json") in msg and repr(key) in msg


def test_model_json_other_format_version_raises(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    rewrite_json(path, lambda meta: meta.update(format_version=99))
    with pytest.raises(ModelError, match="format_version"):
        load_model(path, spark)


def replace_table(folder, table):
    shutil.rmtree(folder)
    os.makedirs(folder)
    pq.write_table(table, os.path.join(folder, "part-00000.parquet"))


def test_wrong_length_factors_raise_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    m = explicit_model()
    folder = os.path.join(path, "factors", "items")
    table = factor_table(m.items.ids, m.factors.Y, m.factors.item_bias)
    short = pa.ListArray.from_arrays(
        pa.array([0, 3, 6, 9, 11, 14, 17, 20], pa.int32()), pa.array(np.zeros(20, np.float32))
    )  # row 3 holds 2 numbers
    replace_table(folder, table.set_column(2, "factors", short))
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert folder in str(info.value)


def test_rank_in_model_json_disagreeing_with_tables_raises(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    rewrite_json(path, lambda meta: meta.update(rank=4))
    with pytest.raises(ModelError) as info:
        load_model(path, spark)
    assert posixpath.join(path, "factors", "users") in str(info.value)


def test_row_count_or_duplicate_ids_raise_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    m = explicit_model()
    folder = os.path.join(path, "factors", "users")
    table = factor_table(m.users.ids, m.factors.X, m.factors.user_bias)
    replace_table(folder, table.slice(0, 4))
    with pytest.raises(ModelError, match="4 rows") as info:
        load_model(path, spark)
    assert folder in str(info.value)
    replace_table(folder, pa.concat_tables([table.slice(0, 4), table.slice(0, 1)]))
    with pytest.raises(ModelError, match="unique") as info:
        load_model(path, spark)
    assert folder in str(info.value)


def test_biases_promised_but_missing_raise_model_error(spark, saved_models, tmp_path):
    path = saved(saved_models, tmp_path)
    m = explicit_model()
    folder = os.path.join(path, "factors", "items")
    replace_table(folder, factor_table(m.items.ids, m.factors.Y, None))
    with pytest.raises(ModelError, match="bias") as info:
        load_model(path, spark)
    assert folder in str(info.value)


# ---- checkpoints --------------------------------------------------------------------------------


def random_factors(seed, biases=True, n_users=6, n_items=4, k=3):
    g = np.random.default_rng(seed)
    return Factors(
        g.normal(size=(n_users, k)).astype(np.float32),
        g.normal(size=(n_items, k)).astype(np.float32),
        g.normal(size=n_users).astype(np.float32) if biases else None,
        g.normal(size=n_items).astype(np.float32) if biases else None,
        float(g.normal()),
    )


def assert_same_factors(a: Factors, b: Factors):
    np.testing.assert_array_equal(b.X, a.X)
    np.testing.assert_array_equal(b.Y, a.Y)
    assert b.mu == a.mu
    for x, y in ((a.user_bias, b.user_bias), (a.item_bias, b.item_bias)):
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(y, x)


def checkpoint_root(tmp_path):
    return tmp_path / ".out_checkpoint"


@pytest.mark.parametrize("biases", [True, False])
def test_checkpoint_latest_is_the_newest(spark, tmp_path, biases):
    store = CheckpointStore(spark, str(tmp_path / "out"))
    assert store.latest() is None
    f1, f2 = random_factors(1, biases), random_factors(2, biases)
    store.save(1, f1, {"history": [1]})
    store.save(2, f2, {"history": [1, 2]})
    state, got = store.latest()
    assert state["iteration"] == 2 and state["history"] == [1, 2] and state["rank"] == 3
    assert_same_factors(f2, got)
    # beside the output folder, never inside it; older iterations dropped
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(checkpoint_root(tmp_path))) == ["iter-00002"]


def test_checkpoint_folder_without_state_is_ignored(spark, tmp_path, monkeypatch):
    store = CheckpointStore(spark, str(tmp_path / "out"))
    f2 = random_factors(2)
    store.save(2, f2, {})

    def killed(*args, **kwargs):
        raise RuntimeError("killed while writing state.json")

    monkeypatch.setattr(checkpoint.fs, "write_text", killed)
    with pytest.raises(RuntimeError, match="killed"):
        store.save(3, random_factors(3), {})
    monkeypatch.undo()
    assert not (checkpoint_root(tmp_path) / "iter-00003").exists()  # a failed write is removed
    (checkpoint_root(tmp_path) / "iter-00003" / "users").mkdir(parents=True)  # what a kill leaves
    state, got = store.latest()
    assert state["iteration"] == 2
    assert_same_factors(f2, got)
    # a stray folder that is not an iteration is ignored too
    (checkpoint_root(tmp_path) / "zzz").mkdir()
    assert store.latest()[0]["iteration"] == 2


def test_checkpoint_killed_midway_through_state_json_leaves_none(spark, tmp_path, monkeypatch):
    """state.json appears whole or not at all: a write cut short leaves only the partial file."""
    store = CheckpointStore(spark, str(tmp_path / "out"))
    f2 = random_factors(2)
    store.save(2, f2, {})
    real = checkpoint.fs.write_text

    def half_written(spark_, path, text):
        real(spark_, path, text[: len(text) // 2])
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(checkpoint.fs, "write_text", half_written)
    with pytest.raises(RuntimeError, match="killed"):
        store.save(3, random_factors(3), {})
    monkeypatch.undo()
    folder = checkpoint_root(tmp_path) / "iter-00003"
    assert not folder.exists()  # a failed write is removed; a kill at that moment leaves the partial file:
    folder.mkdir()
    (folder / "state.json.partial").write_text('{"iteration": 3, "mu"')
    state, got = store.latest()
    assert state["iteration"] == 2
    assert_same_factors(f2, got)


def test_checkpoint_with_unreadable_state_is_skipped_for_the_one_before(spark, tmp_path, caplog):
    store = CheckpointStore(spark, str(tmp_path / "out"))
    f2 = random_factors(2)
    store.save(2, f2, {})
    broken = checkpoint_root(tmp_path) / "iter-00003"
    broken.mkdir()
    (broken / "state.json").write_text('{"iteration": 3, "ra')
    with caplog.at_level("WARNING", logger="mf_spark"):
        state, got = store.latest()
    assert state["iteration"] == 2
    assert_same_factors(f2, got)
    assert "iter-00003" in caplog.text and "not readable JSON" in caplog.text


def test_checkpoint_sorts_iterations_numerically(spark, tmp_path):
    store = CheckpointStore(spark, str(tmp_path / "out"))
    store.save(9, random_factors(9), {})
    f10 = random_factors(10)
    store.save(10, f10, {})
    state, got = store.latest()
    assert state["iteration"] == 10
    assert_same_factors(f10, got)


def test_checkpoint_clear(spark, tmp_path):
    store = CheckpointStore(spark, str(tmp_path / "out"))
    store.save(1, random_factors(1), {})
    assert checkpoint_root(tmp_path).exists()
    store.clear()
    assert not checkpoint_root(tmp_path).exists()
    assert store.latest() is None
    store.clear()  # clearing nothing is fine


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("kind,rating_range", [("explicit", (1.0, 5.0)), ("explicit", None), ("implicit", None)])
def test_compiled_predictions_equal_numpys(monkeypatch, biases, kind, rating_range):
    from mf_spark.kernels import compiled

    if not compiled.AVAILABLE:
        pytest.skip("numba is not installed")
    g = np.random.default_rng(4)
    f = Factors(
        g.normal(size=(30, 6)).astype(np.float32),
        g.normal(size=(20, 6)).astype(np.float32),
        g.normal(size=30).astype(np.float32) if biases else None,
        g.normal(size=20).astype(np.float32) if biases else None,
        3.2,
    )
    scorer = Scorer(kind, f, 3.0, rating_range)
    u = np.concatenate([g.integers(0, 30, 500), [-1, -1, 4, -1]]).astype(np.int32)
    i = np.concatenate([g.integers(0, 20, 500), [-1, 7, -1, 3]]).astype(np.int32)
    fast = scorer.predict_idx(u, i)
    monkeypatch.setattr(compiled, "chosen", lambda engine: False)
    np.testing.assert_allclose(fast, scorer.predict_idx(u, i), rtol=1e-12, atol=1e-6)
    assert fast.dtype == np.float64 and fast.shape == (504,)


def test_an_implicit_models_unknown_pairs_score_no_preference():
    """Scores of implicit models estimate a preference: an unknown user or item gets 0, below the
    known pairs' scores, even for a model saved with the mean raw count as its global mean."""
    rng = np.random.default_rng(3)
    f = Factors(
        np.abs(rng.normal(size=(4, 3))).astype(np.float32),
        np.abs(rng.normal(size=(5, 3))).astype(np.float32),
        None,
        None,
        0.0,
    )
    model = FactorModel(
        "implicit", f, IdMap(pa.array(np.arange(4)), "user"), IdMap(pa.array(np.arange(5)), "item"), 37.0, None
    )
    got = model.predict_idx(np.array([-1, 0, 2, -1]), np.array([1, -1, 3, -1]))
    assert got[0] == 0.0 and got[1] == 0.0 and got[3] == 0.0
    assert got[2] == pytest.approx(float(f.X[2] @ f.Y[3]), rel=1e-6) and got[2] > 0
