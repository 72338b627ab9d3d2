"""publish: the output layout, whole replacement, and a failure at any stage leaving DIR as it was."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality

from mf_spark.core.errors import FAIL_AT_ENV, InjectedFault, InputError
from mf_spark.core.types import Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel, load_model
from mf_spark.run.write import check_output, publish

STAGES = ["model", "recommendations", "rejected", "metrics", "swap"]
RECS_DDL = "user string, rank int, item bigint, score float"


def make_model(seed: int) -> FactorModel:
    g = np.random.default_rng(seed)
    X, Y = g.normal(size=(3, 2)).astype(np.float32), g.normal(size=(4, 2)).astype(np.float32)
    return FactorModel(
        "explicit",
        Factors(X, Y, g.normal(size=3).astype(np.float32), g.normal(size=4).astype(np.float32), 3.0 + seed),
        IdMap(pa.array(["u1", "u2", "u3"]), "user"),
        IdMap(pa.array([1, 2, 3, 4], pa.int64()), "item"),
        3.0 + seed,
        (1.0, 5.0),
        {"model": {"seed": seed}},
    )


def recs_rows(seed: int):
    return [("u1", 1, 2, 4.5 + seed), ("u1", 2, 4, 4.0 + seed), ("u2", 1, 1, 3.5 + seed)]


def metrics(seed: int):
    return {"rmse": 0.9 + seed, "k": 10, "history": [{"iteration": 1, "train_rmse": 1.0}], "seed": seed}


def rejected_df(spark):
    return spark.createDataFrame(
        [("u9", "x", "abc", "rating 'abc' is not a number")], "user string, item string, rating string, reason string"
    )


def visible(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith("."))


def snapshot(folder):
    """Every file under `folder` (hidden ones too) with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def assert_model_equal(a: FactorModel, b: FactorModel):
    assert b.factors.mu == a.factors.mu and b.global_mean == a.global_mean and b.config == a.config
    assert b.users.ids.equals(a.users.ids) and b.items.ids.equals(a.items.ids)
    np.testing.assert_array_equal(b.factors.X, a.factors.X)
    np.testing.assert_array_equal(b.factors.Y, a.factors.Y)
    np.testing.assert_array_equal(b.factors.user_bias, a.factors.user_bias)
    np.testing.assert_array_equal(b.factors.item_bias, a.factors.item_bias)


def do_publish(spark, out, seed, with_rejected):
    return publish(
        spark,
        str(out),
        make_model(seed),
        spark.createDataFrame(recs_rows(seed), RECS_DDL),
        metrics(seed),
        rejected_df(spark) if with_rejected else None,
        {"run": seed},
    )


@pytest.fixture(scope="module")
def previous(spark, tmp_path_factory):
    """A complete output of run 0 (with rejected rows), published once and copied by each test."""
    out = tmp_path_factory.mktemp("previous") / "out"
    do_publish(spark, out, 0, with_rejected=True)
    return out


def test_publish_into_a_new_folder(spark, tmp_path, previous):
    out = tmp_path / "out"
    got = do_publish(spark, out, 1, with_rejected=False)
    assert got.startswith("file:") and got.endswith(str(out))
    assert visible(out) == ["_SUCCESS", "factors", "metrics.json", "model.json", "recommendations"]
    assert visible(out / "factors") == ["items", "users"]
    assert json.loads((out / "metrics.json").read_text()) == metrics(1)
    meta = json.loads((out / "model.json").read_text())
    assert meta["run"] == 1 and meta["kind"] == "explicit" and meta["rank"] == 2
    assert_model_equal(make_model(1), load_model(str(out), spark))
    assert_df_equality(
        spark.read.parquet(str(out / "recommendations")),
        spark.createDataFrame(recs_rows(1), RECS_DDL),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging, lock or old folder left


def test_rejected_rows_are_published_when_given(spark, previous):
    assert visible(previous) == ["_SUCCESS", "factors", "metrics.json", "model.json", "recommendations", "rejected"]
    assert_df_equality(spark.read.parquet(str(previous / "rejected")), rejected_df(spark), ignore_nullable=True)


def test_publish_again_replaces_the_old_content_whole(spark, tmp_path, previous):
    out = tmp_path / "out"
    shutil.copytree(previous, out)
    (out / "stray.txt").write_text("left by someone")
    do_publish(spark, out, 2, with_rejected=False)
    assert visible(out) == ["_SUCCESS", "factors", "metrics.json", "model.json", "recommendations"]
    assert json.loads((out / "metrics.json").read_text()) == metrics(2)
    assert_model_equal(make_model(2), load_model(str(out), spark))
    assert sorted(r.score for r in spark.read.parquet(str(out / "recommendations")).collect()) == sorted(
        r[3] for r in recs_rows(2)
    )
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("stage", STAGES)
def test_failure_at_any_stage_leaves_the_previous_output(spark, tmp_path, monkeypatch, previous, stage):
    out = tmp_path / "out"
    shutil.copytree(previous, out)
    before = snapshot(out)
    monkeypatch.setenv(FAIL_AT_ENV, stage)
    with pytest.raises(InjectedFault, match=repr(stage)):
        do_publish(spark, out, 3, with_rejected=True)
    monkeypatch.delenv(FAIL_AT_ENV)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]  # staging and lock cleaned up
    assert_model_equal(make_model(0), load_model(str(out), spark))
    assert json.loads((out / "metrics.json").read_text()) == metrics(0)


@pytest.mark.parametrize("stage", ["recommendations", "swap"])
def test_failure_with_no_previous_output_leaves_nothing(spark, tmp_path, monkeypatch, stage):
    monkeypatch.setenv(FAIL_AT_ENV, stage)
    with pytest.raises(InjectedFault):
        do_publish(spark, tmp_path / "out", 4, with_rejected=False)
    assert os.listdir(tmp_path) == []


def test_check_output_on_a_file_raises(spark, tmp_path):
    f = tmp_path / "out"
    f.write_text("not a folder")
    with pytest.raises(InputError, match="exists and is a file") as info:
        check_output(spark, str(f))
    assert str(f) in str(info.value)
    with pytest.raises(InputError):
        do_publish(spark, f, 5, with_rejected=False)
    assert f.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["out"]


def test_check_output_qualifies_new_and_existing_folders(spark, tmp_path):
    new = check_output(spark, str(tmp_path / "new") + "/")
    assert new.startswith("file:") and new.endswith(str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    assert check_output(spark, str(tmp_path)).endswith(str(tmp_path))
