"""What every front end owes the fit (the front-end contract), held against each: the rows a user
expects kept, rejected with a reason or merged, every row accounted for, the ID maps sorted, the
split determined by the seed alone, and the same Ready as every other front end. A way to read
added to mf_spark.data gets a class here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mf_spark.core.config import load
from mf_spark.core.errors import InputError
from mf_spark.core.types import REASON
from mf_spark.data import prepare
from mf_spark.data.ready import Triples, as_df

CLEAN = "userId,movieId,rating,timestamp\n" + "".join(
    f"u{u},m{(u * 7 + k) % 13},{1 + (u + k) % 5},{1000 + u * 10 + k}\n" for u in range(12) for k in range(6)
)
BAD = (
    "userId,movieId,rating\n"
    "u1,m1,4\n"
    "u1,m2,3\n"
    ",m3,5\n"  # no user
    "u2,m1,x\n"  # not a number
    "u2,m2,NaN\n"  # not finite
    "u3,m1,2\n"
    "u3,m1,4\n"  # a repeated pair: merged by the mean
    "u4,m3,1\n"
)


def _rows_of(t) -> list[dict]:
    return t.to_pylist() if isinstance(t, pa.Table) else [r.asDict() for r in t.collect()]


def _rows(t) -> list[tuple]:
    return sorted(tuple(r.values()) for r in _rows_of(t))


def _training_triples(ready) -> list[tuple]:
    train = ready.train
    if isinstance(train, Triples):
        return sorted(zip(train.u.tolist(), train.i.tolist(), train.r.tolist()))
    return _rows(as_df(train).select("user_idx", "item_idx", "rating"))


class FrontContract:
    front: str = ""
    sql: bool = False

    def run(self, spark, sets=(), **paths):
        cfg = load(None, [f"data.front_end={self.front}", "data.max_bad_fraction=0.5", *sets])
        front = prepare.front_end(spark, cfg, fmt="auto", sql=self.sql, **paths)
        loaded = front.load()
        return loaded, front.split_index()

    def test_keeps_every_clean_row_and_maps_ids_in_sorted_order(self, spark, tmp_path):
        path = tmp_path / "r.csv"
        path.write_text(CLEAN)
        loaded, ready = self.run(spark, input=str(path))
        assert loaded.counts["n_read"] == 72 and loaded.counts["n_rejected"] == 0
        assert ready.stats.n + ready.heldout.n == 72
        users = ready.users.ids.to_pylist()
        assert users == sorted(users) and len(users) == 12
        assert ready.front == ("spark-sql" if self.sql else self.front)

    def test_rejects_bad_rows_with_reasons_and_merges_repeats(self, spark, tmp_path):
        path = tmp_path / "bad.csv"
        path.write_text(BAD)
        loaded, ready = self.run(spark, ["split.test_fraction=0.01"], input=str(path))
        c = loaded.counts
        assert (c["n_read"], c["n_rejected"], c["n_duplicates_merged"]) == (8, 3, 1)
        reasons = [r[REASON] for r in _rows_of(loaded.rejected)]
        assert len(reasons) == 3 and all(reasons)
        merged = [r for u, i, r in _training_triples(ready)]
        assert 3.0 in merged  # u3's two ratings of m1, 2 and 4

    def test_the_split_depends_on_the_seed_alone(self, spark, tmp_path):
        path = tmp_path / "r.csv"
        path.write_text(CLEAN)
        held = [self.run(spark, [f"split.seed={seed}"], input=str(path))[1].heldout for seed in (1, 1, 2)]
        pairs = [sorted(zip(h.u.tolist(), h.i.tolist())) for h in held]
        assert pairs[0] == pairs[1] and pairs[0] != pairs[2]

    def test_a_parquet_folder_is_read_whole(self, spark, tmp_path):
        folder = tmp_path / "pq"
        folder.mkdir()
        for part in range(3):
            table = pa.table({"user": [f"a{part}", "b"], "item": [1, 2 + part], "rating": [1.0, 2.0]})
            pq.write_table(table, folder / f"part-{part}.parquet")
        loaded, ready = self.run(spark, input=str(folder))
        assert loaded.counts["n_read"] == 6
        assert ready.users.ids.to_pylist() == ["a0", "a1", "a2", "b"]

    def test_a_given_split_marks_users_unseen_in_train_cold(self, spark, tmp_path):
        (tmp_path / "train.csv").write_text("user,item,rating\n1,10,4\n2,10,3\n2,11,5\n")
        (tmp_path / "test.csv").write_text("user,item,rating\n1,11,2\n3,10,1\n")
        _, ready = self.run(spark, train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"))
        assert ready.heldout.n == 2 and ready.heldout.n_cold == 1
        assert ready.stats.n == 3

    def test_too_many_bad_rows_is_an_input_error_naming_the_file(self, spark, tmp_path):
        path = tmp_path / "worse.csv"
        path.write_text("user,item,rating\n1,1,x\n2,2,y\n3,3,4\n")
        with pytest.raises(InputError, match="worse.csv"):
            self.run(spark, ["data.max_bad_fraction=0.1"], input=str(path))

    @pytest.mark.parametrize("sep", [",", ";"])
    def test_gives_the_ready_of_every_other_front(self, spark, tmp_path, sep):
        path = tmp_path / "r.csv"
        path.write_text((CLEAN + BAD.split("\n", 1)[1].replace("userId,movieId,rating\n", "")).replace(",", sep))
        _, mine = self.run(spark, input=str(path))
        _, spark_ready = SqlFront.run(SqlFront(), spark, input=str(path))
        assert mine.users.ids.to_pylist() == spark_ready.users.ids.to_pylist()
        assert mine.items.ids.to_pylist() == spark_ready.items.ids.to_pylist()
        assert _training_triples(mine) == _training_triples(spark_ready)
        np.testing.assert_array_equal(np.sort(mine.heldout.r), np.sort(spark_ready.heldout.r))


class TestDriverFront(FrontContract):
    front = "driver"


class TestTaskFront(FrontContract):
    front = "spark"


class SqlFront(FrontContract):
    front = "spark"
    sql = True


class TestSqlFront(SqlFront):
    test_gives_the_ready_of_every_other_front = None  # it is the Ready the others are held to
