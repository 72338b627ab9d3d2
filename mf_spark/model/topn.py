"""Top-N lists: for rows of users, the n best items by a model's scores, seen items excluded, scored
per Arrow batch on the executors (kernels.topk), never a cross join; and a model's recommendations
for every user of its training pairs (the train job's recommendations/ table).

    recommendations            a FactorModel's top-N for every training user, original IDs
    from_top                   the same from the lists the fit's resident tasks scored (als.TopLists)

    recommend_indices          users (user_idx, seen lists) -> top-n rows; factors broadcast
    recommend_indices_grouped  training pairs -> every user's top-n, the pairs grouped by user in
                               packed pieces (no collect_list arrays)
    recommend_indices_blocked  item factors too large to broadcast: users x item blocks, merged
Rows out: user_idx int, rank int (1..n), item_idx int, score float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mf_spark.als.blocks import batch_table, buckets
from mf_spark.core import session
from mf_spark.core.config import RecommendConfig, saved_model_config
from mf_spark.core.errors import ConfigError
from mf_spark.core.types import ITEM_IDX, USER_IDX, Factors
from mf_spark.kernels.topk import positions, top_n

if TYPE_CHECKING:  # the model calls this module's Spark stages; these functions take one
    from mf_spark.model.factors import FactorModel

RECS_ARROW = pa.schema([(USER_IDX, pa.int32()), ("rank", pa.int32()), (ITEM_IDX, pa.int32()), ("score", pa.float32())])


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
    ranks = (positions(counts) + 1).astype(np.int32)
    return pa.RecordBatch.from_arrays(
        [pa.array(np.repeat(u, counts).astype(np.int32)), pa.array(ranks), pa.array(items), pa.array(scores)],
        schema=RECS_ARROW,
    )


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
            [
                {"part": p, "users": u[sel].tobytes(), "items": i[sel].tobytes()}
                for p, sel in enumerate(buckets(u % n_parts, n_parts))
                if sel.size
            ],
            schema=_PIECE_ARROW,
        )

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


def recommend_indices_grouped(
    scorer_bc, pairs: DataFrame, n: int, n_parts: int, piece_pairs: int = PIECE_PAIRS
) -> DataFrame:
    """Top-n for every user in `pairs` (user_idx, item_idx: the items each user has, excluded).

    Each input partition cuts its pairs into one packed piece per destination (user % n_parts); the
    pieces are placed by destination, and each destination groups its users' pairs into a seen-items
    CSR with one sort, then scores its users as recommend_indices does. `piece_pairs`: the pairs a
    task gathers before it cuts them (a piece holds at most that plus one Arrow batch).
    Performance note: the shuffle moves a few large binary rows, not one row per pair, and there
    are no collect_list arrays (their groupBy alone was a third of a top-10 for every user);
    `scorer_bc` is a broadcast Scorer.
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
            yield _recs_batch(f, users[lo:hi], n, indptr[lo : hi + 1] - indptr[lo], cols[indptr[lo] : indptr[hi]])

    cores = session.parallelism(pairs.sparkSession)
    pieces = (
        pairs.select(F.col(USER_IDX).cast("int").alias(USER_IDX), F.col(ITEM_IDX).cast("int").alias(ITEM_IDX))
        .coalesce(cores)  # one Python task per core to cut them, whatever the partitioning
        .mapInArrow(_pair_pieces(n_parts, piece_pairs), "part int, users binary, items binary")
    )
    return pieces.repartitionById(n_parts, F.col("part")).mapInArrow(
        recommend, "user_idx int, rank int, item_idx int, score float"
    )


def item_blocks(config: dict, n_users: int, n_items: int, spark: SparkSession) -> int:
    """Item blocks for top-N when the run's config chose the join strategy (0 = broadcast Y)."""
    try:
        model_cfg = saved_model_config(config, config.get("model", {}).get("kind", "explicit"))
    except ConfigError:
        return 0
    if model_cfg.strategy_for(n_users, n_items) != "join":
        return 0
    return model_cfg.num_item_blocks or session.parallelism(spark)


CHUNK_SCHEMA = "users binary, counts binary, items binary, scores binary"


def _user_chunks(batches):
    """mapInArrow body: each Arrow batch of (user_idx, seen) as one packed chunk of users + seen CSR."""
    for b in batches:
        if not b.num_rows:
            continue
        seen = b.column("seen")
        lens = pc.list_value_length(seen).fill_null(0).to_numpy(zero_copy_only=False)
        cols = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int32)
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "users": b.column(USER_IDX).to_numpy().astype(np.int32).tobytes(),
                    "counts": lens.astype(np.int64).tobytes(),
                    "items": cols.tobytes(),
                    "scores": b"",
                }
            ],
            schema=pa.schema([(c, pa.binary()) for c in ("users", "counts", "items", "scores")]),
        )


def _merge_top(a, b, n: int):
    """Two candidate lists of the same users (counts, items, scores) -> the best n per user."""
    users = a[0]
    rows = np.concatenate([np.repeat(np.arange(users.size), a[1]), np.repeat(np.arange(users.size), b[1])])
    items, scores = np.concatenate([a[2], b[2]]), np.concatenate([a[3], b[3]])
    order = np.lexsort((items, -scores, rows))  # per user: best score first, ties by lower item
    rows, items, scores = rows[order], items[order], scores[order]
    starts = np.searchsorted(rows, np.arange(users.size))
    keep = (np.arange(rows.size) - starts[rows]) < n
    return users, np.bincount(rows[keep], minlength=users.size).astype(np.int32), items[keep], scores[keep]


def recommend_indices_blocked(scorer, users: DataFrame, n: int, n_blocks: int) -> DataFrame:
    """Top-n per row of `users` without broadcasting the item factors.

    Item b's factors go to one partition of block b (items i with i % n_blocks == b); every chunk of
    users meets every item block once (an RDD cartesian), keeps its best n of that block (seen items
    masked), and the per-block lists are merged per chunk (best score first, ties by lower item
    index, as recommend_indices). Only the user side is broadcast. Performance note: one cartesian
    of user chunks x item blocks, one reduceByKey of n candidates per user and block.
    """
    f = scorer.factors
    spark = users.sparkSession
    if session.is_connect(spark):
        raise ConfigError(
            "top-N with item factors too large to broadcast (model.strategy 'join') needs a classic Spark "
            "session: a Spark Connect client has no RDDs; set model.strategy = 'broadcast' or use a classic session"
        )
    sc = spark.sparkContext
    n_items = f.Y.shape[0]
    n_blocks = max(1, min(n_blocks, n_items))
    user_side = sc.broadcast((f.X, (f.mu + f.user_bias) if f.user_bias is not None else None))
    item_blocks = sc.parallelize(
        [(b, f.Y[b::n_blocks], None if f.item_bias is None else f.item_bias[b::n_blocks]) for b in range(n_blocks)],
        n_blocks,
    )
    seen = F.col("seen") if "seen" in users.columns else F.lit(None)
    chunks = (
        users.select(USER_IDX, seen.cast("array<int>").alias("seen"))
        .mapInArrow(_user_chunks, CHUNK_SCHEMA)
        .rdd.zipWithUniqueId()
        .map(lambda rk: (rk[1], _chunk_arrays(rk[0])))
    )
    merged = (
        chunks.cartesian(item_blocks)
        .map(lambda pair: _block_top(pair, user_side.value, n, n_blocks))
        .reduceByKey(lambda a, b: _merge_top(a, b, n))
    )
    packed = merged.map(
        lambda kv: (
            kv[1][0].tobytes(),
            kv[1][1].astype(np.int64).tobytes(),
            kv[1][2].tobytes(),
            kv[1][3].astype(np.float32).tobytes(),
        )
    )
    return spark.createDataFrame(packed, CHUNK_SCHEMA).mapInArrow(
        _unpack_lists, "user_idx int, rank int, item_idx int, score float"
    )


def _chunk_arrays(row) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A packed user chunk (CHUNK_SCHEMA's users, counts, items bytes) as its arrays."""
    return (
        np.frombuffer(row["users"], np.int32),
        np.frombuffer(row["counts"], np.int64),
        np.frombuffer(row["items"], np.int32),
    )


def _block_top(pair, user_side, n: int, n_blocks: int):
    """The best n items of one item block for one chunk of users (their seen items of that block
    masked), the items renumbered back to global indices: (chunk key, (users, counts, items, scores))."""
    (key, (u, lens, cols)), (b, Yb, bias_b) = pair
    X, offset = user_side
    rows = np.repeat(np.arange(u.size), lens)
    mine = cols % n_blocks == b
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[mine], minlength=u.size))]).astype(np.int64)
    local = (cols[mine] // n_blocks).astype(np.int32)
    counts, items, scores = top_n(X[u], Yb, n, indptr, local, None if offset is None else offset[u], bias_b)
    return key, (u, counts, (items.astype(np.int64) * n_blocks + b).astype(np.int32), scores)


def _unpack_lists(batches):
    """mapInArrow body: packed merged lists (CHUNK_SCHEMA plus scores) -> user_idx, rank, item_idx, score rows."""
    for batch in batches:
        for r in batch.to_pylist():
            u, counts, items = _chunk_arrays(r)
            ranks = (positions(counts) + 1).astype(np.int32)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.repeat(u, counts)),
                    pa.array(ranks),
                    pa.array(items),
                    pa.array(np.frombuffer(r["scores"], np.float32)),
                ],
                schema=RECS_ARROW,
            )


def seen_lists(train_idx: DataFrame) -> DataFrame:
    """user_idx, seen array<int>: each user's training items, in as many partitions as Spark has
    cores (not spark.sql.shuffle.partitions: every partition of the later top-N is a Python task,
    and 200 near-empty ones cost seconds). Performance note: one shuffle (lazy); callers that use
    it twice cache it."""
    cores = session.parallelism(train_idx.sparkSession)
    return train_idx.groupBy(USER_IDX).agg(F.collect_list(ITEM_IDX).alias("seen")).coalesce(cores)


def from_top(model: FactorModel, top, n: int) -> pa.Table:
    """user, rank (1..), item, score of the first n of every user's top lists (als.TopLists), with
    the original IDs, as a driver table (fs.write_parquet writes it). Performance note: built on the
    driver from n_users x n entries, no Spark job."""
    counts = np.minimum(top.counts, n).astype(np.int64)
    users = np.repeat(np.arange(counts.size), counts)
    pos = positions(counts)
    table = pa.table(
        {
            "user": model.users.ids.take(pa.array(users)),
            "rank": pa.array((pos + 1).astype(np.int32)),
            "item": model.items.ids.take(pa.array(top.items[users, pos])),
            "score": pa.array(top.scores[users, pos].astype(np.float32)),
        }
    )
    return table


def recommendations(
    model: FactorModel,
    train_idx: DataFrame,
    cfg: RecommendConfig,
    seen: DataFrame | None = None,
    candidates: np.ndarray | None = None,
) -> DataFrame:
    """user, rank (1..N), item, score for every user in `train_idx` (user_idx, item_idx).

    Scores are X_batch @ Y^T on the executors with broadcast factors; the items a user rated in
    train are masked when cfg.exclude_seen (model.recommend_unseen_idx groups `train_idx` by user
    itself, unless `seen` lists are given). Performance note: one shuffle (the training pairs' packed
    pieces placed by user, or the users' distinct list), one broadcast, two broadcast joins to decode the IDs.

    `candidates` ((n_items,) bool, FactorModel.candidate_mask): only those items are recommended.
    """
    if candidates is not None:
        return _recommendations_of(model, train_idx, cfg, candidates)
    if cfg.exclude_seen and seen is None:
        return model.decode_recs(model.recommend_unseen_idx(train_idx, cfg.top_n))
    users = seen if cfg.exclude_seen else train_idx.select(USER_IDX).distinct()
    return model.decode_recs(model.recommend_idx(users, cfg.top_n))


def _recommendations_of(
    model: FactorModel, train_idx: DataFrame, cfg: RecommendConfig, candidates: np.ndarray
) -> DataFrame:
    """recommendations over the candidate items only: the model restricted to them, the training pairs'
    items renumbered into it (pairs of other items cannot be recommended anyway and drop out);
    every user is listed, also one whose training items are all outside the candidates."""
    spark = train_idx.sparkSession
    sub = model.restrict_items(candidates)
    users = spark.range(model.users.size).select(F.col("id").cast("int").alias(USER_IDX))
    if cfg.exclude_seen:
        kept = np.flatnonzero(candidates).astype(np.int32)
        renumber = F.broadcast(
            spark.createDataFrame(pa.table({ITEM_IDX: kept, "_new": np.arange(kept.size, dtype=np.int32)}))
        )
        pairs = train_idx.join(renumber, ITEM_IDX).select(USER_IDX, F.col("_new").alias(ITEM_IDX))
        users = users.join(seen_lists(pairs), USER_IDX, "left")
    return sub.decode_recs(sub.recommend_idx(users, cfg.top_n))
