"""Faults of whole runs: the driver killed after a checkpoint, then --resume; two runs on one --output."""
from __future__ import annotations

import pytest

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jobs import train as train_job
from mf_spark import load_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--set", "model.rank=4", "--set", "model.iterations=30", "--set", "model.checkpoint_interval=2",
        "--set", "eval.every_iteration=false", "--set", "spark.spark.ui.enabled=false"]


def _job(output: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    return subprocess.Popen([sys.executable, "-m", "jobs.train", "--output", str(output), *ARGS, *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_driver_killed_after_a_checkpoint_resumes_to_the_uninterrupted_factors(spark, tmp_path):
    # The uninterrupted run in this process (factors do not depend on the block count).
    assert train_job.main(["--output", str(tmp_path / "whole"), *ARGS]) == 0

    out = tmp_path / "out"
    proc = _job(out)
    checkpoints = tmp_path / ".out_checkpoint"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("iter-*/state.json")):
        assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the driver and the JVM it started
    proc.wait(timeout=60)
    done = sorted(p.parent.name for p in checkpoints.glob("iter-*/state.json"))
    assert done and done[-1] < "iter-00030" and not (out / "_SUCCESS").exists()

    t0 = time.monotonic()
    resumed = _job(out, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    print(f"killed after {done[-1]}; the resumed run took {time.monotonic() - t0:.1f} s")
    assert "continuing after iteration" in resumed.stderr.read()
    a, b = load_model(str(out), spark), load_model(str(tmp_path / "whole"), spark)
    assert np.max(np.abs(a.factors.X - b.factors.X)) < 1e-4
    assert np.max(np.abs(a.factors.Y - b.factors.Y)) < 1e-4


def test_two_runs_on_one_output_leave_one_complete_output(spark, tmp_path):
    out = tmp_path / "out"
    runs = [_job(out, "--set", "model.iterations=3", "--set", f"model.seed={seed}") for seed in (1, 2)]
    codes = [p.wait(timeout=600) for p in runs]
    errors = [p.stderr.read() for p in runs]
    print("concurrent runs exit codes:", codes, [[x[:300] for x in e.splitlines() if x.startswith("mf_spark:") and "clientserver" not in x][-2:] for e in errors])
    for code, err in zip(codes, errors):
        assert code == 0 or "another run is" in err, err[-3000:]
    assert 0 in codes
    assert (out / "_SUCCESS").exists()
    model = load_model(str(out), spark)            # whole: model, factors and recommendations of one run
    assert model.describe()["config"]["model"]["seed"] in (1, 2)
    assert not list(tmp_path.glob(".out_staging-*")) and not (tmp_path / ".out_lock").exists()
    assert not (tmp_path / ".out_run").exists()
