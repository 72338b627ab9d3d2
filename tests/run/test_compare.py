"""jobs/compare.py: every method on one split, the table's contract, and what the baselines show."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import planted

from jobs import compare as compare_job
from mf_spark.run.compare import COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    u, i, r, _ = planted(n_users=60, n_items=40, rank=3, density=0.5, noise=0.2, seed=9)
    g = np.random.default_rng(1)
    r = np.clip(np.round(r + g.normal(size=60)[u] + 0.5 * g.normal(size=40)[i]), 1, 5)
    path = tmp_path_factory.mktemp("cmp") / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{a},i{b},{c:g}\n" for a, b, c in zip(u, i, r)))
    return str(path)


def test_explicit_comparison_writes_every_method_and_shows_what_the_baselines_miss(spark, ratings, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        compare_job.main(
            [
                "--input",
                ratings,
                "--output",
                str(out),
                "--set",
                "model.iterations=5",
                "--set",
                "model.rank=3",
                "--set",
                "model.reg=0.05",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    table = spark.read.parquet(str(out / "comparison.parquet")).toPandas().set_index("method")
    assert list(table.columns) == list(COLUMNS[1:])
    assert list(table.index) == ["popularity", "biases", "svd", "sgd", "als", "als_biases", "nmf"]
    assert np.isnan(table.loc["popularity", "rmse"]) and table["rmse"].drop("popularity").notna().all()
    assert table.loc["als_biases", "rmse"] < table.loc["biases", "rmse"] < table.loc["svd", "rmse"]
    assert (table["fit_seconds"] >= 0).all() and table["ndcg_at_k"].between(0, 1).all()
    assert (out / "comparison.txt").read_text() in printed and (out / "_SUCCESS").exists()
    page = (out / "report.html").read_text()
    assert ">Method comparison</h2>" in page and ">Data</h2>" in page and "als_biases" in page


def test_implicit_comparison_has_the_w0_rows_and_unknown_methods_are_refused(spark, ratings, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        compare_job.main(
            [
                "--input",
                ratings,
                "--output",
                str(out),
                "--set",
                "model.kind=implicit",
                "--set",
                "model.iterations=3",
                "--set",
                "model.rank=3",
                "--methods",
                "popularity,svd,als,wals_w0_0.1",
            ]
        )
        == 0
    )
    table = spark.read.parquet(str(out / "comparison.parquet")).toPandas()
    assert list(table["method"]) == ["popularity", "svd", "als", "wals_w0_0.1"] and table["rmse"].isna().all()
    capsys.readouterr()
    assert compare_job.main(["--input", ratings, "--output", str(out), "--methods", "als,magic"]) == 2
    assert "--methods: unknown for explicit data: magic" in capsys.readouterr().err
