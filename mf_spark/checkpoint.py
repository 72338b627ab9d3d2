"""Checkpoints of the factors, so a killed run can continue with `--resume`.

Layout (beside the output folder, never inside it, so a failed run leaves the output untouched):

    <parent>/.<name>_checkpoint/iter-00005/users/   Parquet: idx int, bias float, factors array<float>
                                          items/
                                          state.json   written last (renamed into place): a folder
                                                       without it is ignored
"""
from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from mf_spark import fs
from mf_spark.errors import InputError
from mf_spark.types import Factors

log = logging.getLogger("mf_spark")


def factor_table(ids: pa.Array, F: np.ndarray, bias: np.ndarray | None, id_name: str = "id") -> pa.Table:
    """Arrow table of (id, [bias], factors list<float>) in index order."""
    k = F.shape[1]
    flat = pa.array(np.ascontiguousarray(F, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (F.shape[0] + 1) * k, k, dtype=np.int32))
    cols = {id_name: ids}
    if bias is not None:
        cols["bias"] = pa.array(bias.astype(np.float32))
    cols["factors"] = pa.ListArray.from_arrays(offsets, flat)
    return pa.table(cols)


def read_factor_table(table: pa.Table, rank: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(factors (n, rank) float32, bias or None) from a table already in index order."""
    col = table.column("factors").combine_chunks()
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    if col.null_count or np.any(lengths != rank):
        raise InputError(f"{where}: every factors row must hold {rank} numbers")
    F = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, rank)
    bias = None
    if "bias" in table.column_names:
        bias = table.column("bias").to_numpy().astype(np.float32)
    return F, bias


class CheckpointStore:
    """Saves and finds the latest complete checkpoint for one output folder."""

    def __init__(self, spark: SparkSession, output: str):
        out = fs.qualify(spark, output).rstrip("/")
        self.spark = spark
        self.root = posixpath.join(posixpath.dirname(out), "." + posixpath.basename(out) + "_checkpoint")

    def save(self, iteration: int, factors: Factors, state: dict[str, Any]) -> None:
        """Write iteration `iteration` (1-based, completed) then drop older checkpoints.

        The driver writes the Parquet files itself (fs.write_bytes): no Spark job, so a fit whose
        resident tasks hold every task slot goes on without releasing them."""
        folder = posixpath.join(self.root, f"iter-{iteration:05d}")
        fs.delete(self.spark, folder)
        for side, F, b in (("users", factors.X, factors.user_bias), ("items", factors.Y, factors.item_bias)):
            table = factor_table(pa.array(np.arange(F.shape[0], dtype=np.int32)), F, b, "idx")
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            fs.write_bytes(self.spark, posixpath.join(folder, side, "part-00000.parquet"), buf.getvalue())
        body = dict(state, iteration=iteration, mu=factors.mu, rank=int(factors.X.shape[1]),
                    n_users=int(factors.X.shape[0]), n_items=int(factors.Y.shape[0]),
                    biases=factors.user_bias is not None)
        # Written beside, then renamed (atomic on HDFS and local disks): a run killed while writing
        # it leaves no state.json, never a partial one, and the checkpoint before stays the latest.
        partial = posixpath.join(folder, "state.json.partial")
        fs.write_json(self.spark, partial, body, indent=1)
        if not fs.rename(self.spark, partial, posixpath.join(folder, "state.json")):
            raise OSError(f"checkpoint: could not rename {partial} to state.json")
        for name in fs.list_names(self.spark, self.root):
            if name.startswith("iter-") and name < f"iter-{iteration:05d}":
                fs.delete(self.spark, posixpath.join(self.root, name))

    def latest(self) -> tuple[dict[str, Any], Factors] | None:
        """The newest checkpoint whose state.json exists, or None."""
        for name in reversed(fs.list_names(self.spark, self.root)):
            folder = posixpath.join(self.root, name)
            if not name.startswith("iter-") or not fs.exists(self.spark, posixpath.join(folder, "state.json")):
                continue
            try:
                state = json.loads(fs.read_text(self.spark, posixpath.join(folder, "state.json")))
            except ValueError as e:      # not JSON: written by something else; an older one may do
                log.warning("checkpoint %s: state.json is not readable JSON (%s); skipping it", folder, e)
                continue
            sides = []
            for side in ("users", "items"):
                table = self.spark.read.parquet(posixpath.join(folder, side)).toArrow().sort_by("idx")
                sides.append(read_factor_table(table, state["rank"], posixpath.join(folder, side)))
            (X, bu), (Y, bi) = sides
            return state, Factors(X, Y, bu, bi, float(state["mu"]))
        return None

    def clear(self) -> None:
        fs.delete(self.spark, self.root)
