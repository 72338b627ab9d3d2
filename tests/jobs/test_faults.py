"""Faults of whole runs: the driver killed at a stage, then --resume; two runs on one --output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import train as train_job
from mf_spark import load_model
from mf_spark.core.errors import FAIL_AT_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "--set",
    "model.rank=4",
    "--set",
    "model.iterations=8",
    "--set",
    "model.checkpoint_interval=2",
    "--set",
    "eval.every_iteration=false",
    "--set",
    "spark.spark.ui.enabled=false",
]


def _job(output: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--output", str(output), *ARGS, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def whole(spark, tmp_path_factory):
    """The uninterrupted run, in this process (factors do not depend on the block count)."""
    out = tmp_path_factory.mktemp("whole") / "out"
    assert train_job.main(["--output", str(out), *ARGS]) == 0
    return load_model(str(out), spark)


# A kill before the first checkpoint (while reading) leaves only a dead run's lease, which the next run
# takes over at once (test_lifecycle); these are the kills that leave factors or outputs behind.
@pytest.mark.parametrize("stage", ["checkpoint", "swap"])
def test_driver_killed_at_a_stage_then_resumed_ends_with_the_uninterrupted_model(spark, tmp_path, whole, stage, caplog):
    """kill -9 right after a checkpoint, and between the swap's renames (over a previous output); the
    next run with --resume publishes the model an uninterrupted run gives."""
    out = tmp_path / "out"
    if stage == "swap":  # the previous output, written in this process
        assert train_job.main(["--output", str(out), *ARGS, "--set", "model.iterations=2"]) == 0
    env = {FAIL_AT_ENV: f"{stage}:kill"}
    killed = _job(out, env=env)
    assert killed.wait(timeout=600) == -signal.SIGKILL, killed.stderr.read()[-3000:]
    if stage == "swap":  # the previous output is only in the aside folder now: a reader gets it
        assert not out.exists() and list(tmp_path.glob(".out_old-*"))
        assert load_model(str(out), spark).factors.X.shape[1] == 4
    with caplog.at_level("INFO", logger="mf_spark"):  # the next run, in this process
        assert train_job.main(["--output", str(out), *ARGS, "--resume"]) == 0
    assert any("continuing after iteration" in r.getMessage() for r in caplog.records)
    a = load_model(str(out), spark)
    assert np.max(np.abs(a.factors.X - whole.factors.X)) < 1e-4
    assert np.max(np.abs(a.factors.Y - whole.factors.Y)) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_to_the_process_group_stops_cleanly_and_resume_goes_on(spark, tmp_path, whole):
    """A scheduler's SIGTERM to the job's process group (here right after a checkpoint): exit 143 at
    once, one last line saying so, no staging folder or lease left, the checkpoint kept; --resume
    then publishes the uninterrupted model."""
    out = tmp_path / "out"
    stopped = _job(out, env={FAIL_AT_ENV: "checkpoint:term"})
    err = stopped.stderr.read()
    assert stopped.wait(timeout=600) == 143, err[-3000:]
    last = [line for line in err.splitlines() if " mf_spark: " in line][-1]  # the JVM's own log may follow
    assert "training stopped by SIGTERM during fit" in last, err[-3000:]
    assert "--resume continues after iteration 2" in last
    assert "mf_spark/run/cli.py" not in err  # no traceback of the driver's (the tasks' ends are Spark's log)
    assert not out.exists() and not list(tmp_path.glob(".out_staging-*")) and not (tmp_path / ".out_run").exists()
    assert list((tmp_path / ".out_checkpoint").glob("iter-*/state.json"))
    assert train_job.main(["--output", str(out), *ARGS, "--resume"]) == 0  # in this process
    a = load_model(str(out), spark)
    assert np.max(np.abs(a.factors.X - whole.factors.X)) < 1e-4


def test_two_runs_on_one_output_leave_one_complete_output(spark, tmp_path):
    out = tmp_path / "out"
    runs = [_job(out, "--set", "model.iterations=3", "--set", f"model.seed={seed}") for seed in (1, 2)]
    codes = [p.wait(timeout=600) for p in runs]
    errors = [p.stderr.read() for p in runs]
    print(
        "concurrent runs exit codes:",
        codes,
        [[x[:300] for x in e.splitlines() if " mf_spark: " in x][-2:] for e in errors],
    )
    for code, err in zip(codes, errors):
        assert code == 0 or "another run is using" in err, err[-3000:]
    assert 0 in codes
    assert (out / "_SUCCESS").exists()
    model = load_model(str(out), spark)  # whole: model, factors and recommendations of one run
    assert model.describe()["config"]["model"]["seed"] in (1, 2)
    assert not list(tmp_path.glob(".out_staging-*"))
    assert not (tmp_path / ".out_run").exists()
