"""Warm starts (--init-model) and candidate lists (--include / --exclude) in the train job."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import planted

from jobs import train as train_job
from mf_spark import load_model
from mf_spark.als import loop as als
from mf_spark.core.config import ModelConfig
from mf_spark.core.errors import InputError
from mf_spark.data.index import IdMap
from mf_spark.model import warm

pytestmark = pytest.mark.slow


def write_ratings(path, u, i, r):
    path.write_text("user,item,rating\n" + "".join(f"u{a},i{b},{c:.3f}\n" for a, b, c in zip(u, i, r)))
    return str(path)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1: 95% of a planted data set; day 2: all of it (new users and items among the rest)."""
    root = tmp_path_factory.mktemp("days")
    u, i, r, _ = planted(n_users=70, n_items=45, rank=4, density=0.5, noise=0.1, seed=21)
    later = (np.random.default_rng(2).random(u.size) < 0.05) | (u >= 67) | (i >= 43)
    day1 = write_ratings(root / "day1.csv", u[~later], i[~later], r[~later])
    day2 = write_ratings(root / "day2.csv", u, i, r)
    model = root / "day1_model"
    assert (
        train_job.main(
            [
                "--input",
                day1,
                "--output",
                str(model),
                "--set",
                "model.rank=4",
                "--set",
                "model.iterations=8",
                "--set",
                "model.reg=0.02",
            ]
        )
        == 0
    )
    return root, day2, model


def history(out):
    return [h["test_rmse"] for h in json.loads((out / "metrics.json").read_text())["history"]]


def test_a_warm_start_begins_where_the_saved_model_ended(days):
    root, day2, model = days
    common = ["--input", day2, "--set", "model.rank=4", "--set", "model.iterations=2", "--set", "model.reg=0.02"]
    assert train_job.main([*common, "--output", str(root / "cold")]) == 0
    assert train_job.main([*common, "--output", str(root / "warm"), "--init-model", str(model)]) == 0
    cold, warm = history(root / "cold"), history(root / "warm")
    assert warm[0] < cold[0], (warm, cold)
    assert load_model(str(root / "warm")).users.size == 70  # new users have factors too


def test_warm_factors_match_ids_and_seed_new_ones():
    cfg = ModelConfig(rank=2, seed=3, biases=True)
    old = als.seeded_factors(cfg, 3, 2)
    from mf_spark.core.types import Factors
    from mf_spark.model.factors import FactorModel

    prev = FactorModel(
        "explicit",
        Factors(old.X + 5, old.Y + 7, np.array([1, 2, 3], np.float32), np.array([4, 5], np.float32), 3.0),
        IdMap(pa.array(["a", "b", "c"]), "users"),
        IdMap(pa.array([10, 20], pa.int64()), "items"),
        3.0,
        None,
    )
    users, items = IdMap(pa.array(["b", "c", "new"]), "users"), IdMap(pa.array([5, 20], pa.int64()), "items")
    start = warm.warm_factors(prev, users, items, cfg)
    seeded = als.seeded_factors(cfg, 3, 2)
    np.testing.assert_array_equal(start.X, np.stack([old.X[1] + 5, old.X[2] + 5, seeded.X[2]]))
    np.testing.assert_array_equal(start.Y, np.stack([seeded.Y[0], old.Y[1] + 7]))
    np.testing.assert_array_equal(start.user_bias, [2, 3, 0])
    np.testing.assert_array_equal(start.item_bias, [0, 5])
    with pytest.raises(InputError, match="the model's rank is 2, this run's model.rank is 3"):
        warm.warm_factors(prev, users, items, ModelConfig(rank=3))


def test_a_changed_rank_is_refused_before_the_input_is_read(days, tmp_path, capsys):
    _, _, model = days
    code = train_job.main(
        [
            "--input",
            str(tmp_path / "not-there.csv"),
            "--output",
            str(tmp_path / "o"),
            "--init-model",
            str(model),
            "--set",
            "model.rank=6",
        ]
    )
    assert code == 2
    assert "a warm start needs the same rank" in capsys.readouterr().err.strip().splitlines()[-1]


def test_include_and_exclude_lists_filter_the_train_jobs_recommendations(days, tmp_path, spark):
    _, day2, _ = days
    lines = open(day2).read().splitlines()
    header, rows = lines[0], lines[1:]
    (tmp_path / "train.csv").write_text("\n".join([header] + rows[::3] + rows[1::3]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([header] + rows[2::3]) + "\n")
    (tmp_path / "in.txt").write_text("\n".join(f"i{n}" for n in range(0, 45, 2)) + "\n")
    (tmp_path / "out.csv").write_text("item,reason\ni0,recall\ni2,recall\n")
    out = tmp_path / "run"
    assert (
        train_job.main(
            [
                "--train",
                str(tmp_path / "train.csv"),
                "--test",
                str(tmp_path / "test.csv"),
                "--output",
                str(out),
                "--set",
                "model.rank=4",
                "--set",
                "model.iterations=2",
                "--include",
                str(tmp_path / "in.txt"),
                "--exclude",
                str(tmp_path / "out.csv"),
            ]
        )
        == 0
    )
    recs = spark.read.parquet(str(out / "recommendations")).toPandas()
    assert set(recs["item"]) <= {f"i{n}" for n in range(4, 45, 2)} and recs["user"].nunique() == 70
    trained = {tuple(line.split(",")[:2]) for line in rows[::3] + rows[1::3]}
    assert not any((u, i) in trained for u, i in zip(recs["user"], recs["item"]))
    assert recs.groupby("user").size().min() >= 21 - 15 and recs.groupby("user")["rank"].max().max() == 10
