"""Similar items and similar users ("more like this"): cosine similarity of a model's factor vectors.

    cos(a, b) = y_a . y_b / (|y_a| |y_b|)

The factors of one side are normalized once on the driver (`normalize_rows`) and broadcast; the
query rows go through topn.recommend_indices with that matrix on both sides, so each Arrow batch of
queries is scored as Q_batch @ Yn^T on an executor and its best n kept (kernels.topk), each query's
own row excluded as a "seen" item. No pair table is ever built, in Spark or in memory.

Biases play no part: they shift a prediction by a per-item constant, which says how popular an item
is, not what it is like. A row whose factor vector is all zeros (cosine undefined) gets no list and
appears in no one's list.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mf_spark.core import session
from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, ITEM_IDX, USER, USER_IDX, Factors
from mf_spark.data.index import IdMap
from mf_spark.model.factors import FactorModel, Scorer
from mf_spark.model.topn import recommend_indices

log = logging.getLogger("mf_spark")

# 64 Ki rows of float64 per step (rank 64: 32 MiB): normalizing a large factor matrix never holds a
# float64 copy of all of it.
NORMALIZE_ROWS = 1 << 16
QUERY = "_query"  # index column of the rows whose lists are asked for
# Scores per query task (16 Mi: 1,600 query rows against 10,000 items): a task's fixed cost (its
# scheduling, the broadcast reaching its worker) then stays small beside its product, and a small side
# runs in one task rather than in `defaultParallelism` near-empty ones.
SCORES_PER_TASK = 1 << 24


def normalize_rows(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `factors` scaled to unit length, so that a dot product of two rows is their cosine.

    Parameters
    ----------
    factors : (n, k) float32     factors of one side
    Returns (Fn (n, k) float32, nonzero (n,) bool): all-zero rows stay zero and are False in
    `nonzero`. Lengths are taken in float64: in float32 the squares of components below ~1e-19
    underflow, and a short but non-zero row would pass for a zero one.
    """
    if factors.ndim != 2:
        raise ValueError(f"normalize_rows: expected an (n, k) matrix, got shape {factors.shape}")
    Fn = np.empty(factors.shape, dtype=np.float32)
    nonzero = np.empty(factors.shape[0], dtype=bool)
    for lo in range(0, factors.shape[0], NORMALIZE_ROWS):
        C = factors[lo : lo + NORMALIZE_ROWS].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", C, C))
        nonzero[lo : lo + C.shape[0]] = norms > 0
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        Fn[lo : lo + C.shape[0]] = C * scale[:, None]
    return Fn, nonzero


def cosine_scorer(Fn: np.ndarray, nonzero: np.ndarray) -> Scorer:
    """A Scorer whose user and item factors are both `Fn` (normalized rows), for recommend_indices.

    All-zero rows get an item offset of -inf, so top_n never lists them (it keeps finite scores
    only); with none, no offset is added to the scores.
    """
    offset = None if nonzero.all() else np.where(nonzero, 0.0, -np.inf).astype(np.float32)
    return Scorer("cosine", Factors(Fn, Fn, None, offset, 0.0), 0.0, None)


def similar_indices(spark: SparkSession, Fn: np.ndarray, nonzero: np.ndarray, queries: DataFrame, n: int) -> DataFrame:
    """The n rows most like each row of `queries` (QUERY int) -> user_idx, rank, item_idx, score.

    user_idx is the query row, item_idx a similar row of the same side, score the cosine (float,
    clipped to [-1, 1] against float32 rounding); the query itself is excluded, ties go to the lower
    index. Performance note: one broadcast of Fn (n x k x 4 bytes), then a narrow mapInArrow over
    `queries` (topn.recommend_indices), no shuffle.
    """
    bc = session.broadcast(spark, cosine_scorer(Fn, nonzero))
    rows = queries.select(F.col(QUERY).alias(USER_IDX), F.array(F.col(QUERY)).alias("seen"))
    recs = recommend_indices(bc, rows, n)
    return recs.withColumn("score", F.least(F.greatest("score", F.lit(-1.0)), F.lit(1.0)).cast("float"))


def query_partitions(spark: SparkSession, n_queries: int, n_rows: int) -> int:
    """Tasks for `n_queries` query rows scored against `n_rows` rows: SCORES_PER_TASK scores each, at
    least 1, at most the default parallelism."""
    wanted = -(-n_queries * n_rows // SCORES_PER_TASK)
    return max(1, min(session.parallelism(spark), wanted))


def query_indices(
    spark: SparkSession, ids: IdMap, wanted: DataFrame | None, col: str, nonzero: np.ndarray, what: str
) -> DataFrame:
    """DataFrame[QUERY int]: every row of `ids`, or the distinct known IDs in wanted[col]; rows
    with all-zero factors are dropped. Unknown IDs are skipped; their count, and that of all-zero
    rows, is logged (`what`: "item" or "user").

    Performance note: with `wanted`, one action (the counts of known and unknown IDs) and a broadcast
    join with the ID map; all-zero rows leave through a broadcast anti join. The queries come in
    `query_partitions` partitions (a `wanted` list in more is coalesced to that many).
    """
    if wanted is None:
        q = spark.range(0, ids.size, 1, query_partitions(spark, ids.size, ids.size))
        return _drop_zero_rows(spark, q.select(F.col("id").cast("int").alias(QUERY)), nonzero, what)
    if col not in wanted.columns:
        raise InputError(f"similar {what}s: column {col!r} is missing; columns are {wanted.columns}")
    enc = ids.encode(wanted.select(col).where(F.col(col).isNotNull()).distinct(), col, QUERY)
    counts = dict(enc.groupBy(F.col(QUERY).isNull()).count().collect())
    if counts.get(True):
        log.info("%d requested %ss are not in the model and get no similar %ss", counts[True], what, what)
    q = (
        enc.where(F.col(QUERY).isNotNull())
        .select(QUERY)
        .coalesce(query_partitions(spark, counts.get(False, 0), ids.size))
    )
    return _drop_zero_rows(spark, q, nonzero, what)


def _drop_zero_rows(spark: SparkSession, q: DataFrame, nonzero: np.ndarray, what: str) -> DataFrame:
    """`q` without the rows whose factors are all zero (a broadcast anti join); logs their count."""
    zero = np.flatnonzero(~nonzero).astype(np.int32)
    if zero.size:
        log.info("%d %ss have all-zero factors: they get no similar %ss and are in no list", zero.size, what, what)
        q = q.join(F.broadcast(spark.createDataFrame(pa.table({QUERY: zero}))), QUERY, "left_anti")
    return q


def _similar(ids: IdMap, factors: np.ndarray, n: int, wanted: DataFrame | None, col: str, name: str) -> DataFrame:
    """name, rank, similar_<name>, score for one side (the shared body of similar_items/users)."""
    if n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    spark = wanted.sparkSession if wanted is not None else SparkSession.builder.getOrCreate()
    Fn, nonzero = normalize_rows(factors)
    pairs = similar_indices(spark, Fn, nonzero, query_indices(spark, ids, wanted, col, nonzero, name), n)
    other = f"similar_{name}"
    out = ids.decode(ids.decode(pairs, USER_IDX, name), ITEM_IDX, other)
    return out.select(name, "rank", other, "score")


def similar_items(model: FactorModel, n: int = 10, items: DataFrame | None = None, item_col: str = ITEM) -> DataFrame:
    """The n items most like each item, by cosine of the item factors.

    `items` (a column `item_col` of item IDs; None = every item) chooses whose lists are made;
    unknown IDs are skipped (their count is logged). Returns item, rank (1..n), similar_item, score
    (cosine, float), IDs of the model's type, best first, ties to the lower index; a list is shorter
    than n when fewer other items have a direction. An item is never in its own list; items with
    all-zero factors have no list and are in none.
    """
    return _similar(model.items, model.factors.Y, n, items, item_col, ITEM)


def similar_users(model: FactorModel, n: int = 10, users: DataFrame | None = None, user_col: str = USER) -> DataFrame:
    """The n users most like each user, by cosine of the user factors: user, rank, similar_user,
    score, with the same rules as `similar_items`."""
    return _similar(model.users, model.factors.X, n, users, user_col, USER)
