"""FactorModel: factors with their original IDs; predict, recommend, save and load (JSON + Parquet).

A saved model is a folder:

    model.json       kind, rank, mu, global mean, rating range, ID types, config, versions
    factors/users/   Parquet: id (original type), bias float (explicit + biases), factors array<float>
    factors/items/   the same for items

The ID maps are the `id` columns: index = position of the ID in sorted order (see index.IdMap), so
nothing but sorted IDs and their factor rows is stored, and loading executes nothing (no pickle).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mf_spark import fs
from mf_spark.checkpoint import factor_table, read_factor_table
from mf_spark.types import Factors
from mf_spark.errors import InputError, ModelError
from mf_spark.index import IdMap
from mf_spark.kernels import compiled
from mf_spark.topn import item_blocks, recommend_indices, recommend_indices_blocked, recommend_indices_grouped
from mf_spark.types import ITEM_IDX, USER_IDX

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Scorer:
    """What executors need to score: factors, cold-start mean and the clipping range."""
    kind: str
    factors: Factors
    global_mean: float
    rating_range: tuple[float, float] | None

    def predict_idx(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Predictions for index arrays (-1 = unknown ID), float64, clipped for explicit models.

        Known user and item: mu + b_u + b_i + x_u.y_i; otherwise the global mean plus known biases.
        """
        f = self.factors
        clip = self.rating_range if self.kind == "explicit" else None
        if compiled.chosen("auto"):
            return compiled.predict_rows(f.X, f.Y, f.user_bias, f.item_bias, np.asarray(u), np.asarray(i), f.mu,
                                         self.global_mean, clip)
        u = np.asarray(u, dtype=np.int64)
        i = np.asarray(i, dtype=np.int64)
        ku, ki = u >= 0, i >= 0
        uu, ii = np.where(ku, u, 0), np.where(ki, i, 0)
        both = ku & ki
        pred = np.where(both, f.mu, self.global_mean).astype(np.float64)
        pred += np.where(both, np.einsum("ij,ij->i", f.X[uu].astype(np.float64), f.Y[ii]), 0.0)
        if f.user_bias is not None:
            pred += np.where(ku, f.user_bias[uu], 0.0) + np.where(ki, f.item_bias[ii], 0.0)
        if clip is not None:
            pred = np.clip(pred, *clip)
        return pred


@dataclass
class FactorModel:
    """A fitted model. `users`/`items` map original IDs to the rows of the factor matrices."""
    kind: str
    factors: Factors
    users: IdMap
    items: IdMap
    global_mean: float                        # cold-start prediction
    rating_range: tuple[float, float] | None  # explicit predictions are clipped to it
    config: dict[str, Any] = field(default_factory=dict)
    item_blocks: int = field(default=0, compare=False)   # > 0: top-N by item blocks, no broadcast of Y
    _bc: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.users.size != self.factors.X.shape[0] or self.items.size != self.factors.Y.shape[0]:
            raise ValueError(f"{self.users.size} user IDs for {self.factors.X.shape[0]} factor rows, "
                             f"{self.items.size} item IDs for {self.factors.Y.shape[0]}")

    @property
    def rank(self) -> int:
        return int(self.factors.X.shape[1])

    @property
    def scorer(self) -> "Scorer":
        # Implicit scores estimate a preference: an unknown pair has none, whatever an older model.json says.
        cold = self.global_mean if self.kind == "explicit" else 0.0
        return Scorer(self.kind, self.factors, cold, self.rating_range)

    def predict_idx(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return self.scorer.predict_idx(u, i)

    def _broadcast(self, spark: SparkSession):
        """The Scorer, broadcast once per model and reused by every predict/recommend call."""
        if self._bc is None:
            self._bc = spark.sparkContext.broadcast(self.scorer)
        return self._bc

    def predict(self, df: DataFrame, user_col: str = "user", item_col: str = "item",
                output_col: str = "prediction") -> DataFrame:
        """`df` with a `prediction` column (double) for every row; unknown IDs get cold predictions.

        Performance note: two broadcast joins with the ID maps and one broadcast of the factors.
        """
        for c in (user_col, item_col):
            if c not in df.columns:
                raise InputError(f"predict: column {c!r} is missing; columns are {df.columns}")
        enc = self.items.encode(self.users.encode(df, user_col, "__u"), item_col, "__i")
        bc = self._broadcast(df.sparkSession)

        def score(batches):
            scorer = bc.value
            for b in batches:
                u = b.column("__u").fill_null(-1).to_numpy()
                i = b.column("__i").fill_null(-1).to_numpy()
                yield b.append_column(output_col, pa.array(scorer.predict_idx(u, i), pa.float64()))
        out_schema = T.StructType(enc.schema.fields + [T.StructField(output_col, T.DoubleType())])
        return enc.mapInArrow(score, out_schema).drop("__u", "__i")

    def recommend_idx(self, users: DataFrame, n: int) -> DataFrame:
        """Top-n per row of `users` (user_idx int, seen array<int> or null): recommend_indices, or
        recommend_indices_blocked when `item_blocks` > 0 (item factors too big to broadcast)."""
        if self.item_blocks > 0:
            return recommend_indices_blocked(self.scorer, users, n, self.item_blocks)
        return recommend_indices(self._broadcast(users.sparkSession), users, n)

    def recommend_unseen_idx(self, pairs: DataFrame, n: int) -> DataFrame:
        """Top-n for every user in `pairs` (user_idx, item_idx: what each user rated, excluded):
        recommend_indices_grouped, or by item blocks (from seen lists) when `item_blocks` > 0."""
        if self.item_blocks > 0:
            seen = pairs.groupBy(USER_IDX).agg(F.collect_list(ITEM_IDX).alias("seen"))
            return recommend_indices_blocked(self.scorer, seen, n, self.item_blocks)
        parts = max(1, pairs.sparkSession.sparkContext.defaultParallelism)
        return recommend_indices_grouped(self._broadcast(pairs.sparkSession), pairs, n, parts)

    def recommend(self, users: DataFrame | None, n: int = 10, seen: DataFrame | None = None,
                  user_col: str = "user", item_col: str = "item") -> DataFrame:
        """Top-n items for the users in `users` (a column `user_col`; None = every known user).

        `seen` (user_col, item_col rows, e.g. the training data) lists items to exclude. Unknown
        users are skipped. Returns user, rank (1..n), item, score with original IDs.
        """
        spark = SparkSession.getActiveSession() if users is None else users.sparkSession
        if users is None:
            idx = spark.range(self.users.size).select(F.col("id").cast("int").alias(USER_IDX))
        else:
            if user_col not in users.columns:
                raise InputError(f"recommend: column {user_col!r} is missing; columns are {users.columns}")
            idx = (self.users.encode(users.select(user_col).distinct(), user_col, USER_IDX)
                   .where(F.col(USER_IDX).isNotNull()).select(USER_IDX))
        if seen is not None:
            pairs = self.items.encode(self.users.encode(seen, user_col, USER_IDX), item_col, ITEM_IDX)
            lists = (pairs.where(F.col(USER_IDX).isNotNull() & F.col(ITEM_IDX).isNotNull())
                     .groupBy(USER_IDX).agg(F.collect_list(ITEM_IDX).alias("seen")))
            idx = idx.join(lists, USER_IDX, "left")
        recs = self.recommend_idx(idx, n)
        return self.decode_recs(recs)

    def decode_recs(self, recs: DataFrame) -> DataFrame:
        """user_idx, rank, item_idx, score -> user, rank, item, score (original IDs)."""
        out = self.items.decode(self.users.decode(recs, USER_IDX, "user"), ITEM_IDX, "item")
        return out.select("user", "rank", "item", "score")

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str, spark: SparkSession | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write model.json and factors/{users,items} under `path` (which must not hold a model yet)."""
        spark = spark or SparkSession.getActiveSession()
        f = self.factors
        for side, ids, fac, b in (("users", self.users.ids, f.X, f.user_bias),
                                 ("items", self.items.ids, f.Y, f.item_bias)):
            fs.write_parquet(spark, posixpath.join(path, "factors", side), factor_table(ids, fac, b))
        fs.write_json(spark, posixpath.join(path, "model.json"), self.describe(extra))

    def describe(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        f = self.factors
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "rank": self.rank, "mu": f.mu,
                "global_mean": self.global_mean, "biases": f.user_bias is not None,
                "rating_range": list(self.rating_range) if self.rating_range else None,
                "n_users": self.users.size, "n_items": self.items.size,
                "user_id_type": str(self.users.ids.type), "item_id_type": str(self.items.ids.type),
                "config": self.config, **(extra or {})}


def load_model(path: str, spark: SparkSession | None = None) -> FactorModel:
    """Load a model folder written by FactorModel.save (or a training run's output folder).

    Raises ModelError naming the file when model.json or a factor table is missing, truncated or
    inconsistent (wrong rank, duplicate or missing IDs).
    """
    spark = spark or SparkSession.builder.getOrCreate()
    meta_path = posixpath.join(path, "model.json")
    if not fs.exists(spark, meta_path):
        raise ModelError(f"{meta_path} does not exist: {path} is not a model folder (a training run's --output)")
    try:
        meta = json.loads(fs.read_text(spark, meta_path))
    except Exception as exc:  # missing file, unreadable, not JSON
        raise ModelError(f"{meta_path}: cannot read the model description ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in ("format_version", "kind", "rank", "mu", "global_mean", "n_users", "n_items"):
        if key not in meta:
            raise ModelError(f"{meta_path}: key {key!r} is missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise ModelError(f"{meta_path}: format_version {meta['format_version']}, this version reads "
                         f"{FORMAT_VERSION}")
    rank = int(meta["rank"])
    sides = []
    for side, n_key in (("users", "n_users"), ("items", "n_items")):
        where = posixpath.join(path, "factors", side)
        try:
            table = spark.read.parquet(where).toArrow().sort_by("id")
        except Exception as exc:
            raise ModelError(f"{where}: cannot read the factor table ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
        if table.num_rows != int(meta[n_key]):
            raise ModelError(f"{where}: {table.num_rows} rows, model.json says {meta[n_key]}")
        ids = table.column("id").combine_chunks()
        if ids.null_count or len(pc.unique(ids)) != len(ids):
            raise ModelError(f"{where}: IDs must be unique and not null")
        try:
            fac, bias = read_factor_table(table, rank, where)
        except InputError as exc:
            raise ModelError(str(exc)) from None
        if meta.get("biases") and bias is None:
            raise ModelError(f"{where}: the model has biases but the table has no bias column")
        sides.append((IdMap(ids, side), fac, bias if meta.get("biases") else None))
    (users, X, bu), (items, Y, bi) = sides
    rr = meta.get("rating_range")
    return FactorModel(meta["kind"], Factors(X, Y, bu, bi, float(meta["mu"])), users, items,
                       float(meta["global_mean"]), tuple(rr) if rr else None, meta.get("config", {}),
                       item_blocks=item_blocks(meta.get("config", {}), X.shape[0], Y.shape[0], spark))
