"""Read -> validate -> split -> index: what a fit and its evaluation start from, wherever it runs.

    front = prepare.front_end(spark, run_config, input=..., train=..., test=..., fmt=...)
    loaded = front.load()            # read and validate (counts, rejected rows); InputError on bad input
    ready = front.split_index()      # split, ID maps, training triples, held-out rows, statistics
    outer, inner = front.tuning_split(validation)   # the same, and the training part split again

One front end (mf_spark.data.front: Arrow functions), in one of two places, and Spark SQL's stages for
what Arrow cannot read as Spark would; all give the same `Ready` (tests/data/test_front_contract.py):
    driver     the functions in the driver process, no Spark job; the training ratings stay driver
               arrays (ready.Triples) that the resident stage takes directly
    spark      the same functions in executor tasks (one job): the executors read the files and keep
               the training ratings in their cache with their IDs as read (ready.Keyed: the resident
               stage indexes them as it reads them); the driver holds counts, ID maps and the
               held-out rows up to eval.driver_rows (past it a sample of users': the final
               metrics then run where the rows are)
    spark-sql  mf_spark.data.read / validate / split / index: Spark SQL jobs, only for inputs
               local.read.Unreadable names (odd quoting, values only Spark's parser can judge,
               files not on a local path, ...), logged
data.front_end = "auto" takes the driver under a local master for local inputs up to
data.front_end_max_mb (its tasks run on this machine anyway), and the executors otherwise: on a
cluster they read where the data is, and the driver may have little memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mf_spark.core import fs, session
from mf_spark.core.config import DataConfig, EvalConfig, RunConfig, SplitConfig
from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, PART, RATING, ROW, SOURCE, TIMESTAMP, USER
from mf_spark.data import front, index, read, split, validate
from mf_spark.data.index import IdMap
from mf_spark.data.local import read as local_read
from mf_spark.data.local import validate as local_validate
from mf_spark.data.ready import (
    HeldOut,
    Keyed,
    TrainStats,
    Triples,
    heldout_of,
    timestamps,
    train_stats,
)
from mf_spark.data.validate import exact_column

log = logging.getLogger("mf_spark")


@dataclass
class Loaded:
    counts: dict[str, int]  # validate.Cleaned.counts
    rejected: DataFrame | pa.Table | None  # the rejected rows with their reasons, when there are any


@dataclass
class Ready:
    users: IdMap
    items: IdMap
    train: DataFrame | Triples | Keyed  # user_idx, item_idx, rating (Keyed: IDs as read, and their maps)
    heldout: HeldOut
    stats: TrainStats
    front: str  # "driver" | "spark"
    _release: list = field(default_factory=list)

    def release(self) -> None:
        """Drop what the front end cached (after the fit and the outputs that read `train`)."""
        for drop in self._release:
            drop()
        self._release.clear()


@dataclass
class _Source:
    input: str | None
    train: str | None
    test: str | None
    fmt: str

    @property
    def paths(self) -> list[str]:
        return [self.train, self.test] if self.train else [self.input]


# Nothing held out: a training set used whole (a DataFrame given to mf_spark.ml.ALS.fit).
NO_HELDOUT = HeldOut(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float64))


def spark_ready(
    train: DataFrame,
    test: DataFrame | None,
    release: list | tuple = (),
    name: str = "spark-sql",
    driver_rows: int = EvalConfig().driver_rows,
) -> Ready:
    """Ready from validated training (and held-out) ratings by Spark: ID maps, the encoded training
    rows (cached), held-out rows (front.frame_held_out, up to `driver_rows` on the driver), statistics.
    Performance note: one action for the ID maps, one aggregate that materializes the cached encoded
    ratings (Ready.release drops them, and `release`)."""
    enc = index.encode_split(train)
    heldout = NO_HELDOUT if test is None else front.frame_held_out(test, enc.users, enc.items, driver_rows)
    if heldout.rest is not None:
        release = [*release, heldout.rest.packed.unpersist]
    return Ready(
        enc.users,
        enc.items,
        enc.train_idx,
        heldout,
        train_stats(enc.train_idx),
        name,
        [enc.train_idx.unpersist, *release],
    )


def driver_ready(
    spark: SparkSession,
    train: pa.Table,
    test: pa.Table | None,
    maps: tuple[IdMap, IdMap] | None = None,
    stats: TrainStats | None = None,
) -> Ready:
    """The same from driver tables (local.validate's ratings): ID maps (unless given) and index arrays
    in numpy, no Spark job."""
    users, items = maps or (
        index.sorted_map(pc.unique(train.column(USER)), USER),
        index.sorted_map(pc.unique(train.column(ITEM)), ITEM),
    )
    triples = Triples(
        spark,
        users.index_of(train.column(USER)),
        items.index_of(train.column(ITEM)),
        train.column(RATING).to_numpy().astype(np.float64),
        timestamps(train.column(TIMESTAMP) if TIMESTAMP in train.column_names else None, train.num_rows),
    )
    heldout = NO_HELDOUT if test is None else heldout_of(test, users, items)
    return Ready(users, items, triples, heldout, stats or train_stats(triples), DriverFront.name, [triples.unpersist])


class SqlFront:
    """The Spark SQL stages (read.ratings, validate.clean, split.split, index.encode_split): for inputs
    the Arrow front end cannot read exactly as Spark would (local.read.Unreadable), and DataFrames."""

    name = "spark-sql"

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source):
        self.spark, self.cfg, self.source = spark, cfg, source

    def load(self) -> Loaded:
        cfg, src = self.cfg, self.source
        if not src.train:
            raw = read.ratings(self.spark, src.input, src.fmt, cfg.data, cfg.events)
        else:  # a given train/test pair is validated in one pass (types.PART)
            raws = [read.ratings(self.spark, p, src.fmt, cfg.data, cfg.events) for p in src.paths]
            differ = {c for c in raws[0].columns if raws[0].schema[c].dataType != raws[1].schema[c].dataType}
            raws = [
                r.select(
                    *[F.col(c).cast("string").alias(c) if c in differ else F.col(c) for c in r.columns]
                ).withColumn(PART, F.lit(part))
                for part, r in enumerate(raws)
            ]
            raw = raws[0].unionByName(raws[1])
        self.cleaned = validate.clean(raw, cfg.data, cfg.model.kind)
        counts = dict(self.cleaned.counts)
        return Loaded(counts, self.cleaned.rejected if counts["n_rejected"] else None)

    def _halves(self) -> tuple[DataFrame, DataFrame]:
        ratings = self.cleaned.ratings
        if self.source.train:
            return tuple(ratings.where(F.col(PART) == p).drop(PART) for p in (0, 1))
        train, test = split.split(ratings, self.cfg.split)
        if self.cfg.split.method != "random":  # a window by user: computed once, not per use
            train = train.cache()
        return train, test

    def split_index(self) -> Ready:
        train, test = self._halves()
        ready = spark_ready(train, test, [train.unpersist], self.name, self.cfg.eval.driver_rows)
        self.cleaned.release()
        return ready

    def tuning_split(self, validation: SplitConfig) -> tuple[Ready, Ready]:
        train, test = self._halves()
        fit, held = split.split(train, validation)
        if validation.method != "random":
            fit = fit.cache()
        rows = self.cfg.eval.driver_rows
        inner = spark_ready(fit, held, [fit.unpersist], self.name, rows)
        outer = spark_ready(train, test, [train.unpersist], self.name, rows)
        self.cleaned.release()
        return outer, inner


_PENDING = {"n_duplicates_merged": None, "n_clean": None}  # known once the rows are merged (split_index)


class DriverFront:
    """The Arrow front end in the driver process (front.InProcess); `load` raises local.read.Unreadable
    when the input is one for Spark's reader. It splits when asked (`validation` is TaskFront's)."""

    name = "driver"

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source, validation: SplitConfig | None = None):
        self.spark, self.cfg, self.source = spark, cfg, source

    def load(self) -> Loaded:
        self.steps = front.InProcess(
            front.Input.of(self.source.paths, self.source.fmt, self.cfg.data, self.cfg.events), self.cfg
        )
        counts, rejected = self.steps.load()
        self.counts = {**counts, **_PENDING}
        return Loaded(self.counts, rejected if counts["n_rejected"] else None)

    def _ready(self, part: front.Split) -> Ready:
        return driver_ready(self.spark, part.train, part.test, (part.users, part.items), part.stats)

    def split_index(self) -> Ready:
        got = self.steps.split()
        self.counts.update(got.counts)
        return self._ready(got)

    def tuning_split(self, validation: SplitConfig) -> tuple[Ready, Ready]:
        got = self.steps.split(validation)
        self.counts.update(got.counts)
        return self._ready(got), self._ready(got.inner)


def _planned(spark: SparkSession, source: _Source, cfg: RunConfig) -> front.Input:
    """The input's files listed and their first file peeked, where they are: here, or for a Spark
    Connect client (which may not see the cluster's files) in a task."""
    if not session.is_connect(spark):
        return front.Input.of(source.paths, source.fmt, cfg.data, cfg.events)
    paths = [fs.server_path(spark, p) for p in source.paths]
    return session.on_cluster(spark, front.Input.of, paths, source.fmt, cfg.data, cfg.events)


class TaskFront:
    """The same Arrow front end in executor tasks (front.Tasks): the executors read their files, and
    the training ratings stay in their cache (ready.Keyed)."""

    name = "spark"

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source, validation: SplitConfig | None = None):
        self.spark, self.cfg, self.source, self.validation = spark, cfg, source, validation

    def load(self) -> Loaded:
        source = _planned(self.spark, self.source, self.cfg)
        # As many user groups as the resident stage has tasks, so that it reads the rows where they are.
        self.steps = front.Tasks(self.spark, source, self.cfg, session.parallelism(self.spark))
        counts, rejected = self.steps.load(self.validation)
        self.counts = {**counts, **_PENDING}
        return Loaded(self.counts, rejected if counts["n_rejected"] else None)

    def _ready(self, part: front.Split, release: list) -> Ready:
        train = self.steps.keyed(part)
        if isinstance(part.test, pa.Table):
            heldout = heldout_of(part.test, part.users, part.items)
        else:
            heldout = front.held_out(part.test, part.users, part.items, self.cfg.eval.driver_rows)
        return Ready(part.users, part.items, train, heldout, part.stats, self.name, [train.unpersist, *release])

    def split_index(self) -> Ready:
        got = self.steps.split()
        self.counts.update(got.counts)
        return self._ready(got, [self.steps.release])

    def tuning_split(self, validation: SplitConfig) -> tuple[Ready, Ready]:
        got = self.steps.split(validation)
        self.counts.update(got.counts)
        return self._ready(got, [self.steps.release]), self._ready(got.inner, [])


class _Chosen:
    """The Arrow front end (in the driver or in tasks) when it can read the input as Spark would, else
    the Spark SQL stages (decided in `load`)."""

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source, arrow: type, validation=None):
        self.spark, self.cfg, self.source, self.arrow, self.validation = spark, cfg, source, arrow, validation
        self.front: DriverFront | TaskFront | SqlFront | None = None

    @property
    def name(self) -> str:
        return self.front.name if self.front else "?"

    @property
    def on_driver(self) -> bool:
        """Whether the training ratings will most likely stay driver arrays (decided in `load`)."""
        return self.arrow is DriverFront if self.front is None else isinstance(self.front, DriverFront)

    def load(self) -> Loaded:
        if self.arrow is not SqlFront:
            chosen = self.arrow(self.spark, self.cfg, self.source, self.validation)
            try:
                loaded = chosen.load()
                self.front = chosen
                return loaded
            except local_read.Unreadable as e:
                log.info("reading the input with Spark SQL: Arrow cannot read it as Spark would (%s)", e)
        self.front = SqlFront(self.spark, self.cfg, self.source)
        return self.front.load()

    def split_index(self) -> Ready:
        return self.front.split_index()

    def tuning_split(self, validation: SplitConfig) -> tuple[Ready, Ready]:
        """(train vs test, as split_index gives it; and the training ratings split again by
        `validation`: the fit part vs the validation part), for a tuning search that never reads
        the test set."""
        return self.front.tuning_split(validation)


def front_end(
    spark: SparkSession,
    cfg: RunConfig,
    input: str | None = None,
    train: str | None = None,
    test: str | None = None,
    fmt: str = "auto",
    sql: bool = False,
    validation: SplitConfig | None = None,
) -> _Chosen:
    """The front end for this input under data.front_end (see the module docstring); `sql`: the Spark
    SQL stages whatever the input (for tests that hold the fronts to each other); `validation`: the
    split tuning_split will be asked for (the tasks then split in the same job)."""
    source = _Source(input, train, test, fmt)
    want = cfg.data.front_end
    arrow = SqlFront if sql else DriverFront if want == "driver" else TaskFront
    if want == "auto" and not sql and session.is_local(spark):
        try:
            size = sum(local_read.input_bytes(p) for p in source.paths)
            if size <= cfg.data.front_end_max_mb * 2**20:
                arrow = DriverFront
            else:
                log.info("reading the input in Spark tasks: %.0f MB > data.front_end_max_mb", size / 2**20)
        except (local_read.Unreadable, OSError):
            pass
    return _Chosen(spark, cfg, source, arrow, validation)


class TableFront(TaskFront):
    """A catalog table (--input-table, rows filtered by --where) as the input: its rows in raw_frame's
    layout, checked, split and indexed by the front end's functions in executor tasks (one job, as
    for files on a cluster); by Spark SQL's stages only where Arrow cannot judge a value as Spark
    would (logged). `load` raises InputError for a table that is missing or has no such columns."""

    def __init__(self, spark: SparkSession, cfg: RunConfig, table: str, where: str | None, validation=None):
        self.spark, self.cfg, self.validation, self.table, self.where = spark, cfg, validation, table, where
        self.sql: SqlFront | None = None

    def raw(self) -> DataFrame:
        what = f"table {self.table}" + (f" where {self.where}" if self.where else "")
        try:
            df = self.spark.table(self.table)
            if self.where:
                df = df.where(self.where)
            columns = df.columns
        except Exception as e:  # noqa: BLE001 - Spark's AnalysisException, classic or Connect
            raise InputError(f"--input-table {what}: {str(e).splitlines()[0]}") from None
        cfg = self.cfg.data
        at = read.choose_columns(columns, cfg, True, what, self.cfg.events)
        name = {key: columns[pos] if pos is not None else "" for key, pos in at.items()}
        return raw_frame(df, name[USER], name[ITEM], name[RATING], name[TIMESTAMP]).withColumn(SOURCE, F.lit(what))

    def load(self) -> Loaded:
        raw = self.raw()
        self.steps = front.Tasks(
            self.spark, front.Frame(raw, f"table {self.table}", given=False), self.cfg, session.parallelism(self.spark)
        )
        try:
            counts, rejected = self.steps.load(self.validation)
        except local_read.Unreadable as e:
            log.info("validating the table with Spark SQL: Arrow cannot read it as Spark would (%s)", e)
            self.sql = SqlFront(self.spark, self.cfg, _Source(None, None, None, "table"))
            self.sql.cleaned = validate.clean(raw, self.cfg.data, self.cfg.model.kind)
            counts = dict(self.sql.cleaned.counts)
            return Loaded(counts, self.sql.cleaned.rejected if counts["n_rejected"] else None)
        self.counts = {**counts, **_PENDING}
        return Loaded(self.counts, rejected if counts["n_rejected"] else None)

    @property
    def name(self) -> str:
        return SqlFront.name if self.sql else TaskFront.name

    @property
    def on_driver(self) -> bool:
        return False

    def split_index(self) -> Ready:
        return self.sql.split_index() if self.sql else super().split_index()

    def tuning_split(self, validation: SplitConfig) -> tuple[Ready, Ready]:
        return self.sql.tuning_split(validation) if self.sql else super().tuning_split(validation)


# ---- a DataFrame instead of files (mf_spark.ml.ALS.fit): validate -> index, nothing held out ------------
FRAME_SOURCE = "the DataFrame given to ALS.fit"  # names the input in validation errors


def raw_frame(df: DataFrame, user_col: str, item_col: str, rating_col: str, timestamp_col: str = "") -> DataFrame:
    """`df`'s rows in read.ratings' raw layout (user, item, rating, timestamp, _source, _row), so that
    validate.clean treats it as the train job treats a file; ratingCol "" gives every row 1.0, and
    timestamp_col "" none a timestamp (a timestamp type counts in seconds). IDs as a file's native
    columns are read (read.id_column), which either front end takes."""

    def ids(col: str) -> Column:
        return read.id_column(exact_column(col), df.schema[col].dataType)

    rating = exact_column(rating_col) if rating_col else F.lit(1.0)
    if not timestamp_col:
        ts = F.lit(None).cast("long")
    elif isinstance(df.schema[timestamp_col].dataType, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        ts = exact_column(timestamp_col).cast("timestamp").cast("long")
    else:
        ts = exact_column(timestamp_col)
    return df.select(
        ids(user_col).alias(USER),
        ids(item_col).alias(ITEM),
        rating.alias(RATING),
        ts.alias(TIMESTAMP),
        F.lit(FRAME_SOURCE).alias(SOURCE),
        F.monotonically_increasing_id().alias(ROW),
    )


# Spark's size for a plan it cannot measure (a Python RDD's) is Long.MaxValue, scaled by projections
# and unions: no real estimate comes near an exabyte.
UNKNOWN_SIZE = 2**60
RAW_ROW_BYTES = 64  # a raw row in Arrow: IDs, rating, timestamp, _row, and the _source text


def _size_estimate(df: DataFrame) -> int | None:
    """Spark's estimate of `df`'s size in bytes (the one it plans broadcast joins with), or None
    where the API is missing (Spark Connect)."""
    try:
        return int(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes())
    except Exception:  # noqa: BLE001 - an internal API
        return None


def _driver_table(raw: DataFrame, cfg: DataConfig) -> pa.Table | None:
    """`raw` collected for the driver front end, or None when Spark's front end is to validate it
    (data.front_end). 'auto' takes the driver under a local master for a frame of at most
    data.front_end_max_mb, the train job's rule for local files (its tasks run on this machine anyway,
    and the Spark stages' dozen jobs cost more than such data): by Spark's estimate, or where Spark
    has none, by collecting at most that many bytes' rows. Ratings of other types than numbers or
    text are Spark's (local.read hands the driver front end no others).

    Performance note: one collect (a limited one for a frame of unknown size), none for Spark's."""
    if cfg.front_end == "spark" or not isinstance(raw.schema[RATING].dataType, (T.NumericType, T.StringType)):
        return None
    if cfg.front_end == "driver":
        return raw.toArrow()
    if not session.is_local(raw.sparkSession):
        return None
    budget = int(cfg.front_end_max_mb * 2**20)
    size = _size_estimate(raw)
    if size is None or budget < size < UNKNOWN_SIZE:
        return None
    if size <= budget:
        return raw.toArrow()
    rows = budget // RAW_ROW_BYTES
    table = raw.limit(rows + 1).toArrow()
    return table if table.num_rows <= rows else None


def frame_ready(raw: DataFrame, run: RunConfig, keep_pairs: bool = False) -> tuple[Ready, DataFrame | None]:
    """The training ratings of `raw` (raw_frame's layout) validated, de-duplicated and indexed as the
    train job does it: in the driver when _driver_table collects it, else in executor tasks
    (front.Frame), and by Spark SQL's stages only where Arrow cannot parse a value as Spark would; and
    with `keep_pairs` their user, item pairs (original IDs), for excludeSeen. Performance note:
    driver: one collect; tasks: one job (and one to cache the pairs)."""
    spark = raw.sparkSession
    table = _driver_table(raw, run.data)
    if table is not None:
        try:
            clean = local_validate.clean(table, run.data, run.model.kind)
        except local_read.Unreadable as e:
            log.info("validating the DataFrame with Spark: the driver cannot read it as Spark would (%s)", e)
        else:
            pairs = spark.createDataFrame(clean.ratings.select([USER, ITEM])) if keep_pairs else None
            return driver_ready(spark, clean.ratings, None), pairs
    try:
        return _tasks_frame_ready(raw, run, keep_pairs)
    except local_read.Unreadable as e:
        log.info("validating the DataFrame with Spark SQL: Arrow cannot read it as Spark would (%s)", e)
    cleaned = validate.clean(raw, run.data, run.model.kind)
    pairs = None
    try:
        if keep_pairs:  # cached before the validation cache they read goes
            pairs = cleaned.ratings.select(USER, ITEM).cache()
            pairs.count()
        ready = spark_ready(cleaned.ratings, None)
    finally:
        cleaned.release()
    return ready, pairs


def _tasks_frame_ready(raw: DataFrame, run: RunConfig, keep_pairs: bool) -> tuple[Ready, DataFrame | None]:
    """frame_ready by the front end's functions in executor tasks (front.Frame): one job, and with
    `keep_pairs` one more that caches the pairs."""
    spark = raw.sparkSession
    steps = front.Tasks(spark, front.Frame(raw, FRAME_SOURCE), run, session.parallelism(spark))
    steps.load()
    got = steps.split()
    pairs = None
    if keep_pairs:  # cached apart: they outlive the tasks' cache (Ready.release)
        pairs = steps.unpacked(got.train).select(USER, ITEM).cache()
        pairs.count()
    train = steps.keyed(got)
    return Ready(got.users, got.items, train, NO_HELDOUT, got.stats, TaskFront.name, [steps.release]), pairs
