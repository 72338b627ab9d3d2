"""Publishing a job's outputs atomically, under a lease on the output that only one run holds.

A run first takes the output's lease (`claim`): the file `<parent>/.<name>_run`, holding an owner
token and refreshed by a heartbeat thread while the run lives. A lease whose file was not refreshed
for `STALE_SECONDS`, or whose holder is a dead process on this host, is taken over by the next run
from any host, through a rename only one taker can win; the holder of a lease taken from it notices
at its next heartbeat and publishes nothing. Taking the lease also repairs what a run killed while
publishing left behind (`_recover`).

Outputs are written to a staging folder beside the output (`.<name>_staging-<token>`), `_SUCCESS`
last; then the old output is moved aside (`.<name>_old-<token>`), the staging folder renamed into
place and the old one deleted. A run that fails before the swap leaves `DIR` as it was; a reader that
sees `_SUCCESS` sees complete outputs. That needs an atomic rename, so stores without one (S3, GCS,
Azure Blob, ADLS without hierarchical namespace) are refused as outputs (`check_output`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlparse

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from mf_spark.core import fs, session
from mf_spark.core.errors import InputError, MfSparkError, fault_point
from mf_spark.model.factors import FactorModel

log = logging.getLogger("mf_spark")

HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 180.0  # a lease not refreshed for this long (nine missed heartbeats) is abandoned
# Schemes whose rename is a copy and a delete: neither atomic nor exclusive.
NON_ATOMIC_SCHEMES = {"s3", "s3a", "s3n", "gs", "wasb", "wasbs", "oss", "cos", "cosn", "obs"}
ABFS_HNS_KEY = "fs.azure.account.hns.enabled"


class LeaseHeld(MfSparkError):
    """Another live run holds the output's lease."""


class LeaseLost(MfSparkError):
    """The run's lease was taken over (its heartbeat stopped for too long): it must not publish."""


def _hadoop_conf(spark: SparkSession, key: str) -> str | None:
    """A Hadoop setting as Spark's file systems see it (a Spark Connect client: as spark.hadoop.*)."""
    if session.is_connect(spark):
        return spark.conf.get(f"spark.hadoop.{key}", None)
    return spark.sparkContext._jsc.hadoopConfiguration().get(key)


def check_output(spark: SparkSession, output: str) -> str:
    """Qualified output path. InputError when it exists and is not a folder, or when it is on a store
    without atomic rename (publishing there could show readers half an output). Call before training."""
    # The scheme before qualifying: the store's file system classes may not even be installed.
    scheme = urlparse(output).scheme.lower() or urlparse(fs.qualify(spark, output)).scheme.lower()
    if scheme in NON_ATOMIC_SCHEMES or (
        scheme in ("abfs", "abfss") and str(_hadoop_conf(spark, ABFS_HNS_KEY)).lower() != "true"
    ):
        hint = (
            f" (ADLS Gen2 with a hierarchical namespace renames atomically: set spark.hadoop.{ABFS_HNS_KEY}=true)"
            if scheme.startswith("abfs")
            else ""
        )
        raise InputError(
            f"--output {output}: {scheme}:// has no atomic rename{hint}, so a reader could see "
            f"half-replaced outputs; write to HDFS or a local path and copy the finished "
            f"folder (hadoop distcp), or give the output a store with atomic renames"
        )
    qualified = fs.qualify(spark, output).rstrip("/")
    if fs.exists(spark, qualified) and not fs.is_dir(spark, qualified):
        raise InputError(f"--output {output}: exists and is a file, expected a folder (or a new path)")
    parent = posixpath.dirname(qualified)
    while parent and not fs.exists(spark, parent) and posixpath.dirname(parent) != parent:
        parent = posixpath.dirname(parent)  # the nearest existing ancestor: it must be a folder
    if parent and fs.exists(spark, parent) and not fs.is_dir(spark, parent):
        raise InputError(f"--output {output}: {parent} is a file, expected a folder above the output")
    return qualified


# ---- the lease --------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The exclusive, heartbeat-refreshed lock file of one output (see the module docstring)."""

    def __init__(self, spark: SparkSession, output: str):
        self.spark = spark
        self.output = output
        self.path = fs.sibling(output, "run")
        self.token = uuid.uuid4().hex
        self._beats = 0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = {
            "owner": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _holder(self) -> dict[str, Any] | None:
        """The lock file's content; {} while it is being written or unreadable, None when absent."""
        try:
            text = fs.read_text(self.spark, self.path)
        except Exception:  # noqa: BLE001 - gone between the listing and the read, or unreadable
            return None if not fs.exists(self.spark, self.path) else {}
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        age = fs.age_seconds(self.spark, self.path)
        if age is not None and age > STALE_SECONDS:
            return True
        pid = holder.get("pid")
        return (
            holder.get("host") == self._me["host"] and isinstance(pid, int) and pid != os.getpid() and not _alive(pid)
        )

    def _write(self) -> None:
        self._beats += 1
        fs.write_text(self.spark, self.path, json.dumps(dict(self._me, beat=self._beats)))

    def acquire(self) -> "Lease":
        """Take the lease, or raise LeaseHeld naming the live holder."""
        for _ in range(20):  # each pass either takes the lease or sees a takeover by someone else
            self._beats = 1
            try:
                created = fs.create_new(self.spark, self.path, json.dumps(dict(self._me, beat=self._beats)))
            except OSError as exc:  # the parent folder cannot be written (read-only, no permission)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # may pass: exit 1, the cause named (cli.environment_cause)
                raise InputError(
                    f"--output {self.output}: cannot write in {posixpath.dirname(self.output) or '.'} "
                    f"({exc.strerror or exc}); give an output in a folder this job can write"
                ) from None
            if created:
                self._thread = threading.Thread(target=self._heartbeat, name="mf_spark-lease", daemon=True)
                self._thread.start()
                return self
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            if not self._stale(holder):
                age = fs.age_seconds(self.spark, self.path) or 0.0
                raise LeaseHeld(
                    f"another run is using {self.output}: pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, started {holder.get('started', '?')} (lease {self.path}, "
                    f"refreshed every {HEARTBEAT_SECONDS:.0f}s, last {age:.0f}s ago; taken over once not refreshed "
                    f"for {STALE_SECONDS:.0f}s, in {max(0.0, STALE_SECONDS - age):.0f}s if that run is gone). "
                    f"If no run is using it, delete {self.path} and run again"
                )
            # Renaming is atomic: of several runs taking over one stale lease, one wins.
            grave = f"{self.path}.stale-{self.token}"
            if fs.rename(self.spark, self.path, grave):
                log.warning(
                    "took over the lease of a dead run on %s (pid %s on %s, started %s)",
                    self.output,
                    holder.get("pid", "?"),
                    holder.get("host", "?"),
                    holder.get("started", "?"),
                )
                fs.delete(self.spark, grave)
        raise LeaseHeld(f"could not take the lease {self.path}: other runs keep taking it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.check()
                self._write()
            except LeaseLost:
                return
            except Exception as e:  # noqa: BLE001 - a store hiccup: the next beat tries again
                log.warning("could not refresh the lease %s: %s", self.path, e)

    def check(self) -> None:
        """LeaseLost unless the lock file still names this run (call before anything is published)."""
        if self._lost is None:
            holder = self._holder()
            if holder is not None and holder.get("owner") == self.token:
                return
            if holder == {}:  # being rewritten by our own heartbeat, or unreadable: look again
                time.sleep(0.05)
                holder = self._holder()
                if holder is not None and holder.get("owner") == self.token:
                    return
            who = "nobody" if not holder else f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            self._lost = (
                f"this run lost its lease on {self.output} (now held by {who}): it was not "
                f"refreshed for over {STALE_SECONDS:.0f}s; nothing was published"
            )
        raise LeaseLost(self._lost)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._holder()
        if holder is not None and holder.get("owner") == self.token:
            fs.delete(self.spark, self.path)


@contextlib.contextmanager
def claim(spark: SparkSession, output: str):
    """Hold the output's lease for a whole run (its checkpoints and its publish are its own); yields
    the Lease. A second run on the same output fails at once (LeaseHeld) instead of mixing its
    checkpoints and outputs with the first."""
    lease = Lease(spark, output).acquire()
    try:
        _recover(spark, output)
        yield lease
    finally:
        lease.release()


def _recover(spark: SparkSession, output: str) -> None:
    """Repair what a run killed while publishing left (the caller holds the lease, so no other run is
    publishing): a swap killed between its renames left the previous output only in `.<name>_old-*`,
    which is moved back; other old and staging folders are deleted."""
    parent, prefix = posixpath.dirname(output), f".{posixpath.basename(output)}_"
    names = fs.list_names(spark, parent)
    olds = [n for n in names if n.startswith(prefix + "old-")]
    if olds and not fs.exists(spark, output):
        complete = [n for n in olds if fs.exists(spark, posixpath.join(parent, n, "_SUCCESS"))]
        if complete and fs.rename(spark, posixpath.join(parent, complete[0]), output):
            log.warning("restored %s from %s: a run was killed while replacing it", output, complete[0])
            olds.remove(complete[0])
    for name in olds + [n for n in names if n.startswith(prefix + "staging-")]:
        log.info("deleting %s, left by a run killed while publishing", name)
        fs.delete(spark, posixpath.join(parent, name))


# ---- publishing ---------------------------------------------------------------------------------------
def publish(
    spark: SparkSession,
    output: str,
    model: FactorModel,
    recommendations: DataFrame | pa.Table,
    metrics: dict[str, Any] | Callable[[], dict[str, Any]],
    rejected: DataFrame | pa.Table | None,
    model_extra: dict[str, Any],
    lease: Lease | None = None,
    more: Callable[[str, dict[str, Any]], None] | None = None,
) -> str:
    """Write factors, recommendations, metrics.json, model.json, rejected/ (if any), _SUCCESS.

    `metrics` may be a function, called when metrics.json is written (last but `more` and
    _SUCCESS), so that it can hold the time of the writes before it. `more(staging, metrics)`
    writes further outputs (the report) into the staging folder.

    `recommendations` and `rejected` may be DataFrames or driver tables (fs.write_parquet).
    Performance note: one Spark write per DataFrame output (recommendations, rejected, two factor
    tables) unless the output is local and the data on the driver (then pyarrow writes it); the rest
    are small driver-side files. Returns the qualified output path.
    """

    def write_all(staging: str) -> None:
        fault_point("model")
        model.save(staging, spark, extra=model_extra)
        fault_point("recommendations")
        fs.write_parquet(spark, posixpath.join(staging, "recommendations"), recommendations)
        fault_point("rejected")
        if rejected is not None:
            fs.write_parquet(spark, posixpath.join(staging, "rejected"), rejected)
        fault_point("metrics")
        body = metrics() if callable(metrics) else metrics
        fs.write_json(spark, posixpath.join(staging, "metrics.json"), body)
        if more is not None:
            more(staging, body)

    return publish_with(spark, output, write_all, lease)


def publish_with(spark: SparkSession, output: str, write_all: Callable[[str], None], lease: Lease | None = None) -> str:
    """Run `write_all(staging_folder)`, add _SUCCESS, then swap the staging folder into `output`.

    Takes the output's lease for the swap unless the caller holds it (`lease`). On any failure the
    staging folder is deleted and `output` keeps its previous contents.
    """
    output = check_output(spark, output)
    if lease is None:
        with claim(spark, output) as own:
            return publish_with(spark, output, write_all, own)
    staging = fs.sibling(output, f"staging-{lease.token[:12]}")
    try:
        write_all(staging)
        fs.write_text(spark, posixpath.join(staging, "_SUCCESS"), "")
        lease.check()
        _swap(spark, staging, output, lease.token[:12])
    except BaseException:
        fs.delete(spark, staging)
        raise
    return output


def _swap(spark: SparkSession, staging: str, output: str, token: str) -> None:
    old = fs.sibling(output, f"old-{token}")
    had_old = fs.exists(spark, output)
    if had_old and not fs.rename(spark, output, old):
        raise MfSparkError(f"cannot move the previous output {output} aside to {old}")
    try:
        fault_point("swap")
        if not fs.rename(spark, staging, output):
            raise MfSparkError(f"cannot move {staging} into place at {output}")
    except BaseException:
        if had_old and not fs.exists(spark, output):
            fs.rename(spark, old, output)
        raise
    if had_old:
        fs.delete(spark, old)
