"""jobs/recommend.py: --history fold-in, --include / --exclude candidate lists, --audiences."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from conftest import frame

from jobs import recommend as recommend_job
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel, load_model

USERS = ["ann", "bob", "cyd", "dee"]
ITEMS = [10, 20, 30, 40, 50, 60, 70]


@pytest.fixture(scope="module")
def model_dir(spark, tmp_path_factory):
    g = np.random.default_rng(5)
    f = Factors(
        g.normal(size=(4, 3)).astype(np.float32),
        g.normal(size=(7, 3)).astype(np.float32),
        g.normal(scale=0.3, size=4).astype(np.float32),
        g.normal(scale=0.3, size=7).astype(np.float32),
        3.0,
    )
    model = FactorModel(
        "explicit",
        f,
        IdMap(pa.array(USERS), "users"),
        IdMap(pa.array(ITEMS, pa.int64()), "items"),
        3.0,
        (1.0, 5.0),
        {"model": {"rank": 3, "biases": True, "reg": 0.1}},
    )
    path = tmp_path_factory.mktemp("recjob") / "model"
    model.save(str(path), spark)
    return path


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run(args):
    assert recommend_job.main([str(a) for a in args]) == 0


def rows(df, cols):
    return [tuple(r) for r in df.orderBy(*cols[:2]).select(*cols).collect()]


def test_history_users_are_folded_in_and_their_items_excluded(spark, model_dir, tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("user,item,rating\nann,10,5\nann,20,1\nzed,30,4\nzed,40,5\nzed,999,3\n")
    out = tmp_path / "out"
    run(["--model", model_dir, "--output", out, "--history", history, "--n", 3])
    got = spark.read.parquet(str(out / "recommendations"))
    model = load_model(str(model_dir), spark)
    hist = frame(
        spark,
        [("ann", 10, 5.0), ("ann", 20, 1.0), ("zed", 30, 4.0), ("zed", 40, 5.0)],
        "user string, item long, rating double",
    )
    want = model.fold_in(hist).recommend(None, 3, seen=hist)
    assert_df_equality(
        got.orderBy("user", "rank"), want.orderBy("user", "rank"), ignore_nullable=True, allow_nan_equality=True
    )
    assert {r["user"] for r in got.collect()} == {"ann", "zed"}
    assert not {(r["user"], r["item"]) for r in got.collect()} & {("ann", 10), ("ann", 20), ("zed", 30), ("zed", 40)}


def test_include_and_exclude_files_restrict_the_candidates(spark, model_dir, tmp_path):
    include = write_lines(tmp_path / "in_stock.txt", ["item", "10", "20", "30", "40", "12345"])
    exclude = tmp_path / "banned.csv"
    exclude.write_text("item,why\n20,recall\n")
    seen = tmp_path / "seen.csv"
    seen.write_text("user,item,rating\nbob,10,4\n")
    out = tmp_path / "out"
    run(["--model", model_dir, "--output", out, "--n", 5, "--include", include, "--exclude", exclude, "--seen", seen])
    got = spark.read.parquet(str(out / "recommendations"))
    model = load_model(str(model_dir), spark)
    want = model.recommend(None, 5, seen=frame(spark, [("bob", 10)], "user string, item long"), include=[10, 30, 40])
    assert rows(got, ["user", "rank", "item"]) == rows(want, ["user", "rank", "item"])
    assert {r["item"] for r in got.collect()} <= {10, 30, 40}
    assert ("bob", 10) not in {(r["user"], r["item"]) for r in got.collect()}


def test_audiences_for_listed_items(spark, model_dir, tmp_path):
    items = write_lines(tmp_path / "items.txt", ["30", "70"])
    out = tmp_path / "out"
    run(["--model", model_dir, "--output", out, "--audiences", "--items", items, "--n", 2])
    got = spark.read.parquet(str(out / "audiences"))
    assert got.columns == ["item", "rank", "user", "score"]
    f = load_model(str(model_dir), spark).factors
    S = 3.0 + f.user_bias[:, None] + f.item_bias[None, :] + f.X @ f.Y.T
    want = [(ITEMS[i], k + 1, USERS[u]) for i in (2, 6) for k, u in enumerate(np.argsort(-S[:, i], kind="stable")[:2])]
    assert rows(got, ["item", "rank", "user"]) == want


def test_recommend_job_refuses_mixed_flags(spark, model_dir, tmp_path, capsys):
    users = write_lines(tmp_path / "u.txt", ["ann"])
    base = ["--model", str(model_dir), "--output", str(tmp_path / "o")]
    assert recommend_job.main(base + ["--users", users, "--history", users]) == 2
    assert recommend_job.main(base + ["--items", users]) == 2
    assert "--items goes with --audiences" in capsys.readouterr().err
    assert recommend_job.main(base + ["--audiences", "--include", users]) == 2
    assert recommend_job.main(base + ["--include", str(tmp_path / "missing.txt")]) == 2
    assert "--include" in capsys.readouterr().err.strip().splitlines()[-1]
