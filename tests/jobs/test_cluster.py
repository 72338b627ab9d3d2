"""A real standalone cluster on 127.0.0.1 (a master and two one-core workers from the pyspark package):
spark-submit of jobs/train.py with the packaged zip gives the factors and recommendations of a
local run with the same seed, even with an executor killed in the middle of the fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mf_spark import load_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import standalone  # noqa: E402  (scripts/standalone.py: the cluster the benchmark starts too)

# A checkpoint every iteration keeps the run long enough to kill an executor in the middle of it.
ARGS = [
    "--set",
    "model.iterations=8",
    "--set",
    "model.rank=4",
    "--set",
    "model.checkpoint_interval=1",
    "--set",
    "spark.spark.ui.enabled=false",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:PORT with two workers (1 core, 1 GB each); every process stopped by PID."""
    with standalone.cluster(2, 1, "1g", tmp_path_factory.mktemp("cluster"), sys.executable) as running:
        yield running


def _executors() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _env() -> dict:
    return dict(
        os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1"
    )


def _submit(master: str, job_args: list[str]) -> list[str]:
    return [
        str(standalone.spark_bin("spark-submit")),
        "--master",
        master,
        "--py-files",
        str(ROOT / "dist" / "mf_spark.zip"),
        "--conf",
        "spark.executor.memory=512m",
        "--conf",
        "spark.executor.cores=1",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        str(ROOT / "jobs" / "train.py"),
        *job_args,
    ]


@pytest.fixture(scope="module")
def package():
    pkg = subprocess.run(
        ["bash", str(ROOT / "scripts" / "package.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(_env(), PYTHON=sys.executable),
        timeout=300,
    )
    assert pkg.returncode == 0, pkg.stderr[-2000:]


def test_odd_files_give_the_same_output_on_the_cluster_as_locally(cluster, package, tmp_path, spark):
    """Several files with rejected rows and 'last' duplicates across them: the executors read and
    check them on the cluster, the driver in a local run; the same counts, rejects and factors."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [f"u{u},i{(u * 5 + k) % 11},{1 + (u + k) % 5},{1000 + k}" for u in range(30) for k in range(6)]
    (folder / "a.csv").write_text("user,item,rating,timestamp\n" + "\n".join(rows[:90] + ["u1,i1,x,5"]) + "\n")
    (folder / "b.csv").write_text("user,item,rating,timestamp\n" + "\n".join(["u0,i0,5,2000"] + rows[90:]) + "\n")
    args = ["--input", str(folder), "--set", "data.duplicates=last", "--set", "model.rank=3", *ARGS[:2]]
    run = subprocess.run(
        _submit(cluster.master, [*args, "--output", str(tmp_path / "cluster")]),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    from jobs import train as train_job

    assert train_job.main([*args, "--output", str(tmp_path / "local")]) == 0
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("cluster", "local")]
    assert metrics[0]["front_end"] == "spark" and metrics[1]["front_end"] == "driver"
    counts = ("n_read", "n_rejected", "n_duplicates_merged", "n_clean", "n_train", "n_test")
    assert [metrics[0][c] for c in counts] == [metrics[1][c] for c in counts]
    rejected = [
        sorted(tuple(r) for r in spark.read.parquet(str(tmp_path / r / "rejected")).select("_row", "reason").collect())
        for r in ("cluster", "local")
    ]
    assert rejected[0] == rejected[1] == [(90, rejected[0][0][1])]
    a, b = load_model(str(tmp_path / "cluster"), spark), load_model(str(tmp_path / "local"), spark)
    assert a.users.ids.equals(b.users.ids) and a.items.ids.equals(b.items.ids)
    assert np.max(np.abs(a.factors.X - b.factors.X)) < 1e-4


def test_spark_submit_on_a_standalone_cluster_equals_a_local_run(cluster, package, tmp_path, spark):
    """Also kills one executor JVM after iteration 2: the run still succeeds with the same factors."""
    started = time.monotonic()
    run = subprocess.Popen(
        _submit(cluster.master, ["--output", str(tmp_path / "cluster"), *ARGS]),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    err, killed = [], []
    try:
        for line in run.stdout:  # spark-submit merges the driver's stderr (one log line per iteration)
            err.append(line)
            if not killed and "iteration 2/" in line:
                executors = _executors()
                assert executors, "no executor JVM found"
                os.kill(executors[0], signal.SIGKILL)
                killed.append((executors[0], time.monotonic()))
        code = run.wait(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    stderr = "".join(err)
    assert code == 0, stderr[-4000:]
    assert killed, (
        "the run ended before iteration 2 was logged: "
        + "".join(line for line in err if "WARN" not in line and "INFO" not in line)[-3000:]
    )
    print(
        f"cluster run: {time.monotonic() - started:.1f} s; executor {killed[0][0]} killed after iteration 2, "
        f"run ended {time.monotonic() - killed[0][1]:.1f} s later; stream fallback: {'falling back' in stderr}"
    )
    print("".join(line for line in err if "resident stage" in line or "falling back" in line)[-2000:])
    assert cluster.alive(), "a master or worker died during the run"
    from jobs import train as train_job  # the local run in this process: the suite's session

    assert train_job.main(["--output", str(tmp_path / "local"), *ARGS]) == 0
    a, b = load_model(str(tmp_path / "cluster"), spark), load_model(str(tmp_path / "local"), spark)
    assert a.users.ids.equals(b.users.ids) and a.items.ids.equals(b.items.ids)
    assert np.max(np.abs(a.factors.X - b.factors.X)) < 1e-4
    assert np.max(np.abs(a.factors.Y - b.factors.Y)) < 1e-4
    recs = [
        spark.read.parquet(str(tmp_path / run / "recommendations")).orderBy("user", "rank").toPandas()
        for run in ("cluster", "local")
    ]
    assert recs[0][["user", "rank", "item"]].equals(recs[1][["user", "rank", "item"]])
