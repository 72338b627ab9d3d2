"""Bad input through the train job, one row of the table each: exit 2 with a message naming the file,
row or key and the problem, or the rows quarantined in rejected/ with a reason and counted in
metrics.json. Never a silent wrong model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import train as train_job

pytestmark = pytest.mark.slow

FAST = ["--set", "model.iterations=2", "--set", "model.rank=3", "--set", "eval.every_iteration=false"]


def good_lines(n_users=20, n_items=10, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{u},{i},{rng.integers(1, 6)}" for u in range(n_users) for i in range(n_items) if rng.random() < 0.7]


def write(path: Path, lines: list[str], header: str = "user,item,rating") -> Path:
    path.write_text("\n".join(([header] if header else []) + lines) + "\n")
    return path


def run(tmp_path, *args) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    code = train_job.main([*FAST, *args, "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text()) if code == 0 else None
    return code, metrics


def rejected_reasons(spark, tmp_path) -> dict[str, int]:
    rows = spark.read.parquet(str(tmp_path / "out" / "rejected")).groupBy("reason").count().collect()
    return {r["reason"]: r["count"] for r in rows}


# ---- exit 2, the message names the problem ---------------------------------------------------------
@pytest.mark.parametrize(
    "name,content,extra,needles",
    [
        ("empty file", "", [], ["empty.csv", "empty"]),
        ("header only", "user,item,rating\n", [], ["header only", "no data rows"]),
        ("wrong delimiter", "user::item::rating\n1::2::3\n4::5::1\n", [], ["1 column", "separated by '::'"]),
        ("missing rating column", "user,item\n1,2\n3,4\n", [], ["rating"]),
        (
            "named column absent",
            "user,item,rating\n1,2,3\n",
            ["--set", "data.rating_col=stars"],
            ["stars", "not found"],
        ),
    ],
)
def test_unusable_files_exit_2(tmp_path, capsys, name, content, extra, needles):
    path = tmp_path / ("empty.csv" if name == "empty file" else "ratings.csv")
    path.write_text(content)
    code, _ = run(tmp_path, "--input", str(path), *extra)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert str(path.name) in err
    for needle in needles:
        assert needle in err, err[-2000:]


def test_missing_path_exits_2(tmp_path, capsys):
    code, _ = run(tmp_path, "--input", str(tmp_path / "nowhere" / "ratings.csv"))
    err = capsys.readouterr().err
    assert code == 2 and "nowhere/ratings.csv" in err and "does not exist" in err


def test_parquet_with_the_wrong_schema_exits_2(tmp_path, capsys):
    pq.write_table(pa.table({"who": [1, 2], "what": [3, 4]}), tmp_path / "r.parquet")
    code, _ = run(tmp_path, "--input", str(tmp_path / "r.parquet"))
    err = capsys.readouterr().err
    assert code == 2 and "r.parquet" in err and "column" in err, err[-2000:]


def test_a_file_that_is_not_parquet_exits_2(tmp_path, capsys):
    (tmp_path / "r.parquet").write_bytes(b"PAR1 this is not parquet at all")
    code, _ = run(tmp_path, "--input", str(tmp_path / "r.parquet"))
    err = capsys.readouterr().err
    assert code == 2 and "r.parquet" in err, err[-2000:]


def test_duplicates_under_the_error_policy_exit_2_naming_a_pair(tmp_path, capsys):
    lines = good_lines()
    path = write(tmp_path / "r.csv", lines + [lines[0]])
    code, _ = run(tmp_path, "--input", str(path), "--set", "data.duplicates=error")
    err = capsys.readouterr().err
    user, item, _ = lines[0].split(",")
    assert code == 2 and "duplicate" in err and user in err and item in err, err[-2000:]


@pytest.mark.parametrize(
    "setting,key",
    [
        ("model.rank=0", "model.rank"),
        ("model.reg=-0.1", "model.reg"),
        ("model.iterations=0", "model.iterations"),
        ("split.test_fraction=0", "split.test_fraction"),
        ("split.test_fraction=1", "split.test_fraction"),
        ("model.rank=ten", "model.rank"),
        ("model.nope=1", "model.nope"),
        ("data.delimiter=1", "data.delimiter"),
    ],
)
def test_bad_config_values_exit_2_naming_the_key(tmp_path, capsys, setting, key):
    path = write(tmp_path / "r.csv", good_lines())
    code, _ = run(tmp_path, "--input", str(path), "--set", setting)
    err = capsys.readouterr().err
    assert code == 2 and key in err, err[-2000:]


def test_an_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    path = write(tmp_path / "r.csv", good_lines())
    (tmp_path / "out").write_text("not a folder")
    assert train_job.main(["--input", str(path), "--output", str(tmp_path / "out"), *FAST]) == 2
    assert "is a file" in capsys.readouterr().err


# ---- quarantined in rejected/, counted in metrics.json ---------------------------------------------
@pytest.mark.parametrize(
    "bad,reason",
    [
        ("7,3,four", "rating is not a number"),
        ("7,3,NaN", "rating is NaN"),
        ("7,3,inf", "rating is infinite"),
        ("7,3,4e38", "rating is beyond float32's range"),
        ("7,3,", "missing rating"),
        (",3,4", "missing user ID"),
        ("7,,4", "missing item ID"),
    ],
)
def test_bad_rows_are_quarantined_with_a_reason(spark, tmp_path, bad, reason):
    lines = good_lines()
    path = write(tmp_path / "r.csv", lines + [bad])
    code, m = run(tmp_path, "--input", str(path))
    assert code == 0
    assert m["n_rejected"] == 1 and m["n_read"] == len(lines) + 1
    assert m["n_read"] == m["n_train"] + m["n_test"] + m["n_rejected"] + m["n_dropped"] + m["n_duplicates_merged"]
    assert rejected_reasons(spark, tmp_path) == {reason: 1}


def test_too_many_bad_rows_exit_2(tmp_path, capsys):
    lines = good_lines()
    path = write(tmp_path / "r.csv", lines + [f"{u},1,bad" for u in range(len(lines))])
    code, _ = run(tmp_path, "--input", str(path))
    err = capsys.readouterr().err
    assert code == 2 and "r.csv" in err and "max_bad_fraction" in err, err[-2000:]


def test_implicit_nonpositive_counts_are_quarantined(spark, tmp_path):
    lines = [line.rsplit(",", 1)[0] + ",3" for line in good_lines()]
    path = write(tmp_path / "r.csv", lines + ["1,2,0", "2,3,-4"])
    code, _ = run(tmp_path, "--input", str(path), "--set", "model.kind=implicit")
    assert code == 2  # 2 of ~130 rows is over data.max_bad_fraction = 1%
    code, m = run(tmp_path, "--input", str(path), "--set", "model.kind=implicit", "--set", "data.max_bad_fraction=0.05")
    assert code == 0 and m["n_rejected"] == 2
    assert sum(rejected_reasons(spark, tmp_path).values()) == 2


# ---- accepted as they are: the outcome is a model, with the numbers to show it -------------------------
def test_extra_columns_are_ignored(tmp_path):
    lines = [line + ",x,1.5" for line in good_lines()]
    code, m = run(tmp_path, "--input", str(write(tmp_path / "r.csv", lines, "user,item,rating,note,weight")))
    assert code == 0 and m["n_rejected"] == 0 and m["n_read"] == len(lines)


def test_negative_and_large_explicit_ratings_are_kept(tmp_path):
    """Explicit scales are the user's: no range is assumed, predictions are clipped to the one seen."""
    lines = good_lines() + ["30,4,-2", "31,5,250"]
    code, m = run(tmp_path, "--input", str(write(tmp_path / "r.csv", lines)))
    assert code == 0 and m["n_rejected"] == 0 and m["n_train"] + m["n_test"] == len(lines)


def test_ids_beyond_int32_and_mixed_id_types_keep_their_values(spark, tmp_path):
    lines = [f"{int(u) + 2**40},item{i},{r}" for u, i, r in (line.split(",") for line in good_lines())]
    lines += ["alice,item1,4", "42,item2,3"]
    code, m = run(tmp_path, "--input", str(write(tmp_path / "r.csv", lines)))
    assert code == 0 and m["n_rejected"] == 0
    ids = {r["id"] for r in spark.read.parquet(str(tmp_path / "out" / "factors" / "users")).collect()}
    assert str(2**40) in {str(x) for x in ids} and "alice" in {str(x) for x in ids}


@pytest.mark.parametrize("policy,merged", [("last", 1), ("mean", 1), ("sum", 1)])
def test_duplicates_are_merged_and_counted(tmp_path, policy, merged):
    lines = good_lines()
    code, m = run(
        tmp_path, "--input", str(write(tmp_path / "r.csv", lines + [lines[0]])), "--set", f"data.duplicates={policy}"
    )
    assert code == 0 and m["n_duplicates_merged"] == merged and m["n_read"] == len(lines) + 1


@pytest.mark.parametrize(
    "lines",
    [
        [f"1,{i},{(i % 5) + 1}" for i in range(30)],  # one user
        [f"{u},1,{(u % 5) + 1}" for u in range(30)],  # one item
        [f"{u},{i},4" for u in range(10) for i in range(6)],
    ],
)  # all identical
def test_degenerate_matrices_train(tmp_path, lines):
    code, m = run(tmp_path, "--input", str(write(tmp_path / "r.csv", lines)))
    assert code == 0 and np.isfinite(m["rmse"] if m["rmse"] is not None else 0.0)
    if len({line.rsplit(",", 1)[1] for line in lines}) == 1:
        assert m["rmse"] < 1e-3  # every rating 4: the model predicts 4


def test_a_user_with_only_test_ratings_is_cold(tmp_path):
    lines = good_lines()
    write(tmp_path / "train.csv", lines)
    write(tmp_path / "test.csv", lines[:5] + ["newcomer,1,4", "newcomer,2,5"])
    code, m = run(tmp_path, "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"))
    assert code == 0 and m["n_test"] == 7 and m["n_test_cold"] == 2


def test_ratings_that_overflow_float32_arithmetic_fail_the_fit_and_publish_nothing(tmp_path, capsys):
    """Ratings near 1e19 square past float32's range: the fit stops at the first iteration with
    non-finite factors, exit 1, a message naming the iteration and the cause; no output folder."""
    path = tmp_path / "huge.csv"
    path.write_text(
        "user,item,rating\n"
        + "".join(f"u{u},i{i},{1e19 * (1 + (u + i) % 3)}\n" for u in range(30) for i in range(12) if (u + i) % 4)
    )
    code, _ = run(tmp_path, "--input", str(path))
    err = capsys.readouterr().err
    assert code == 1 and "diverged at iteration 1" in err and "float32" in err, err[-2000:]
    assert not (tmp_path / "out").exists()


def test_metrics_json_is_strict_json(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        "user,item,rating\n" + "".join(f"u{u},i{i},{1 + (u * i) % 5}\n" for u in range(25) for i in range(10))
    )
    code, _ = run(tmp_path, "--input", str(path))
    assert code == 0

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=refuse)
    json.loads((tmp_path / "out" / "model.json").read_text(), parse_constant=refuse)
