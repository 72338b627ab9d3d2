"""Top-N recommendations for every user of a fitted model, excluding what each user rated in train."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mf_spark.core.config import RecommendConfig
from mf_spark.model.factors import FactorModel
from mf_spark.core.types import ITEM_IDX, USER_IDX


def seen_lists(train_idx: DataFrame) -> DataFrame:
    """user_idx, seen array<int>: each user's training items, in as many partitions as Spark has
    cores (not spark.sql.shuffle.partitions: every partition of the later top-N is a Python task,
    and 200 near-empty ones cost seconds). Performance note: one shuffle (lazy); callers that use
    it twice cache it."""
    cores = max(1, train_idx.sparkSession.sparkContext.defaultParallelism)
    return train_idx.groupBy(USER_IDX).agg(F.collect_list(ITEM_IDX).alias("seen")).coalesce(cores)


def from_top(model: FactorModel, top, n: int) -> pa.Table:
    """user, rank (1..), item, score of the first n of every user's top lists (als.TopLists), with
    the original IDs, as a driver table (fs.write_parquet writes it). Performance note: built on the
    driver from n_users x n entries, no Spark job."""
    counts = np.minimum(top.counts, n).astype(np.int64)
    users = np.repeat(np.arange(counts.size), counts)
    pos = np.arange(users.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table = pa.table({"user": model.users.ids.take(pa.array(users)), "rank": pa.array((pos + 1).astype(np.int32)),
                      "item": model.items.ids.take(pa.array(top.items[users, pos])),
                      "score": pa.array(top.scores[users, pos].astype(np.float32))})
    return table


def top_n(model: FactorModel, train_idx: DataFrame, cfg: RecommendConfig,
          seen: DataFrame | None = None, candidates: np.ndarray | None = None) -> DataFrame:
    """user, rank (1..N), item, score for every user in `train_idx` (user_idx, item_idx).

    Scores are X_batch @ Y^T on the executors with broadcast factors; the items a user rated in
    train are masked when cfg.exclude_seen (model.recommend_unseen_idx groups `train_idx` by user
    itself, unless `seen` lists are given). Performance note: one shuffle (the training pairs' packed
    pieces placed by user, or the users' distinct list), one broadcast, two broadcast joins to decode the IDs.

    `candidates` ((n_items,) bool, FactorModel.candidate_mask): only those items are recommended.
    """
    if candidates is not None:
        return _top_n_of(model, train_idx, cfg, candidates)
    if cfg.exclude_seen and seen is None:
        return model.decode_recs(model.recommend_unseen_idx(train_idx, cfg.top_n))
    users = seen if cfg.exclude_seen else train_idx.select(USER_IDX).distinct()
    return model.decode_recs(model.recommend_idx(users, cfg.top_n))


def _top_n_of(model: FactorModel, train_idx: DataFrame, cfg: RecommendConfig, candidates: np.ndarray) -> DataFrame:
    """top_n over the candidate items only: the model restricted to them, the training pairs'
    items renumbered into it (pairs of other items cannot be recommended anyway and drop out);
    every user is listed, also one whose training items are all outside the candidates."""
    spark = train_idx.sparkSession
    sub = model.restrict_items(candidates)
    users = spark.range(model.users.size).select(F.col("id").cast("int").alias(USER_IDX))
    if cfg.exclude_seen:
        kept = np.flatnonzero(candidates).astype(np.int32)
        renumber = F.broadcast(spark.createDataFrame(pa.table({ITEM_IDX: kept, "_new": np.arange(kept.size, dtype=np.int32)})))
        pairs = train_idx.join(renumber, ITEM_IDX).select(USER_IDX, F.col("_new").alias(ITEM_IDX))
        users = users.join(seen_lists(pairs), USER_IDX, "left")
    return sub.decode_recs(sub.recommend_idx(users, cfg.top_n))
