"""Odd and bad inputs through the front end in the driver and in executor tasks: the same exit (a clear
InputError or a result), the same counts, rejected rows, ID maps, training ratings and split, and the
answer a user expects. Each case is a class of input on which the two once disagreed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mf_spark.core.config import load
from mf_spark.core.errors import InputError
from mf_spark.data import prepare
from mf_spark.data.ready import Triples, as_df


def _write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _triples(ready) -> list[tuple]:
    if isinstance(ready.train, Triples):
        t = ready.train
        return sorted(zip(t.u.tolist(), t.i.tolist(), t.r.tolist()))
    rows = as_df(ready.train).select("user_idx", "item_idx", "rating").collect()
    return sorted((r[0], r[1], r[2]) for r in rows)


def outcome(spark, front: str, sets: list[str], paths: dict) -> tuple:
    """("error", message) or ("ok", what the front end gives, in a comparable form)."""
    cfg = load(None, [f"data.front_end={front}", "data.max_bad_fraction=0.5", *sets])
    try:
        chosen = prepare.front_end(spark, cfg, **paths)
        loaded = chosen.load()
        ready = chosen.split_index()
    except InputError as e:
        return ("error", str(e))
    rejected = loaded.rejected
    if rejected is not None and not isinstance(rejected, pa.Table):
        rejected = pa.Table.from_pylist([r.asDict() for r in rejected.collect()])
    rows = [] if rejected is None else sorted(tuple(r.values()) for r in rejected.to_pylist())
    h = ready.heldout
    got = (
        "ok",
        dict(loaded.counts),
        rows,
        ready.users.ids.to_pylist(),
        ready.items.ids.to_pylist(),
        _triples(ready),
        sorted(zip(h.u.tolist(), h.i.tolist(), h.r.tolist())),
        chosen.name,
    )
    ready.release()
    return got


ROWS = "".join(f"u{u},i{(u * 3 + k) % 7},{1 + (u + k) % 5}\n" for u in range(6) for k in range(4))
CSV = "user,item,rating\n" + ROWS
_TS = pa.array([1_000_000_000_000_000_000 + n for n in range(4)], pa.timestamp("ns", tz="UTC"))

# name: (files under the case's folder, --set values, the input: "input" path or train/test paths, check)
CASES = {
    "nested subfolders": (
        {"in/a.csv": CSV, "in/sub/b.csv": "user,item,rating\nv1,i1,2\nv2,i2,3\n"},
        [],
        {"input": "in"},
        lambda o: o[1]["n_read"] == 26 and "v1" in o[3],
    ),
    "a file still being copied": (
        {"in/a.csv": CSV, "in/b.csv._COPYING_": "user,item,rating\nv1,i1,2\n"},
        [],
        {"input": "in"},
        lambda o: o[0] == "error" and "still being copied" in o[1],
    ),
    "metadata and checksum files in a Parquet folder": (
        {
            "in/part-0.parquet": pa.table({"user": [1, 2, 3], "item": [1, 1, 2], "rating": [1.0, 2.0, 3.0]}),
            "in/_metadata": b"PAR1 not really",
            "in/.part-0.parquet.crc": b"crc",
        },
        [],
        {"input": "in"},
        lambda o: o[0] == "ok" and o[1]["n_read"] == 3,
    ),
    "a quoted newline": (
        {"in.csv": 'user,item,rating\nu1,"i\n1",4\n' + ROWS},
        [],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and "i\n1" in o[4],
    ),
    "CRLF inside a quoted field": (
        {"in.csv": ('user,item,rating\r\nu1,"i\r\n1",4\r\n' + ROWS.replace("\n", "\r\n")).encode()},
        [],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and o[1]["n_read"] == 25,
    ),
    "text after a closing quote": (
        {"in.csv": 'user,item,rating\n"u1"x,i1,4\n' + ROWS},
        [],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and o[1]["n_read"] == 25,
    ),
    "a line of only tabs": (
        {"in.tsv": "user\titem\trating\nu1\ti1\t4\n\t\t\n" + ROWS.replace(",", "\t")},
        [],
        {"input": "in.tsv"},
        lambda o: o[0] == "ok" and o[1]["n_rejected"] == 1,
    ),
    "IDs beyond int64": (
        {"in.csv": CSV + "99999999999999999999,i1,4\n9223372036854775808,i2,3\n9223372036854775807,i3,2\n"},
        [],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and o[1]["n_rejected"] == 0 and all(isinstance(u, str) for u in o[3]),
    ),
    "integer IDs up to int64's largest": (
        {"in.csv": "user,item,rating\n9223372036854775807,1,4\n-9223372036854775808,2,3\n5,1,2\n"},
        ["split.test_fraction=0.01"],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and o[3] == [-(2**63), 5, 2**63 - 1],
    ),
    "19-digit and int64-max timestamps": (
        {
            "in.csv": "user,item,rating,timestamp\n"
            + "".join(f"u{u},i{u % 3},4,{9223372036854775807 - u}\n" for u in range(5))
            + "u9,i1,3,1000000000000000000\n"
        },
        ["split.method=temporal"],
        {"input": "in.csv"},
        lambda o: o[0] == "ok" and o[1]["n_rejected"] == 0,
    ),
    "nanosecond timestamps and float16 ratings in Parquet": (
        {
            "in.parquet": pa.table(
                {
                    "user": [1, 2, 3, 4],
                    "item": [1, 1, 2, 2],
                    "rating": pa.array(np.array([1, 2, 3, 4], np.float16)),
                    "timestamp": _TS,
                }
            )
        },
        [],
        {"input": "in.parquet"},
        lambda o: o[0] == "ok" and o[1]["n_read"] == 4 and o[1]["n_rejected"] == 0,
    ),
    "a header that names a column twice": (
        {"in.csv": "user,item,rating,rating\nu1,i1,4,5\nu2,i2,3,1\n"},
        [],
        {"input": "in.csv"},
        lambda o: o[0] == "error" and "more than once" in o[1],
    ),
    "'last' duplicates across files": (
        {"in/a.csv": "user,item,rating\nu1,i1,1\nu2,i2,2\n", "in/b.csv": "user,item,rating\nu1,i1,5\nu3,i2,2\n"},
        ["data.duplicates=last", "split.test_fraction=0.01"],
        {"input": "in"},
        lambda o: o[0] == "ok" and o[1]["n_duplicates_merged"] == 1 and (0, 0, 5.0) in o[5],
    ),
    "'last' duplicates across train and test folders": (
        {
            "train/a.csv": "user,item,rating\nu1,i1,1\nu2,i2,2\n",
            "train/b.csv": "user,item,rating\nu1,i1,4\nu2,i1,2\n",
            "test/a.csv": "user,item,rating\nu2,i2,1\n",
            "test/b.csv": "user,item,rating\nu2,i2,3\n",
        },
        ["data.duplicates=last"],
        {"train": "train", "test": "test"},
        lambda o: o[0] == "ok" and (0, 0, 4.0) in o[5] and o[6] == [(1, 1, 3.0)],
    ),
    "rejected row numbers across files": (
        {"in/a.csv": "user,item,rating\nu1,i1,1\nu2,i2,x\n" + ROWS, "in/b.csv": "user,item,rating\nu3,i3,y\n" + ROWS},
        [],
        {"input": "in"},
        lambda o: o[0] == "ok" and [(r[0].rsplit("/", 1)[1], r[1]) for r in o[2]] == [("a.csv", 1), ("b.csv", 0)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_driver_and_the_tasks_give_the_same_answer_a_user_expects(spark, tmp_path, case):
    files, sets, paths, expected = CASES[case]
    _write(tmp_path, files)
    paths = {k: str(tmp_path / v) for k, v in paths.items()}
    driver, tasks = (outcome(spark, front, sets, paths) for front in ("driver", "spark"))
    if driver[0] == "ok" and tasks[0] == "ok":  # where each ran (driver | spark, or spark-sql for both)
        assert driver[-1] in ("driver", "spark-sql") and tasks[-1] in ("spark", "spark-sql")
        assert (driver[-1] == "spark-sql") == (tasks[-1] == "spark-sql")
        driver, tasks = driver[:-1], tasks[:-1]
    assert driver == tasks
    assert expected(driver), driver


def test_a_parquet_file_of_several_row_groups_is_read_in_pieces(spark, tmp_path, monkeypatch):
    from mf_spark.data import front

    ratings = [float(1 + n % 5) for n in range(40)]
    ratings[27] = float("nan")
    table = pa.table({"user": [n % 7 for n in range(40)], "item": [n % 9 for n in range(40)], "rating": ratings})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=5)
    monkeypatch.setattr(front, "PIECE_ROWS", 8)
    pieces = front.Input.of([str(tmp_path / "in.parquet")], "auto", load(None, []).data).pieces(front.PIECE_ROWS)
    assert [(g, first) for _, g, first in pieces] == [((0, 2), 0), ((2, 4), 10), ((4, 6), 20), ((6, 8), 30)]
    paths = {"input": str(tmp_path / "in.parquet")}
    driver, tasks = (outcome(spark, f, [], paths) for f in ("driver", "spark"))
    assert driver[:-1] == tasks[:-1]
    assert [r[1] for r in tasks[2]] == [27]
