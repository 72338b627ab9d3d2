"""Publishing a run's outputs atomically.

Everything is written to a staging folder beside the output (`<parent>/.<name>_staging-<uuid>`),
`_SUCCESS` last; only then, under a lock file, the old output is moved aside, the staging folder is
renamed into place and the old one deleted. A run that fails before the swap leaves `DIR` as it was;
a reader that sees `_SUCCESS` sees complete outputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import time
import uuid
from typing import Any, Callable

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from mf_spark import fs
from mf_spark.errors import InputError, MfSparkError
from mf_spark.model import FactorModel

# Test hook: MF_SPARK_FAIL_AT=<stage> raises at that stage (model, recommendations, rejected, metrics,
# swap), to prove a failed write leaves the previous output intact.
FAIL_AT_ENV = "MF_SPARK_FAIL_AT"
LOCK_WAIT_SECONDS = 60.0
STALE_LOCK_SECONDS = 3600.0
STALE_RUN_SECONDS = 6 * 3600.0   # a run lock nobody refreshed for this long is abandoned


class InjectedFault(MfSparkError):
    """Raised by the MF_SPARK_FAIL_AT test hook."""


def _checkpoint(stage: str) -> None:
    if os.environ.get(FAIL_AT_ENV) == stage:
        raise InjectedFault(f"injected failure while writing outputs (stage {stage!r}, {FAIL_AT_ENV})")


def check_output(spark: SparkSession, output: str) -> str:
    """Qualified output path; InputError when it exists and is not a folder. Call before training."""
    qualified = fs.qualify(spark, output).rstrip("/")
    if fs.exists(spark, qualified) and not fs.is_dir(spark, qualified):
        raise InputError(f"--output {output}: exists and is a file, expected a folder (or a new path)")
    return qualified


def _sibling(output: str, tag: str) -> str:
    return posixpath.join(posixpath.dirname(output), f".{posixpath.basename(output)}_{tag}")


def publish(spark: SparkSession, output: str, model: FactorModel, recommendations: DataFrame | pa.Table,
            metrics: dict[str, Any] | Callable[[], dict[str, Any]], rejected: DataFrame | pa.Table | None,
            model_extra: dict[str, Any]) -> str:
    """Write factors, recommendations, metrics.json, model.json, rejected/ (if any), _SUCCESS.

    `metrics` may be a function, called when metrics.json is written (last but _SUCCESS), so that
    it can hold the time of the writes before it.

    `recommendations` and `rejected` may be DataFrames or driver tables (fs.write_parquet).
    Performance note: one Spark write per DataFrame output (recommendations, rejected, two factor
    tables) unless the output is local and the data on the driver (then pyarrow writes it); the rest
    are small driver-side files. Returns the qualified output path.
    """
    def write_all(staging: str) -> None:
        _checkpoint("model")
        model.save(staging, spark, extra=model_extra)
        _checkpoint("recommendations")
        fs.write_parquet(spark, posixpath.join(staging, "recommendations"), recommendations)
        _checkpoint("rejected")
        if rejected is not None:
            fs.write_parquet(spark, posixpath.join(staging, "rejected"), rejected)
        _checkpoint("metrics")
        body = metrics() if callable(metrics) else metrics
        fs.write_json(spark, posixpath.join(staging, "metrics.json"), body)
    return publish_with(spark, output, write_all)


def publish_with(spark: SparkSession, output: str, write_all: Callable[[str], None]) -> str:
    """Run `write_all(staging_folder)`, add _SUCCESS, then swap the staging folder into `output`.

    On any failure the staging folder is deleted and `output` keeps its previous contents.
    """
    output = check_output(spark, output)
    staging = _sibling(output, f"staging-{uuid.uuid4().hex[:12]}")
    try:
        write_all(staging)
        fs.write_text(spark, posixpath.join(staging, "_SUCCESS"), "")
        _swap(spark, staging, output)
    except BaseException:
        fs.delete(spark, staging)
        raise
    return output


def _acquire(spark: SparkSession, lock: str) -> None:
    """Take the output's lock file: one publisher at a time; a lock older than an hour is stale."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while not fs.create_new(spark, lock):
        age = fs.age_seconds(spark, lock)
        if age is not None and age > STALE_LOCK_SECONDS:
            fs.delete(spark, lock)
            continue
        if time.monotonic() > deadline:
            raise MfSparkError(f"another run is publishing to the same output (lock {lock} held for "
                               f"over {LOCK_WAIT_SECONDS:.0f}s); outputs were not replaced")
        time.sleep(0.2)


def _swap(spark: SparkSession, staging: str, output: str) -> None:
    lock = _sibling(output, "lock")
    _acquire(spark, lock)
    try:
        old = _sibling(output, f"old-{uuid.uuid4().hex[:12]}")
        had_old = fs.exists(spark, output)
        if had_old and not fs.rename(spark, output, old):
            raise MfSparkError(f"cannot move the previous output {output} aside to {old}")
        try:
            _checkpoint("swap")
            if not fs.rename(spark, staging, output):
                raise MfSparkError(f"cannot move {staging} into place at {output}")
        except BaseException:
            if had_old and not fs.exists(spark, output):
                fs.rename(spark, old, output)
            raise
        if had_old:
            fs.delete(spark, old)
    finally:
        fs.delete(spark, lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claim(spark: SparkSession, output: str):
    """Hold `.<output>_run` for a whole training run: its checkpoints and its publish are its own.

    A second run on the same --output fails at once with a message naming the holder, instead of
    mixing checkpoints with the first. The lock of a dead run is taken over: one started on this host
    whose process is gone (a killed driver followed by --resume), or one older than six hours.
    """
    path = _sibling(output, "run")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    while not fs.create_new(spark, path):
        try:
            holder = json.loads(fs.read_text(spark, path) or "{}")
        except (ValueError, OSError):
            holder = {}
        age = fs.age_seconds(spark, path)
        dead = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])
        if dead or (age is not None and age > STALE_RUN_SECONDS):
            fs.delete(spark, path)
            continue
        raise MfSparkError(
            f"another run is training into {output}: pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')} (lock {path}); wait for it to finish, or delete the lock "
            f"if that run is dead")
    fs.write_text(spark, path, json.dumps(me))
    try:
        yield
    finally:
        fs.delete(spark, path)
