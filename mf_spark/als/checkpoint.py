"""Checkpoints of the factors, so a killed run can continue with `--resume`; and the factor tables.

Layout (beside the output folder, never inside it, so a failed run leaves the output untouched):

    <parent>/.<name>_checkpoint/iter-00005/users/   Parquet: idx int, bias float, factors array<float>
                                          items/
                                          state.json   written last (renamed into place): a folder
                                                       without it is ignored

Every state.json holds the run's fingerprint (`fingerprint`): the settings the factors depend on, the
input files with their sizes and modification times, the counts and a digest of the ID maps. A
checkpoint is continued only by a run with the same fingerprint; any other gets an InputError naming
what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from mf_spark.core import fs
from mf_spark.core.config import RunConfig
from mf_spark.core.errors import InputError, fault_point
from mf_spark.core.types import Factors

log = logging.getLogger("mf_spark")


# Settings a run's factors do not depend on, so they may change between a run and its --resume: how
# the fit runs, and the day biases (fitted after it, from the factors).
EXECUTION_ONLY = {
    "model": {
        "iterations",
        "checkpoint_interval",
        "exchange",
        "exchange_timeout_seconds",
        "strategy",
        "broadcast_budget_mb",
        "num_user_blocks",
        "num_item_blocks",
        "day_bias_reg",
        "day_factor_reg",
        "day_length",
        "stall_floor_seconds",
    },
    "data": {"fingerprint"},
}
FACTOR_SECTIONS = ("data", "split", "model")


def list_offsets(n_rows: int, k: int) -> np.ndarray:
    """Offsets of n_rows lists of k values each, int64: a table of n x k >= 2**31 values (34M users
    at rank 64) is beyond int32 offsets."""
    return np.arange(0, (n_rows + 1) * k, k, dtype=np.int64)


def factor_lists(F: np.ndarray, large: bool = True) -> pa.Array:
    """(n, k) factors as a list column, one list per row: large_list<float> for Parquet (64-bit
    offsets; Spark reads the column as array<float>, Parquet stores both list types alike), else
    list<float> for Arrow batches handed to Spark, which refuses large lists there."""
    flat = pa.array(np.ascontiguousarray(F, dtype=np.float32).reshape(-1))
    offsets = list_offsets(F.shape[0], F.shape[1])
    if large:
        return pa.LargeListArray.from_arrays(pa.array(offsets), flat)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


def factor_table(ids: pa.Array, F: np.ndarray, bias: np.ndarray | None, id_name: str = "id") -> pa.Table:
    """Arrow table of (id, [bias], factors) in index order (`factor_lists`)."""
    cols = {id_name: ids.cast(pa.large_string()) if pa.types.is_string(ids.type) else ids}
    if bias is not None:
        cols["bias"] = pa.array(bias.astype(np.float32))
    cols["factors"] = factor_lists(F)
    return pa.table(cols)


def _digest(ids: pa.Array) -> str:
    """A digest of an ID map's IDs (their values in index order)."""
    h = hashlib.sha256(str(ids.type).encode())
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_integer(ids.type):
        h.update(np.ascontiguousarray(ids.to_numpy(zero_copy_only=False), np.int64).tobytes())
    else:
        text = ids.cast(pa.large_string())
        offsets = np.frombuffer(text.buffers()[1], np.int64)[text.offset : text.offset + len(text) + 1]
        h.update((offsets - offsets[0]).tobytes())
        if text.buffers()[2] is not None:
            h.update(memoryview(text.buffers()[2])[int(offsets[0]) : int(offsets[-1])])
    return h.hexdigest()[:32]


def fingerprint(
    spark: SparkSession,
    cfg: RunConfig,
    inputs: dict[str, str],
    counts: dict[str, int],
    users: pa.Array,
    items: pa.Array,
) -> dict[str, Any]:
    """What identifies a run's factors: the settings they depend on, the input files (`inputs` maps
    input / train / test to its path) with sizes and modification times, the counts and the ID maps."""
    whole = cfg.to_dict()
    settings = json.loads(
        json.dumps(
            {s: {k: v for k, v in whole[s].items() if k not in EXECUTION_ONLY.get(s, ())} for s in FACTOR_SECTIONS}
        )
    )  # as state.json gives it back: lists
    content = cfg.data.fingerprint == "content"
    files = {
        role: [
            {"path": p, "bytes": n, "modified_ms": t, **({"sha256": fs.checksum(spark, p)} if content else {})}
            for p, n, t in fs.data_files(spark, path)
        ]
        for role, path in sorted(inputs.items())
    }
    return {
        "settings": settings,
        "inputs": files,
        "counts": dict(counts),
        "ids": {"users": _digest(users), "items": _digest(items)},
    }


def differences(was: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words ("model.reg was 0.1, now 0.05")."""
    if not was:
        return ["the checkpoint has no run fingerprint (written by an older version)"]
    out = []
    for section, values in now["settings"].items():
        old = was.get("settings", {}).get(section, {})
        out += [f"{section}.{k} was {old.get(k)!r}, now {v!r}" for k, v in values.items() if old.get(k) != v]
    for role in sorted(set(now["inputs"]) | set(was.get("inputs", {}))):
        a = {f["path"]: f for f in was.get("inputs", {}).get(role, [])}
        b = {f["path"]: f for f in now["inputs"].get(role, [])}
        out += [f"{role} file {p} is new" for p in sorted(set(b) - set(a))]
        out += [f"{role} file {p} is gone" for p in sorted(set(a) - set(b))]
        out += [
            f"{role} file {p} changed ({a[p]['bytes']} bytes modified at {a[p]['modified_ms']} ms, now "
            f"{b[p]['bytes']} at {b[p]['modified_ms']}"
            + (", its content differs)" if a[p].get("sha256", "") != b[p].get("sha256", "") else ")")
            for p in sorted(set(a) & set(b))
            # what both runs recorded: a checksum only when both took one (data.fingerprint = content)
            if any(a[p][k] != b[p][k] for k in set(a[p]) & set(b[p]) - {"path"})
        ]
    old_counts = was.get("counts", {})
    out += [f"{k} was {old_counts.get(k)}, now {v}" for k, v in now["counts"].items() if old_counts.get(k) != v]
    out += [f"the {side} ID map differs" for side, d in now["ids"].items() if was.get("ids", {}).get(side) != d]
    return out


def read_factor_table(table: pa.Table, rank: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(factors (n, rank) float32, bias or None) from a table already in index order."""
    parts = []
    for col in table.column("factors").chunks:  # chunk by chunk: their total may pass int32 offsets
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if col.null_count or np.any(lengths != rank):
            raise InputError(f"{where}: every factors row must hold {rank} numbers")
        parts.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, rank))
    F = np.concatenate(parts) if parts else np.zeros((0, rank), np.float32)
    bias = None
    if "bias" in table.column_names:
        bias = table.column("bias").to_numpy().astype(np.float32)
    return F, bias


_SAVED: list[int] = []  # the iteration this process checkpointed last


def last_saved() -> int | None:
    """The iteration of this process's last complete checkpoint (what --resume continues after)."""
    return _SAVED[-1] if _SAVED else None


class CheckpointStore:
    """Saves and finds the latest complete checkpoint for one output folder."""

    def __init__(
        self,
        spark: SparkSession,
        output: str,
        fingerprint: dict[str, Any] | None = None,
        guard: Callable[[], None] | None = None,
    ):
        """`fingerprint` (see `fingerprint`) is stored with every checkpoint and required of the one
        `latest` returns; `guard` is called before each save (the run's lease check)."""
        out = fs.qualify(spark, output).rstrip("/")
        self.spark = spark
        self.root = posixpath.join(posixpath.dirname(out), "." + posixpath.basename(out) + "_checkpoint")
        self.fingerprint = fingerprint
        self.guard = guard

    def save(self, iteration: int, factors: Factors, state: dict[str, Any]) -> None:
        """Write iteration `iteration` (1-based, completed) then drop older checkpoints.

        The driver writes the Parquet files itself (fs.write_bytes): no Spark job, so a fit whose
        resident tasks hold every task slot goes on without releasing them."""
        if self.guard is not None:
            self.guard()
        folder = posixpath.join(self.root, f"iter-{iteration:05d}")
        fs.delete(self.spark, folder)
        try:
            self._write(folder, iteration, factors, state)
        except Exception:
            # A write that failed (a full disk, a lost store) leaves no half checkpoint behind: the one
            # before stays the latest, and the space it took is given back.
            try:
                fs.delete(self.spark, folder)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        for name in fs.list_names(self.spark, self.root):
            if name.startswith("iter-") and name < f"iter-{iteration:05d}":
                fs.delete(self.spark, posixpath.join(self.root, name))
        _SAVED[:] = [iteration]
        fault_point("checkpoint")

    def _write(self, folder: str, iteration: int, factors: Factors, state: dict[str, Any]) -> None:
        for side, F, b in (("users", factors.X, factors.user_bias), ("items", factors.Y, factors.item_bias)):
            table = factor_table(pa.array(np.arange(F.shape[0], dtype=np.int32)), F, b, "idx")
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            fs.write_bytes(self.spark, posixpath.join(folder, side, "part-00000.parquet"), buf.getvalue())
        body = dict(
            state,
            iteration=iteration,
            mu=factors.mu,
            rank=int(factors.X.shape[1]),
            n_users=int(factors.X.shape[0]),
            n_items=int(factors.Y.shape[0]),
            biases=factors.user_bias is not None,
            fingerprint=self.fingerprint,
        )
        # Written beside, then renamed (atomic on HDFS and local disks): a run killed while writing
        # it leaves no state.json, never a partial one, and the checkpoint before stays the latest.
        partial = posixpath.join(folder, "state.json.partial")
        fs.write_json(self.spark, partial, body, indent=1)
        if not fs.rename(self.spark, partial, posixpath.join(folder, "state.json")):
            raise OSError(f"checkpoint: could not rename {partial} to state.json")

    def latest(self) -> tuple[dict[str, Any], Factors] | None:
        """The newest checkpoint whose state.json exists, or None. InputError when it belongs to a run
        with another fingerprint (naming the differences)."""
        for name in reversed(fs.list_names(self.spark, self.root)):
            folder = posixpath.join(self.root, name)
            if not name.startswith("iter-") or not fs.exists(self.spark, posixpath.join(folder, "state.json")):
                continue
            try:
                state = json.loads(fs.read_text(self.spark, posixpath.join(folder, "state.json")))
            except ValueError as e:  # not JSON: written by something else; an older one may do
                log.warning("checkpoint %s: state.json is not readable JSON (%s); skipping it", folder, e)
                continue
            if self.fingerprint is not None and state.get("fingerprint") != self.fingerprint:
                diff = differences(state.get("fingerprint"), self.fingerprint) or ["the run fingerprint"]
                raise InputError(
                    f"--resume: the checkpoint {folder} is another run's: "
                    + "; ".join(diff[:8])
                    + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
                    + ". Run without --resume to start over (its checkpoints are then deleted)"
                )
            sides = []
            for side in ("users", "items"):
                table = fs.read_parquet(self.spark, posixpath.join(folder, side)).sort_by("idx")
                sides.append(read_factor_table(table, state["rank"], posixpath.join(folder, side)))
            (X, bu), (Y, bi) = sides
            return state, Factors(X, Y, bu, bi, float(state["mu"]))
        return None

    def clear(self) -> None:
        fs.delete(self.spark, self.root)
