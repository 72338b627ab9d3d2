"""Read -> validate -> split -> index: what a fit and its evaluation start from, by either front end.

    front = prepare.front_end(spark, run_config, input=..., train=..., test=..., fmt=...)
    loaded = front.load()            # read and validate (counts, rejected rows); InputError on bad input
    ready = front.split_index()      # split, ID maps, training triples, held-out rows, statistics

Two front ends give the same `Ready` (tests/test_prepare.py holds them to it):
    driver  mf_spark.local: Arrow and numpy in the driver process, no Spark job; the training ratings
            stay driver arrays (blocks.Triples) that the resident stage takes directly
    spark   mf_spark.read / validate / split / index: Spark jobs, the training ratings a cached DataFrame
data.front_end = "auto" takes the driver under a local master (its tasks run on this machine anyway)
for local inputs up to data.front_end_max_mb, and Spark otherwise: on a cluster the executors read,
and the driver may have little memory. An input the driver cannot read exactly as Spark would
(local.read.Unreadable: odd quoting, values only Spark's parser can judge, ...) goes to Spark, logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mf_spark import index, read, split, validate
from mf_spark.als import TrainStats, train_stats
from mf_spark.blocks import Triples
from mf_spark.config import RunConfig
from mf_spark.evaluate import HeldOut, collect_heldout, heldout_of
from mf_spark.index import IdMap
from mf_spark.local import read as local_read
from mf_spark.local import split as local_split
from mf_spark.local import validate as local_validate
from mf_spark.types import ITEM, PART, RATING, USER

log = logging.getLogger("mf_spark")


@dataclass
class Loaded:
    counts: dict[str, int]          # validate.Cleaned.counts
    rejected: DataFrame | pa.Table | None   # the rejected rows with their reasons, when there are any


@dataclass
class Ready:
    users: IdMap
    items: IdMap
    train: DataFrame | Triples      # user_idx, item_idx, rating
    heldout: HeldOut
    stats: TrainStats
    front: str                      # "driver" | "spark"
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


class SparkFront:
    """The Spark stages (read.ratings, validate.clean, split.split, index.encode_split)."""
    name = "spark"

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source):
        self.spark, self.cfg, self.source = spark, cfg, source

    def load(self) -> Loaded:
        cfg, src = self.cfg, self.source
        if not src.train:
            raw = read.ratings(self.spark, src.input, src.fmt, cfg.data)
        else:      # a given train/test pair is validated in one pass (types.PART)
            raws = [read.ratings(self.spark, p, src.fmt, cfg.data) for p in src.paths]
            differ = {c for c in raws[0].columns if raws[0].schema[c].dataType != raws[1].schema[c].dataType}
            raws = [r.select(*[F.col(c).cast("string").alias(c) if c in differ else F.col(c) for c in r.columns])
                    .withColumn(PART, F.lit(part)) for part, r in enumerate(raws)]
            raw = raws[0].unionByName(raws[1])
        self.cleaned = validate.clean(raw, cfg.data, cfg.model.kind)
        counts = dict(self.cleaned.counts)
        return Loaded(counts, self.cleaned.rejected if counts["n_rejected"] else None)

    def split_index(self) -> Ready:
        ratings = self.cleaned.ratings
        if self.source.train:
            train, test = (ratings.where(F.col(PART) == p).drop(PART) for p in (0, 1))
        else:
            train, test = split.split(ratings, self.cfg.split)
            if self.cfg.split.method != "random":    # a window by user: computed once, not per use
                train = train.cache()
        enc = index.encode_split(train)
        heldout = collect_heldout(test, enc.users, enc.items)
        stats = train_stats(enc.train_idx)      # materializes train_idx: the cleaned rows can go
        self.cleaned.release()
        return Ready(enc.users, enc.items, enc.train_idx, heldout, stats, self.name,
                     [enc.train_idx.unpersist, train.unpersist])


class DriverFront:
    """The same stages in the driver process (mf_spark.local); `load` raises local.read.Unreadable
    when the input is one for Spark."""
    name = "driver"

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source):
        self.spark, self.cfg, self.source = spark, cfg, source

    def load(self) -> Loaded:
        cfg, src = self.cfg, self.source
        tables = [local_read.table(p, src.fmt, cfg.data) for p in src.paths]
        if src.train:
            differ = {c for c in tables[0].column_names if tables[0].schema.field(c).type != tables[1].schema.field(c).type}
            tables = [pa.table({c: local_validate.as_text(t.column(c)) if c in differ else t.column(c)
                                for c in t.column_names}).append_column(PART, pa.array(np.full(t.num_rows, part, np.int32)))
                      for part, t in enumerate(tables)]
        raw = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        self.clean = local_validate.clean(raw, cfg.data, cfg.model.kind)
        return Loaded(dict(self.clean.counts), self.clean.rejected if self.clean.counts["n_rejected"] else None)

    def split_index(self) -> Ready:
        ratings = self.clean.ratings
        if self.source.train:
            part = ratings.column(PART).to_numpy()
            is_test = part == 1
            ratings = ratings.drop_columns([PART])
        else:
            is_test = local_split.test_mask(ratings, self.cfg.split)
        train, test = ratings.filter(pa.array(~is_test)), ratings.filter(pa.array(is_test))
        users = index.sorted_map(pc.unique(train.column(USER)), USER)
        items = index.sorted_map(pc.unique(train.column(ITEM)), ITEM)
        triples = Triples(self.spark, users.index_of(train.column(USER)), items.index_of(train.column(ITEM)),
                          train.column(RATING).to_numpy().astype(np.float64))
        heldout = heldout_of(test, users, items)
        self.clean = None
        return Ready(users, items, triples, heldout, train_stats(triples), self.name, [triples.unpersist])


class _Chosen:
    """The driver front end when it can read the input, else Spark's (decided in `load`)."""

    def __init__(self, spark: SparkSession, cfg: RunConfig, source: _Source, driver_first: bool):
        self.spark, self.cfg, self.source, self.driver_first = spark, cfg, source, driver_first
        self.front: DriverFront | SparkFront | None = None

    @property
    def name(self) -> str:
        return self.front.name if self.front else "?"

    @property
    def on_driver(self) -> bool:
        """Whether the training ratings will most likely stay driver arrays (decided in `load`)."""
        return self.driver_first if self.front is None else isinstance(self.front, DriverFront)

    def load(self) -> Loaded:
        if self.driver_first:
            front = DriverFront(self.spark, self.cfg, self.source)
            try:
                loaded = front.load()
                self.front = front
                return loaded
            except local_read.Unreadable as e:
                log.info("reading the input with Spark: the driver cannot read it as Spark would (%s)", e)
        self.front = SparkFront(self.spark, self.cfg, self.source)
        return self.front.load()

    def split_index(self) -> Ready:
        return self.front.split_index()


def front_end(spark: SparkSession, cfg: RunConfig, input: str | None = None, train: str | None = None,
              test: str | None = None, fmt: str = "auto") -> _Chosen:
    """The front end for this input under data.front_end (see the module docstring)."""
    source = _Source(input, train, test, fmt)
    want = cfg.data.front_end
    driver = want == "driver"
    if want == "auto" and spark.sparkContext.master.startswith("local"):
        try:
            size = sum(local_read.input_bytes(p) for p in source.paths)
            driver = size <= cfg.data.front_end_max_mb * 2**20
            if not driver:
                log.info("reading the input with Spark: %.0f MB > data.front_end_max_mb", size / 2**20)
        except (local_read.Unreadable, OSError):
            driver = False
    return _Chosen(spark, cfg, source, driver)
