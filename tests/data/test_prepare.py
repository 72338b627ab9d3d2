"""The driver front end (mf_spark.data.local) gives what the Spark stages give: the same validation (rows,
reasons, counts, merged ratings, ID types, errors), the same split and hash, the same ID maps and
training triples, and it hands to Spark whatever it cannot read exactly as Spark would."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import frame  # noqa: E402
from pyspark.sql import functions as F

from mf_spark.core import session
from mf_spark.core.config import DataConfig, SplitConfig, from_dict
from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, RATING, TIMESTAMP, USER
from mf_spark.data import front as front_steps
from mf_spark.data import prepare, split, validate
from mf_spark.data.local import read as local_read
from mf_spark.data.local import split as local_split
from mf_spark.data.local import validate as local_validate
from mf_spark.data.ready import Keyed, as_df, indices, unpacked

RAW = "user string, item string, rating string, timestamp string, _source string, _row long"


def raw_rows(rows, source="file:/data/r.csv"):
    return [tuple(r) + (None,) * (4 - len(r)) + (source, n) for n, r in enumerate(rows)]


def both(spark, rows, cfg: DataConfig, kind="explicit"):
    """(Spark's Cleaned, the driver's Clean) of the same raw text rows."""
    data = raw_rows(rows)
    table = pa.Table.from_pylist(
        [dict(zip([USER, ITEM, RATING, TIMESTAMP, "_source", "_row"], r)) for r in data],
        pa.schema(
            [
                (USER, pa.string()),
                (ITEM, pa.string()),
                (RATING, pa.string()),
                (TIMESTAMP, pa.string()),
                ("_source", pa.string()),
                ("_row", pa.int64()),
            ]
        ),
    )
    return validate.clean(frame(spark, data, RAW), cfg, kind), local_validate.clean(table, cfg, kind)


def spark_rows(df, cols):
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


def driver_rows(t: pa.Table, cols):
    return sorted(tuple(r[c] for c in cols) for r in t.to_pylist())


MESSY = [
    ("u1", "i1", "4"),
    ("u1", "i1", "2", "10"),
    ("u2", "", "5"),
    ("u3", "i2", "x"),
    (" u4 ", "i2", "3.5", "7"),
    ("u5", "i3", "NaN"),
    ("u5", "i4", "-inf"),
    ("u6", "i1", "1e1", "12.9"),
    ("007", "i1", "1"),
    ("7", "i1", "2"),
    ("u7", "i5", "4", "soon"),
    (None, "i6", "1"),
    ("u8", "i6", " "),
    ("u9", "i6", "+4", "-3"),
    ("u1", "i1", "5", "11"),
    ("u10", "i7", "0"),
    ("u10", "i8", "-2"),
    ("u11", "i9", "1e39"),
    ("u11", "i10", "-3.5e38"),
]


@pytest.mark.parametrize(
    "policy,kind,nonpositive",
    [
        ("mean", "explicit", "reject"),
        ("last", "explicit", "reject"),
        ("sum", "implicit", "drop"),
        ("last", "implicit", "reject"),
    ],
)
def test_validation_matches_spark(spark, policy, kind, nonpositive):
    cfg = DataConfig(max_bad_fraction=1.0, duplicates=policy, nonpositive=nonpositive)
    ours_spark, ours_driver = both(spark, MESSY, cfg, kind)
    assert ours_driver.counts == ours_spark.counts
    cols = [USER, ITEM, RATING, TIMESTAMP]
    want = spark_rows(ours_spark.ratings, cols)
    got = driver_rows(ours_driver.ratings, cols)
    assert [r[:2] + r[3:] for r in got] == [r[:2] + r[3:] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want])
    rej = ["_source", "_row", USER, ITEM, RATING, TIMESTAMP, "reason"]
    assert driver_rows(ours_driver.rejected, rej) == spark_rows(ours_spark.rejected, rej)


def test_integer_ids_are_typed_as_spark_types_them(spark):
    cfg = DataConfig(max_bad_fraction=1.0)
    s, d = both(spark, [("1", "10", "4"), ("2", " 20", "3"), ("x", "30", "1")], cfg)  # "x" makes users text
    assert (
        str(d.ratings.schema.field(USER).type) == "string"
        and s.ratings.schema[USER].dataType.simpleString() == "string"
    )
    assert (
        str(d.ratings.schema.field(ITEM).type) == "int64" and s.ratings.schema[ITEM].dataType.simpleString() == "bigint"
    )


@pytest.mark.parametrize(
    "rows,cfg",
    [
        ([("u1", "i1", "4"), ("u1", "", "4"), ("u2", "i1", "y")], DataConfig(max_bad_fraction=0.1)),
        ([("u1", "i1", "4"), ("u1", "i1", "3"), ("u2", "i2", "1"), ("u2", "i2", "1")], DataConfig(duplicates="error")),
        ([("u1", "i1", "-1"), ("u2", "i1", "0")], DataConfig(max_bad_fraction=1.0, nonpositive="drop")),
    ],
)
def test_errors_match_spark_word_for_word(spark, rows, cfg):
    data = raw_rows(rows)
    with pytest.raises(InputError) as from_spark:
        validate.clean(frame(spark, data, RAW), cfg, "implicit")
    with pytest.raises(InputError) as from_driver:
        both_driver = pa.Table.from_pylist(
            [dict(zip([USER, ITEM, RATING, TIMESTAMP, "_source", "_row"], r)) for r in data]
        )
        local_validate.clean(both_driver, cfg, "implicit")
    assert str(from_driver.value) == str(from_spark.value)


@pytest.mark.parametrize("text", ["4d", "0x1p3", "\t4", "-nan", "Infinityx1"])
def test_texts_only_spark_can_judge_go_to_spark(text):
    table = pa.table(
        {
            USER: ["u"],
            ITEM: ["i"],
            RATING: [text],
            TIMESTAMP: pa.nulls(1, pa.string()),
            "_source": ["f"],
            "_row": pa.array([0], pa.int64()),
        }
    )
    with pytest.raises(local_read.Unreadable):
        local_validate.clean(table, DataConfig(max_bad_fraction=1.0), "explicit")


def test_java_double_texts():
    assert [local_validate._java_double(v) for v in (4.0, 0.001, 1e7, -2.5e-4, 1.23456789e8, float("nan"))] == [
        "4.0",
        "0.001",
        "1.0E7",
        "-2.5E-4",
        "1.23456789E8",
        "NaN",
    ]


def ratings_table(n, string_ids: bool, seed=0):
    g = np.random.default_rng(seed)
    u, i = g.integers(0, 50, n), g.integers(0, 400, n)
    key = np.unique(u * 1000 + i)
    u, i = key // 1000, key % 1000
    ts = g.integers(0, 30, key.size).astype(np.int64)
    mask = g.random(key.size) < 0.1
    users = pa.array([f"user-{x}" * (1 + x % 7) for x in u]) if string_ids else pa.array(u)
    items = pa.array([f"é{x}" for x in i]) if string_ids else pa.array(i * 1_000_003)
    return pa.table(
        {
            USER: users,
            ITEM: items,
            RATING: pa.array(g.integers(1, 6, key.size).astype(float)),
            TIMESTAMP: pa.array(ts, mask=mask),
        }
    )


@pytest.mark.parametrize(
    "method,string_ids,seed",
    [
        ("random", False, 42),
        ("random", True, 2**40 + 3),
        ("per_user", False, 7),
        ("per_user", True, -3),
        ("temporal", False, 42),
        ("temporal", True, 7),
    ],
)
def test_split_matches_spark(spark, method, string_ids, seed):
    t = ratings_table(3000, string_ids)
    cfg = SplitConfig(method=method, test_fraction=0.25, seed=seed)
    flagged = split.flag(spark.createDataFrame(t.append_column("_n", pa.array(np.arange(t.num_rows)))), cfg)
    want = flagged.orderBy("_n").select("_split_test").toArrow().column(0).to_numpy(zero_copy_only=False)
    assert np.array_equal(local_split.test_mask(t, cfg), want)


def test_hash_matches_spark_on_long_and_unicode_ids(spark):
    t = pa.table(
        {"a": ["", "x" * 31, "y" * 32, "z" * 100, "日本語のID", "7"], "b": ["b" * 33, "", "ü", "8", "q" * 64, "9"]}
    )
    for seed in (0, -5, 2**31, -(2**40)):
        want = spark.createDataFrame(t).select(split.uniform_hash(seed, F.col("a"), F.col("b"))).toArrow().column(0)
        assert np.array_equal(local_split.uniform_hash(seed, t.column("a"), t.column("b")), want.to_numpy())


# ---- whole front ends on files ---------------------------------------------------------------------
def write_inputs(tmp_path):
    """The same ratings in every format the driver reads."""
    rows = [
        (1, 10, 4.0, 100),
        (1, 11, 3.0, 101),
        (2, 10, 5.0, 102),
        (2, 12, 1.5, 103),
        (3, 11, 2.0, 104),
        (3, 12, 4.5, 105),
        (4, 10, 3.0, 106),
        (4, 13, 2.5, 107),
        (5, 13, 5.0, 108),
        (5, 10, 1.0, 109),
    ] * 1
    rows += [(u, 20 + (u * 7 + k) % 15, float(1 + (u + k) % 5), 200 + k) for u in range(6, 40) for k in range(6)]
    csv = tmp_path / "r.csv"
    csv.write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows) + "9,,4.0,1\n"
    )
    dat = tmp_path / "r.dat"
    dat.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    tsv = tmp_path / "r.tsv"
    tsv.write_text("".join(f"u{u}\ti{i}\t{r}\n" for u, i, r, _ in rows))
    folder = tmp_path / "parts"
    folder.mkdir()
    half = len(rows) // 2
    for n, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(
            pa.table(
                {
                    "user": [r[0] for r in chunk],
                    "item": [str(r[1]) for r in chunk],
                    "rating": [r[2] for r in chunk],
                    "ts": [r[3] for r in chunk],
                }
            ),
            folder / f"part-{n}.parquet",
        )
    return [str(p) for p in (csv, dat, tsv, folder)]


def ready_of(spark, cfg, sql=False, **source):
    front = prepare.front_end(spark, cfg, sql=sql, **source)
    loaded = front.load()
    return front, loaded, front.split_index()


def _sorted(u, i, r):
    order = np.lexsort((i, u))
    return u[order], i[order], r[order]


def triples(ready):
    if isinstance(ready.train, prepare.Triples):
        return _sorted(ready.train.u, ready.train.i, ready.train.r)
    t = as_df(ready.train).toArrow()
    got = _sorted(*(t.column(c).to_numpy() for c in ("user_idx", "item_idx", "rating")))
    if isinstance(ready.train, Keyed):  # the resident stage's tasks index the rows as read themselves
        keyed = ready.train
        read = [keyed.rows.toArrow()]
        if keyed.packed is not None:  # and from the packed pieces where the tasks keep them
            read.append(unpacked(keyed.packed.toArrow().to_batches()))
            some = np.unique(got[0])[::3]
            pairs = keyed.pairs_of(some)
            want = np.isin(got[0], some)
            assert sorted(zip(*pairs)) == sorted(zip(got[0][want], got[1][want]))
        for table in read:
            mine = _sorted(*indices(table, keyed.users, keyed.items))
            np.testing.assert_array_equal(mine[0], got[0])
            np.testing.assert_array_equal(mine[1], got[1])
            np.testing.assert_allclose(mine[2], got[2], rtol=1e-7)  # the blocks' float32
    return got


@pytest.mark.parametrize("which,method", [(0, "random"), (1, "per_user"), (2, "random"), (3, "per_user")])
def test_front_ends_agree_on_files(spark, tmp_path, which, method):
    path = write_inputs(tmp_path)[which]
    out = {}
    for name in ("driver", "spark", "spark-sql"):
        cfg = from_dict(
            {
                "data": {"front_end": name.split("-")[0], "max_bad_fraction": 0.1},
                "split": {"method": method, "test_fraction": 0.3},
            }
        )
        front, loaded, ready = ready_of(spark, cfg, sql=name == "spark-sql", input=path)
        assert front.name == name
        out[name] = (loaded, ready)
    for other in ("spark", "spark-sql"):
        _agree(*out["driver"], *out[other])


def test_a_large_input_gets_more_user_groups_than_tasks(spark, tmp_path, monkeypatch):
    """A user group's packed rows fill one batch of Spark's cache: an input of more rows than
    front.GROUP_ROWS a task gets more groups than tasks, with the same result."""
    path = write_inputs(tmp_path)[0]
    bound = os.path.getsize(path) // local_read.TEXT_ROW_BYTES
    monkeypatch.setattr(front_steps, "GROUP_ROWS", 4 * (bound // 5 + 1))  # text IDs: 5 groups
    out = {}
    for name in ("driver", "spark"):
        cfg = from_dict({"data": {"front_end": name, "max_bad_fraction": 0.1}, "split": {"test_fraction": 0.3}})
        chosen, loaded, ready = ready_of(spark, cfg, input=path)
        out[name] = (loaded, ready)
    assert chosen.front.steps.n_groups == 5 > session.parallelism(spark)
    _agree(*out["driver"], *out["spark"])


def _agree(ld, rd, ls, rs):
    assert ld.counts == ls.counts
    assert rd.users.ids.equals(rs.users.ids) and rd.items.ids.equals(rs.items.ids)
    for a, b in zip(triples(rd), triples(rs)):
        assert np.allclose(a, b)
    order_d, order_s = np.lexsort((rd.heldout.i, rd.heldout.u)), np.lexsort((rs.heldout.i, rs.heldout.u))
    assert np.array_equal(rd.heldout.u[order_d], rs.heldout.u[order_s])
    assert np.allclose(rd.heldout.r[order_d], rs.heldout.r[order_s])
    assert (rd.stats.n, rd.stats.lo, rd.stats.hi) == (rs.stats.n, rs.stats.lo, rs.stats.hi)
    assert rd.stats.mean == pytest.approx(rs.stats.mean)
    if ld.rejected is not None:
        assert ld.rejected.to_pylist() == sorted(
            (r.asDict() for r in ls.rejected.collect()), key=lambda r: (r["_source"], r["_row"])
        )
    rd.release()
    rs.release()


def test_given_train_and_test_agree(spark, tmp_path):
    a = tmp_path / "train.csv"
    b = tmp_path / "test.parquet"
    a.write_text("user,item,rating\n" + "".join(f"{u},{i},{(u + i) % 5 + 1}\n" for u in range(20) for i in range(8)))
    pq.write_table(
        pa.table({"user": pa.array([1, 2, 3, 99]), "item": pa.array([0, 1, 50, 2]), "rating": [3.0, 4.0, 5.0, 1.0]}), b
    )
    got = {}
    for name in ("driver", "spark", "spark-sql"):
        cfg = from_dict({"data": {"front_end": name.split("-")[0]}})
        front, loaded, ready = ready_of(spark, cfg, sql=name == "spark-sql", train=str(a), test=str(b))
        got[name] = (loaded.counts, ready.users.ids, ready.heldout.u.tolist(), ready.heldout.i.tolist())
    for other in ("spark", "spark-sql"):
        assert got["driver"][0] == got[other][0]
        assert got["driver"][1].equals(got[other][1])
        assert sorted(zip(got["driver"][2], got["driver"][3])) == sorted(zip(got[other][2], got[other][3]))


@pytest.mark.parametrize(
    "content",
    [
        'user,item,rating\n"a\\"b",i,4\nu2,i2,3\n',  # Spark escapes with a backslash
        "user item rating\nu1 i1 4\nu2 i2 3\n",  # whitespace-separated
        "user,item,rating,timestamp\nu1,i1,4,2015-02-19 21:11:52\nu2,i2,3,2015-02-19\n",  # dates: Spark parses
        "user,item,rating\nu1,i1,4\nu2,i2\n",  # a short row: Spark reads nulls
    ],
)
def test_what_the_driver_cannot_read_goes_to_spark(spark, tmp_path, content):
    path = tmp_path / "odd.txt"
    path.write_text(content)
    cfg = from_dict({"data": {"front_end": "auto", "max_bad_fraction": 1.0}})
    front, loaded, ready = ready_of(spark, cfg, input=str(path))
    assert front.name == "spark-sql"
    assert loaded.counts["n_read"] == 2


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_event_log_without_a_rating_column_trains_on_counts_of_its_rows(spark, tmp_path, fmt):
    """Implicit data as logs hold it (a row per view, no strength column): each row is one
    interaction, and a pair's rows add up, so the fit sees counts, alike from every front end.
    Explicit data needs its ratings."""
    rows = [(10, "v1", "view", "i1"), (11, "v1", "view", "i1"), (12, "v1", "cart", "i2"), (13, "v2", "view", "i1")]
    rows += [(20 + k, f"v{k % 7}", "view", f"i{k % 5}") for k in range(60)]
    if fmt == "csv":
        path = tmp_path / "events.csv"
        path.write_text("timestamp,visitorid,event,itemid\n" + "".join(f"{t},{u},{e},{i}\n" for t, u, e, i in rows))
    else:
        path = tmp_path / "events.parquet"
        pq.write_table(pa.table(dict(zip(("timestamp", "visitorid", "event", "itemid"), map(list, zip(*rows))))), path)
    out = {}
    for name in ("driver", "spark", "spark-sql"):
        cfg = from_dict({"model": {"kind": "implicit"}, "data": {"front_end": name.split("-")[0]}})
        front, loaded, ready = ready_of(spark, cfg, sql=name == "spark-sql", input=str(path))
        assert front.name == name
        out[name] = (loaded, ready)
    loaded, ready = out["spark-sql"]
    assert (loaded.counts["n_read"], loaded.counts["n_duplicates_merged"]) == (64, 64 - 35)  # 35 pairs
    strengths = np.concatenate([triples(ready)[2], ready.heldout.r])
    assert strengths.sum() == 64 and strengths.max() >= 2
    for other in ("driver", "spark"):
        _agree(*out[other], *out["spark-sql"])
    with pytest.raises(InputError, match="no rating column found"):
        ready_of(spark, from_dict({}), input=str(path))


def test_auto_takes_spark_above_the_size_limit(spark, tmp_path):
    path = write_inputs(tmp_path)[0]
    cfg = from_dict({"data": {"front_end": "auto", "front_end_max_mb": 0.0001, "max_bad_fraction": 0.1}})
    front, _, _ = ready_of(spark, cfg, input=path)
    assert front.name == "spark"
    cfg = from_dict({"data": {"front_end": "auto", "max_bad_fraction": 0.1}})
    front, _, _ = ready_of(spark, cfg, input=path)
    assert front.name == "driver"
