"""IdMap: deterministic sorted maps, driver lookups, encode/decode round trips, save/load checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from conftest import frame  # noqa: E402

from mf_spark.core.errors import ModelError
from mf_spark.data import index
from mf_spark.data.index import IdMap


@pytest.fixture(scope="module")
def ratings(spark):
    rows = [("u2", 9, 4.0), ("u10", 3, 2.5), ("u1", 9, 1.0), ("u2", 3, 5.0), ("ü", 7, 3.0)]
    return frame(spark, rows, "user string, item long, rating double")


@pytest.fixture(scope="module")
def users(ratings):
    return index.fit(ratings, "user")


@pytest.fixture(scope="module")
def items(ratings):
    return index.fit(ratings, "item")


def test_fit_sorts_distinct_ids(users, items):
    assert users.ids.to_pylist() == ["u1", "u10", "u2", "ü"] and users.name == "user"
    assert items.ids.type == pa.int64() and items.ids.to_pylist() == [3, 7, 9]
    assert users.size == 4 and len(items) == 3


def test_fit_is_deterministic_whatever_the_partitioning(spark, rng):
    ids = rng.choice(10_000, size=500, replace=False).tolist()
    df = frame(spark, [(int(i),) for i in ids], "user long")
    one = index.fit(df.repartition(1), "user")
    many = index.fit(df.repartition(7).orderBy("user", ascending=False), "user")
    assert one.ids.equals(many.ids)
    assert one.ids.to_pylist() == sorted(ids)


def test_fit_ignores_nulls_and_widens_int(spark):
    df = frame(spark, [(5,), (None,), (2,)], "item int")
    assert index.fit(df, "item").ids.to_pylist() == [2, 5]
    with pytest.raises(TypeError, match="double"):
        index.fit(frame(spark, [(1.0,)], "x double"), "x")


def test_fit_columns_equals_fit_of_each_column(spark, ratings, users, items):
    got_users, got_items = index.fit_columns(ratings, ("user", "item"))
    assert got_users == users and got_items == items
    df = frame(spark, [(-5, "b", 1), (None, "a", 2), (2**40, "b", 3)], "u long, i string, j int")
    u, i, j = index.fit_columns(df, ("u", "i", "j"))
    assert u.ids.to_pylist() == [-5, 2**40] and u.ids.type == pa.int64()
    assert i.ids.to_pylist() == ["a", "b"] and j.ids.to_pylist() == [1, 2, 3]
    with pytest.raises(TypeError, match="double"):
        index.fit_columns(frame(spark, [(1.0,)], "x double"), ("x",))


def test_index_of_numpy_and_arrow(users, items):
    got = users.index_of(np.array(["u2", "zz", "u1"]))
    assert got.dtype == np.int32 and got.tolist() == [2, -1, 0]
    assert users.index_of(pa.array(["ü", None])).tolist() == [3, -1]
    assert items.index_of(np.array([9, 4, 3], dtype=np.int32)).tolist() == [2, -1, 0]
    # strings against integer IDs compare as text, as encode does: "009" is not 9
    assert items.index_of(pa.array(["nine", "9", "009"])).tolist() == [-1, 2, -1]
    with pytest.raises(TypeError, match="cannot look up"):
        items.index_of(pa.array([1.5]))


def test_to_df_schema(spark, users):
    df = users.to_df(spark, "user_idx")
    want = frame(spark, [("u1", 0), ("u10", 1), ("u2", 2), ("ü", 3)], "user string, user_idx int")
    assert_df_equality(df, want, ignore_nullable=True)


def test_encode_then_decode_round_trip(ratings, users):
    encoded = users.encode(ratings, "user", "user_idx")
    assert encoded.columns == ["user", "item", "rating", "user_idx"]
    assert sorted((r.user, r.user_idx) for r in encoded.collect()) == [
        ("u1", 0),
        ("u10", 1),
        ("u2", 2),
        ("u2", 2),
        ("ü", 3),
    ]
    decoded = users.decode(encoded.drop("user"), "user_idx", "user")
    assert decoded.columns == ["item", "rating", "user"]
    assert_df_equality(decoded.select("user", "item", "rating"), ratings, ignore_row_order=True, ignore_nullable=True)


def test_unknown_ids_get_null_index(spark, items):
    new = frame(spark, [(9,), (42,), (None,)], "item int")  # int column, long map
    got = items.encode(new, "item", "item_idx")
    want = frame(spark, [(9, 2), (42, None), (None, None)], "item int, item_idx int")
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)
    back = items.decode(frame(spark, [(0,), (99,)], "item_idx int"), "item_idx", "item")
    assert sorted(r.item or 0 for r in back.collect()) == [0, 3]


def test_encode_across_id_types(spark, items):
    new = frame(spark, [("9",), ("abc",), ("09",)], "item string")  # string column, long map
    got = {r.item: r.item_idx for r in items.encode(new, "item", "item_idx").collect()}
    assert got == {"9": 2, "abc": None, "09": None}
    texts = IdMap(pa.array(["007", "7"]), "user")  # long column, string map
    longs = frame(spark, [(7,), (8,)], "user long")
    assert sorted(texts.encode(longs, "user", "u").collect()) == [(7, 1), (8, None)]


def test_save_load_round_trip(spark, users, tmp_path):
    path = str(tmp_path / "ids" / "user")
    users.save(spark, path)
    back = IdMap.load(spark, path)
    assert back.ids.equals(users.ids) and back.name == "user"
    assert index.load(spark, path, name="customer").name == "customer"
    cols = pq.read_table(path).column_names
    assert cols == ["id", "idx"]


def test_load_rejects_corrupted_maps(spark, tmp_path):
    gap = str(tmp_path / "gap.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "idx": pa.array([0, 2], pa.int32())}), gap)
    with pytest.raises(ModelError, match=r"gap.parquet: idx must be exactly 0..1; position 1 holds"):
        IdMap.load(spark, gap)
    unsorted = str(tmp_path / "unsorted.parquet")
    pq.write_table(pa.table({"id": ["b", "a"], "idx": pa.array([0, 1], pa.int32())}), unsorted)
    with pytest.raises(ModelError, match="unsorted.parquet: .*not sorted"):
        IdMap.load(spark, unsorted)
    cols = str(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"key": ["a"], "idx": [0]}), cols)
    with pytest.raises(ModelError, match="cols.parquet: expected columns id, idx"):
        IdMap.load(spark, cols)
    with pytest.raises(ModelError, match="missing_map cannot be read"):
        IdMap.load(spark, str(tmp_path / "missing_map"))


def test_construction_checks():
    with pytest.raises(ValueError, match="not sorted"):
        IdMap(pa.array([3, 1], pa.int64()), "item")
    with pytest.raises(ValueError, match="not sorted"):
        IdMap(pa.array(["a", "a"]), "user")
    with pytest.raises(ValueError, match=r"integers \(kept as int64\) or strings, got .* double"):
        IdMap(pa.array([1.0]), "x")
    widened = IdMap(pa.chunked_array([pa.array([1, 5], pa.int32())]), "x")
    assert widened.ids.type == pa.int64() and isinstance(widened.ids, pa.Array)
    assert IdMap(pa.array(["a", "b"], pa.large_string()), "y").ids.type == pa.string()
    with pytest.raises(ValueError, match="null"):
        IdMap(pa.array([None, 1], pa.int64()), "x")
    assert IdMap(pa.array([], pa.int64()), "x").size == 0
