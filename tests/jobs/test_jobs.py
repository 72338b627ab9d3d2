"""The train job end to end: contracted layout, metrics accounting, exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import train as train_job
from mf_spark import load_model
from mf_spark.data import read

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = {"factors", "recommendations", "metrics.json", "model.json", "report.html", "_SUCCESS"}
METRIC_KEYS = {
    "rmse",
    "mae",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "map_at_k",
    "k",
    "n_train",
    "n_test",
    "fit_seconds",
    "history",
    "config",
    "versions",
}


def run_job(args, **env):
    e = dict(os.environ, PYSPARK_PYTHON=sys.executable, **env)
    return subprocess.run(
        [sys.executable, "-m", "jobs.train", *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """One real `python -m jobs.train` run on the sample shipped with pyspark."""
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_job(["--output", str(out), "--set", "model.iterations=4", "--set", "spark.spark.ui.enabled=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_writes_exactly_the_contracted_layout(demo_output):
    out, proc = demo_output
    assert {p.name for p in out.iterdir()} == LAYOUT
    assert {p.name for p in (out / "factors").iterdir()} == {"users", "items"}
    assert "held-out RMSE:" in proc.stdout and str(out) in proc.stdout
    assert proc.stderr.count("mf_spark: iteration") == 4
    assert not list(out.parent.glob(".out_*")), "staging, lock or checkpoint folders left behind"


def test_demo_metrics_account_for_every_row(demo_output):
    out, _ = demo_output
    m = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    n_lines = sum(1 for line in open(read.sample_path()) if line.strip())
    assert m["n_read"] == n_lines
    assert m["n_read"] == m["n_train"] + m["n_test"] + m["n_rejected"] + m["n_dropped"] + m["n_duplicates_merged"]
    assert 0.5 < m["rmse"] < 1.6 and 0.3 < m["mae"] < m["rmse"]
    assert [h["iteration"] for h in m["history"]] == [1, 2, 3, 4]
    assert all(set(h) >= {"iteration", "train_rmse", "test_rmse", "loss", "seconds"} for h in m["history"])
    assert m["config"]["model"]["iterations"] == 4
    assert m["precision_at_k"] is None or 0 <= m["precision_at_k"] <= 1


PHASES = ["session", "read_validate", "split_index", "evaluation_setup", "fit", "evaluate", "recommend_write"]


def test_demo_metrics_time_every_phase(demo_output):
    out, proc = demo_output
    m = json.loads((out / "metrics.json").read_text())
    timings = m["timings"]
    assert list(timings) == PHASES + ["other", "total"]
    assert all(v >= 0 for v in timings.values())
    phases = sum(timings[p] for p in PHASES)
    assert phases <= timings["total"] and phases >= 0.9 * timings["total"]
    jobs = m["spark_jobs"]
    assert list(jobs) == PHASES and jobs["session"] == 0
    # The demo's few ratings are read, checked, fitted and written by the driver: the fit runs no Spark job.
    assert jobs["fit"] == 0 and m["front_end"] == "driver" and m["exchange"] == "driver"
    for p in PHASES:  # one log line per phase, with its time and job count
        assert f"mf_spark: phase {p}: " in proc.stderr


def test_demo_outputs_load_and_agree(spark, demo_output):
    out, _ = demo_output
    model = load_model(str(out), spark)
    recs = spark.read.parquet(str(out / "recommendations")).toPandas()
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert recs.groupby("user")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert recs["user"].nunique() == model.users.size
    users = spark.read.parquet(str(out / "factors" / "users"))
    assert users.columns == ["id", "factors"]  # no bias column without biases
    # a recommendation's score is the model's prediction for that pair
    sample = recs.head(20)
    pred = model.predict(spark.createDataFrame(sample[["user", "item"]])).toPandas()
    merged = sample.merge(pred, on=["user", "item"])
    np.testing.assert_allclose(merged["score"], merged["prediction"], rtol=1e-4, atol=1e-4)


def test_train_test_flags_and_string_ids(spark, tmp_path):
    rng = np.random.default_rng(0)
    lines = ["user,item,rating"] + [
        f"u{u},i{i},{rng.integers(1, 6)}" for u in range(25) for i in range(12) if rng.random() < 0.6
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines[:-20]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([lines[0], *lines[-20:], "u_new,i1,3"]) + "\n")
    out = tmp_path / "out"
    code = train_job.main(
        [
            "--train",
            str(tmp_path / "train.csv"),
            "--test",
            str(tmp_path / "test.csv"),
            "--output",
            str(out),
            "--set",
            "model.iterations=2",
            "--set",
            "model.biases=true",
        ]
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 21 and m["n_test_cold"] >= 1
    users = spark.read.parquet(str(out / "factors" / "users"))
    assert users.columns == ["id", "bias", "factors"]
    assert users.schema["id"].dataType.typeName() == "string"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--input", "x.csv"], "--output is required"),
        (["--input", "x", "--train", "a", "--test", "b", "--output", "o"], "either --input"),
        (["--train", "a", "--output", "o"], "go together"),
        (["--bogus"], "unrecognized"),
        (["--output", "o", "--set", "model.rank=0"], "model.rank"),
        (["--output", "o", "--set", "model.nope=1"], "model.nope"),
        (["--output", "o", "--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_bad_arguments_and_config_exit_2(argv, needle, capsys):
    assert train_job.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_bad_input_exits_2(spark, tmp_path, capsys):
    assert train_job.main(["--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert train_job.main(["--output", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_failure_while_writing_exits_1_and_keeps_previous_output(spark, demo_output, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert train_job.main(["--output", str(out), "--set", "model.iterations=1"]) == 0
    before = (out / "metrics.json").read_text()
    monkeypatch.setenv("MF_SPARK_FAIL_AT", "recommendations")
    assert train_job.main(["--output", str(out), "--set", "model.iterations=2"]) == 1
    assert "injected failure" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before and (out / "_SUCCESS").exists()


def write_counts(path, rng, n_users=40, n_items=30):
    """Implicit play counts with a planted two-group structure."""
    lines = ["user_id,item_id,plays"]
    for u in range(n_users):
        group = u % 2
        for i in range(n_items):
            if (i % 2 == group and rng.random() < 0.5) or rng.random() < 0.05:
                lines.append(f"user{u},track{i},{int(rng.integers(1, 50))}")
    path.write_text("\n".join(lines) + "\n")


def test_implicit_run_and_recommend_job(spark, tmp_path, capsys):
    from jobs import recommend as recommend_job

    rng = np.random.default_rng(3)
    data = tmp_path / "plays.csv"
    write_counts(data, rng)
    out = tmp_path / "out"
    code = train_job.main(
        [
            "--input",
            str(data),
            "--output",
            str(out),
            "--config",
            str(ROOT / "conf" / "implicit.toml"),
            "--set",
            "model.iterations=4",
            "--set",
            "model.rank=4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["rmse"] is None and m["mae"] is None
    assert m["ndcg_at_k"] > 0.3  # the planted groups are easy to find
    assert all(h["ndcg_at_k"] is not None and h["train_rmse"] is None for h in m["history"])
    assert json.loads((out / "model.json").read_text())["kind"] == "implicit"
    # recommend for a listed subset, one unknown user, excluding what they played
    users = tmp_path / "users.txt"
    users.write_text("user_id\nuser1\nuser2\nnobody\n")
    recs_out = tmp_path / "recs"
    code = recommend_job.main(
        [
            "--model",
            str(out),
            "--output",
            str(recs_out),
            "--users",
            str(users),
            "--user-col",
            "user_id",
            "--n",
            "3",
            "--seen",
            str(data),
        ]
    )
    assert code == 0, capsys.readouterr().err
    recs = spark.read.parquet(str(recs_out / "recommendations")).toPandas()
    assert sorted(recs["user"].unique()) == ["user1", "user2"]
    assert (recs.groupby("user").size() == 3).all()
    played = {tuple(line.split(",")[:2]) for line in data.read_text().splitlines()[1:]}
    assert not any((u, i) in played for u, i in zip(recs["user"], recs["item"]))
    assert (recs_out / "_SUCCESS").exists()


def test_recommend_job_errors(tmp_path, capsys):
    from jobs import recommend as recommend_job

    assert recommend_job.main(["--model", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert "model.json" in capsys.readouterr().err
    assert recommend_job.main(["--output", "o"]) == 2


def test_spark_submit_runs_the_job_file(tmp_path):
    """The contract: `spark-submit jobs/train.py ...` works as well as `python -m jobs.train`."""
    submit = Path(sys.executable).parent / "spark-submit"
    if not submit.exists():
        import pyspark

        submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    out = tmp_path / "out"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            str(ROOT / "jobs" / "train.py"),
            "--output",
            str(out),
            "--set",
            "model.iterations=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "_SUCCESS").exists() and "held-out RMSE" in proc.stdout


def test_with_spark_authentication_and_encryption_the_factors_never_use_the_plaintext_stream(tmp_path):
    out = tmp_path / "out"
    proc = run_job(
        [
            "--output",
            str(out),
            "--set",
            "model.iterations=2",
            "--set",
            "spark.spark.authenticate=true",
            "--set",
            "spark.spark.authenticate.secret=t0ps3cret",
            "--set",
            "spark.spark.network.crypto.enabled=true",
            "--set",
            "spark.spark.ui.enabled=false",
            "--set",
            "model.driver_max_ratings=0",  # else the driver fits the few ratings itself: nothing travels
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["exchange"] == "jobs"


def console(name: str) -> str:
    """The console entry point pyproject.toml declares, as installed next to this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e . installs it)")
    return str(path)


LOG_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) mf_spark: "


def test_console_entry_points_are_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "mf-spark-train": "jobs.train:main",
        "mf-spark-recommend": "jobs.recommend:main",
        "mf-spark-similar": "jobs.similar:main",
        "mf-spark-compare": "jobs.compare:main",
        "mf-spark-tune": "jobs.tune:main",
    }


@pytest.mark.parametrize("fail_at,code,needle", [(None, 2, "missing.csv"), ("recommendations", 1, "injected failure")])
def test_a_failing_jobs_last_line_is_its_error_and_log_lines_carry_time_and_level(tmp_path, fail_at, code, needle):
    """py4j's own log lines (its "Closing down clientserver connection" at exit) must not follow the error."""
    import re

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    args = ["--input", str(tmp_path / "missing.csv")] if fail_at is None else ["--set", "model.iterations=1"]
    if fail_at:
        env["MF_SPARK_FAIL_AT"] = fail_at
    proc = subprocess.run(
        [console("mf-spark-train"), *args, "--output", str(tmp_path / "o"), "--set", "spark.spark.ui.enabled=false"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(LOG_LINE.replace("(INFO|WARNING|ERROR)", "ERROR"), last) and needle in last, proc.stderr[-2000:]
    assert "Closing down clientserver" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if " mf_spark: " in line]
    assert ours and all(re.match(LOG_LINE, line) for line in ours), ours


def test_past_driver_rows_the_jobs_metrics_come_from_every_held_out_row(tmp_path):
    """The executors' front end with more held-out rows than eval.driver_rows: the train job reports
    the metrics of the driver holding every row; only the per-iteration history reads a sample of
    users (the compare job's: tests/test_evaluate.py)."""
    common = ["--set", "data.front_end=spark", "--set", "model.iterations=3", "--set", "model.rank=4"]
    got = {}
    for name, more in (
        ("whole", []),
        ("sample", ["--set", "eval.driver_rows=100"]),
    ):
        out = tmp_path / name
        assert train_job.main(["--output", str(out), *common, *more]) == 0
        got[name] = json.loads((out / "metrics.json").read_text())
    keys = ("rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage", "n_test")
    for key in (*keys, "n_test_cold", "n_users_evaluated"):
        assert got["sample"][key] == pytest.approx(got["whole"][key], rel=1e-6), key
    assert got["whole"]["n_test"] > 100
    assert got["whole"]["n_test_history"] == got["whole"]["n_test"] > got["sample"]["n_test_history"] > 0
