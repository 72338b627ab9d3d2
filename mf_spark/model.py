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
from mf_spark.blocks import batch_table, buckets
from mf_spark.checkpoint import Factors, factor_table, read_factor_table
from mf_spark.config import ModelConfig
from mf_spark.errors import ConfigError, InputError, ModelError
from mf_spark.index import IdMap
from mf_spark.kernels import compiled
from mf_spark.kernels.topk import top_n
from mf_spark.types import ITEM_IDX, USER_IDX

FORMAT_VERSION = 1
RECS_ARROW = pa.schema([(USER_IDX, pa.int32()), ("rank", pa.int32()), (ITEM_IDX, pa.int32()),
                        ("score", pa.float32())])


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
        return Scorer(self.kind, self.factors, self.global_mean, self.rating_range)

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
        fs.write_text(spark, posixpath.join(path, "model.json"), json.dumps(self.describe(extra), indent=2))

    def describe(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        f = self.factors
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "rank": self.rank, "mu": f.mu,
                "global_mean": self.global_mean, "biases": f.user_bias is not None,
                "rating_range": list(self.rating_range) if self.rating_range else None,
                "n_users": self.users.size, "n_items": self.items.size,
                "user_id_type": str(self.users.ids.type), "item_id_type": str(self.items.ids.type),
                "config": self.config, **(extra or {})}


def recommend_indices(scorer_bc, users: DataFrame, n: int) -> DataFrame:
    """Top-n per row of `users` (user_idx int, seen array<int> or null) -> user_idx, rank, item_idx, score.

    `scorer_bc` is a broadcast Scorer. Scores are X_batch @ Y^T per Arrow batch on the executors,
    the seen items masked (kernels.topk); never a cross join. Performance note: a narrow mapInArrow
    over `users`, no shuffle.
    """
    def recommend(batches):
        f = scorer_bc.value.factors
        for b in batches:
            u = b.column(USER_IDX).to_numpy().astype(np.int64)
            seen = b.column("seen")
            lens = pc.list_value_length(seen).fill_null(0).to_numpy(zero_copy_only=False)
            indptr = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
            cols = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int64)
            yield _recs_batch(f, u, n, indptr, cols)
    seen = F.col("seen") if "seen" in users.columns else F.lit(None)
    frame = users.select(USER_IDX, seen.cast("array<int>").alias("seen"))
    return frame.mapInArrow(recommend, "user_idx int, rank int, item_idx int, score float")


def _recs_batch(f: Factors, u: np.ndarray, n: int, indptr: np.ndarray, cols: np.ndarray) -> pa.RecordBatch:
    """user_idx, rank, item_idx, score of the best n unseen items of users `u` (seen CSR indptr, cols)."""
    offset = (f.mu + f.user_bias[u]) if f.user_bias is not None else None
    counts, items, scores = top_n(f.X[u], f.Y, n, indptr, cols, offset, f.item_bias)
    starts = np.cumsum(counts) - counts
    ranks = (np.arange(items.size) - np.repeat(starts, counts) + 1).astype(np.int32)
    return pa.RecordBatch.from_arrays([pa.array(np.repeat(u, counts).astype(np.int32)), pa.array(ranks),
                                       pa.array(items), pa.array(scores)], schema=RECS_ARROW)


# Users per output batch of recommend_indices_grouped (10 rows each at top-10, as Spark's 10,000-row
# Arrow batches).
GROUPED_BATCH_USERS = 1000
# Pairs a task gathers before it cuts them into one packed piece per destination partition (32 MB).
PIECE_PAIRS = 1 << 22
_PIECE_ARROW = pa.schema([("part", pa.int32()), ("users", pa.binary()), ("items", pa.binary())])


def _pair_pieces(n_parts: int, piece_pairs: int):
    """mapInArrow body: the (user_idx, item_idx) pairs of a partition as packed int32 pieces, one row
    per destination partition (user % n_parts) per `piece_pairs` pairs read."""
    def flush(users: list[np.ndarray], items: list[np.ndarray]) -> pa.RecordBatch:
        u, i = np.concatenate(users), np.concatenate(items)
        return pa.RecordBatch.from_pylist(
            [{"part": p, "users": u[sel].tobytes(), "items": i[sel].tobytes()}
             for p, sel in enumerate(buckets(u % n_parts, n_parts)) if sel.size], schema=_PIECE_ARROW)

    def cut(batches):
        users, items, held = [], [], 0
        for b in batches:
            if not b.num_rows:
                continue
            users.append(b.column(USER_IDX).to_numpy().astype(np.int32, copy=False))
            items.append(b.column(ITEM_IDX).to_numpy().astype(np.int32, copy=False))
            held += b.num_rows
            if held >= piece_pairs:
                yield flush(users, items)
                users, items, held = [], [], 0
        if held:
            yield flush(users, items)
    return cut


def recommend_indices_grouped(scorer_bc, pairs: DataFrame, n: int, n_parts: int,
                              piece_pairs: int = PIECE_PAIRS) -> DataFrame:
    """Top-n for every user in `pairs` (user_idx, item_idx: the items each user has, excluded).

    Each input partition cuts its pairs into one packed piece per destination (user % n_parts); the
    pieces are placed by destination, and each destination groups its users' pairs into a seen-items
    CSR with one sort, then scores its users as recommend_indices does. `piece_pairs`: the pairs a
    task gathers before it cuts them (a piece holds at most that plus one Arrow batch).
    Performance note: the shuffle moves a few large binary rows, not one row per pair (5M ratings,
    4M training pairs: 0.8 s to shuffle the pairs themselves), and no collect_list arrays (their
    groupBy alone took 1.5 s of a 4.3 s top-10 for all 32k users); `scorer_bc` is a broadcast Scorer.
    """
    def recommend(batches):
        t = batch_table(batches)
        if t is None:
            return
        u = np.concatenate([np.frombuffer(x, np.int32) for x in t.column("users").to_pylist()]).astype(np.int64)
        cols = np.concatenate([np.frombuffer(x, np.int32) for x in t.column("items").to_pylist()])
        order = np.argsort(u, kind="stable")
        u, cols = u[order], cols[order].astype(np.int64)
        starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))
        users, indptr = u[starts], np.append(starts, u.size).astype(np.int64)
        f = scorer_bc.value.factors
        for lo in range(0, users.size, GROUPED_BATCH_USERS):
            hi = min(users.size, lo + GROUPED_BATCH_USERS)
            yield _recs_batch(f, users[lo:hi], n, indptr[lo:hi + 1] - indptr[lo], cols[indptr[lo]:indptr[hi]])
    cores = max(1, pairs.sparkSession.sparkContext.defaultParallelism)
    pieces = (pairs.select(F.col(USER_IDX).cast("int").alias(USER_IDX), F.col(ITEM_IDX).cast("int").alias(ITEM_IDX))
              .coalesce(cores)      # one Python task per core to cut them, whatever the partitioning
              .mapInArrow(_pair_pieces(n_parts, piece_pairs), "part int, users binary, items binary"))
    return pieces.repartitionById(n_parts, F.col("part")).mapInArrow(
        recommend, "user_idx int, rank int, item_idx int, score float")


def item_blocks(config: dict, n_users: int, n_items: int, spark: SparkSession) -> int:
    """Item blocks for top-N when the run's config chose the join strategy (0 = broadcast Y)."""
    try:
        model_cfg = ModelConfig(**{k: v for k, v in config.get("model", {}).items()
                                   if k in ModelConfig.__dataclass_fields__})
    except (TypeError, ConfigError):
        return 0
    if model_cfg.strategy_for(n_users, n_items) != "join":
        return 0
    return model_cfg.num_item_blocks or max(1, spark.sparkContext.defaultParallelism)


CHUNK_SCHEMA = "users binary, counts binary, items binary, scores binary"


def _user_chunks(batches):
    """mapInArrow body: each Arrow batch of (user_idx, seen) as one packed chunk of users + seen CSR."""
    for b in batches:
        if not b.num_rows:
            continue
        seen = b.column("seen")
        lens = pc.list_value_length(seen).fill_null(0).to_numpy(zero_copy_only=False)
        cols = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int32)
        yield pa.RecordBatch.from_pylist([{
            "users": b.column(USER_IDX).to_numpy().astype(np.int32).tobytes(),
            "counts": lens.astype(np.int64).tobytes(), "items": cols.tobytes(), "scores": b""}],
            schema=pa.schema([(c, pa.binary()) for c in ("users", "counts", "items", "scores")]))


def _merge_top(a, b, n: int):
    """Two candidate lists of the same users (counts, items, scores) -> the best n per user."""
    users = a[0]
    rows = np.concatenate([np.repeat(np.arange(users.size), a[1]), np.repeat(np.arange(users.size), b[1])])
    items, scores = np.concatenate([a[2], b[2]]), np.concatenate([a[3], b[3]])
    order = np.lexsort((items, -scores, rows))          # per user: best score first, ties by lower item
    rows, items, scores = rows[order], items[order], scores[order]
    starts = np.searchsorted(rows, np.arange(users.size))
    keep = (np.arange(rows.size) - starts[rows]) < n
    return users, np.bincount(rows[keep], minlength=users.size).astype(np.int32), items[keep], scores[keep]


def recommend_indices_blocked(scorer: Scorer, users: DataFrame, n: int, n_blocks: int) -> DataFrame:
    """Top-n per row of `users` without broadcasting the item factors.

    Item b's factors go to one partition of block b (items i with i % n_blocks == b); every chunk of
    users meets every item block once (an RDD cartesian), keeps its best n of that block (seen items
    masked), and the per-block lists are merged per chunk (best score first, ties by lower item
    index, as recommend_indices). Only the user side is broadcast. Performance note: one cartesian
    of user chunks x item blocks, one reduceByKey of n candidates per user and block.
    """
    f = scorer.factors
    spark = users.sparkSession
    sc = spark.sparkContext
    n_items = f.Y.shape[0]
    n_blocks = max(1, min(n_blocks, n_items))
    user_side = sc.broadcast((f.X, (f.mu + f.user_bias) if f.user_bias is not None else None))
    item_blocks = sc.parallelize([(b, f.Y[b::n_blocks], None if f.item_bias is None else f.item_bias[b::n_blocks])
                                  for b in range(n_blocks)], n_blocks)
    seen = F.col("seen") if "seen" in users.columns else F.lit(None)
    chunks = (users.select(USER_IDX, seen.cast("array<int>").alias("seen")).mapInArrow(_user_chunks, CHUNK_SCHEMA)
              .rdd.zipWithUniqueId()
              .map(lambda rk: (rk[1], (np.frombuffer(rk[0]["users"], np.int32), np.frombuffer(rk[0]["counts"], np.int64),
                                       np.frombuffer(rk[0]["items"], np.int32)))))

    def local_top(pair):
        (key, (u, lens, cols)), (b, Yb, bias_b) = pair
        X, offset = user_side.value
        rows = np.repeat(np.arange(u.size), lens)
        mine = cols % n_blocks == b
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[mine], minlength=u.size))]).astype(np.int64)
        counts, items, scores = top_n(X[u], Yb, n, indptr, (cols[mine] // n_blocks).astype(np.int32),
                                      None if offset is None else offset[u], bias_b)
        return key, (u, counts, (items.astype(np.int64) * n_blocks + b).astype(np.int32), scores)

    merged = chunks.cartesian(item_blocks).map(local_top).reduceByKey(lambda a, b: _merge_top(a, b, n))
    packed = merged.map(lambda kv: (kv[1][0].tobytes(), kv[1][1].astype(np.int64).tobytes(), kv[1][2].tobytes(),
                                    kv[1][3].astype(np.float32).tobytes()))

    def unpack(batches):
        for b in batches:
            for r in b.to_pylist():
                u = np.frombuffer(r["users"], np.int32)
                counts = np.frombuffer(r["counts"], np.int64)
                items = np.frombuffer(r["items"], np.int32)
                starts = np.cumsum(counts) - counts
                ranks = (np.arange(items.size) - np.repeat(starts, counts) + 1).astype(np.int32)
                yield pa.RecordBatch.from_arrays(
                    [pa.array(np.repeat(u, counts)), pa.array(ranks), pa.array(items),
                     pa.array(np.frombuffer(r["scores"], np.float32))], schema=RECS_ARROW)
    return (spark.createDataFrame(packed, CHUNK_SCHEMA)
            .mapInArrow(unpack, "user_idx int, rank int, item_idx int, score float"))


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
