"""The one front end: read -> validate -> split -> index as functions of Arrow tables, run in the driver
process or inside executor tasks, the same functions either way.

    per file     Input.read_file + local.validate.check     rows judged alone: valid, rejected, counts
    (driver)     local.validate.judge                       too many rejected, nothing valid
    per users    local.validate.merge + local.split.test_mask   repeated pairs merged, the split
    (driver)     ID maps (sorted), held-out rows, statistics
    per rows     the training rows' IDs to indices

A file's rows are judged alone and a user's rows are merged and split together and apart from other
users', so how the files and the users are grouped cannot change a result: `InProcess` runs each
step once over everything, `Tasks` runs the per-file step as one task per piece of a file and the
per-user step as one task per group of users (mapInArrow, the DataFrame API only; the rows pass between
them and stay in the tasks' cache as packed Arrow pieces, ready.pack), and both give the same counts,
rejected rows, errors, split, ID maps and training ratings. On a cluster the ratings then never pass
through the driver: it holds counts, the ID maps and the held-out rows (a sample of users' past
eval.driver_rows, all of them staying in the tasks' cache).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_type

from mf_spark.core.config import RunConfig, SplitConfig
from mf_spark.core.errors import InputError
from mf_spark.core.types import FILE, ITEM, ITEM_IDX, PART, RATING, REASON, ROW, SOURCE, TIMESTAMP, USER, USER_IDX
from mf_spark.data import validate as spark_rules
from mf_spark.data.index import IdMap, sorted_map
from mf_spark.data.local import read as local_read
from mf_spark.data.local import split as local_split
from mf_spark.data.local import validate as local_validate
from mf_spark.data.local.read import COLUMNS, Plan, Unreadable
from mf_spark.data.ready import (
    FEW_VALUES,
    PACKED,
    HeldOut,
    HeldRows,
    Keyed,
    TrainStats,
    heldout_of,
    pack,
    timestamps,
    typed,
    typed_pieces,
    unpack,
    value_counts,
)

log = logging.getLogger("mf_spark")

KIND = "_kind"  # what a row of a task's output is (the _K* codes below)
META = "_meta"  # a summary's JSON (_K_FILE, _K_GROUP rows) or a rejected row's fields (_K_REJECTED)


@dataclass(frozen=True)
class Input:
    """The files of one input (or of a given train and test pair: _part 0 and 1), numbered in read
    order, and how to read each."""

    plans: tuple[Plan, ...]
    differ: frozenset[str]  # columns whose types differ between the plans: read as text by both

    @classmethod
    def of(cls, paths: list[str], fmt: str, cfg, events: bool = False) -> Input:
        plans = tuple(local_read.plan(p, fmt, cfg, events) for p in paths)
        types = [p.raw_types() for p in plans]
        return cls(plans, frozenset(c for c in COLUMNS if any(t[c] != types[0][c] for t in types)))

    @property
    def files(self) -> list[tuple[int, str]]:
        """(part, file) per file, in read order; a file's position here is its _file."""
        return [(part, name) for part, p in enumerate(self.plans) for name in p.files]

    @property
    def sources(self) -> dict[int, str]:
        return {at: local_read.uri(name) for at, (_, name) in enumerate(self.files)}

    @property
    def given(self) -> bool:
        """Whether the input is a given train and test pair (no split to make)."""
        return len(self.plans) > 1

    def checked(self, spark: SparkSession, cfg: RunConfig, schema: pa.Schema, n_groups: int) -> DataFrame:
        """The per-file step as tasks: one per piece of about PIECE_ROWS rows."""
        pieces = self.pieces(PIECE_ROWS)
        n = len(pieces)
        return spark.range(0, n, 1, n).mapInArrow(
            lambda it: _check_files(it, self, pieces, cfg, schema, n_groups), from_arrow_schema(schema)
        )

    def rows_bound(self, part: int | None = None) -> int:
        """About as many rows as the input (or its part `part`) has, or more (Plan.rows_bound)."""
        return sum(self.plans[p].rows_bound(name) for p, name in self.files if part in (None, p))

    def held_bound(self, cfg: RunConfig, validation: SplitConfig | None) -> int:
        """About as many rows as the largest held-out part (test, or validation) may have, or more:
        the test files of a given pair; of a split by hash, twice its share of the rows."""
        train = self.rows_bound(0)
        test = self.rows_bound(1) if self.given else 2 * cfg.split.test_fraction * train
        return int(max(test, 2 * validation.test_fraction * train if validation is not None else 0))

    def raw_types(self) -> dict[str, pa.DataType]:
        types = self.plans[0].raw_types()
        return {c: pa.string() if c in self.differ else t for c, t in types.items()}

    def pieces(self, rows: int) -> list[tuple[int, tuple[int, int] | None, int]]:
        """(file, row groups, first row) per piece of about `rows` rows: what one task reads."""
        return [
            (at, groups, first)
            for at, (part, name) in enumerate(self.files)
            for groups, first in self.plans[part].pieces(name, rows)
        ]

    def read_file(self, at: int, groups: tuple[int, int] | None = None, first: int = 0) -> pa.Table:
        """File `at`'s raw rows (local.read's columns, and _part when the input is a given pair), or
        only its row groups `groups`, which begin at row `first`."""
        part, name = self.files[at]
        t = local_read.with_meta([(name, self.plans[part].read(name, groups))], at, first)
        for c in self.differ:
            t = t.set_column(t.column_names.index(c), c, local_validate.as_text(t.column(c).combine_chunks()))
        if len(self.plans) > 1:
            t = t.append_column(PART, pa.array(np.full(t.num_rows, part, np.int32)))
        return t


@dataclass(frozen=True)
class Frame:
    """A DataFrame of raw rows (prepare.raw_frame's layout, `name` its _source) as the input: its
    partitions' batches are the pieces; `given` (the estimator's frame): nothing is held out, else
    (a catalog table) it is split by the run's split rules."""

    raw: DataFrame
    name: str
    given: bool = True

    @property
    def sources(self) -> dict[int, str]:
        return {0: self.name}

    def raw_types(self) -> dict[str, pa.DataType]:
        return {c: to_arrow_type(self.raw.schema[c].dataType) for c in COLUMNS}

    def rows_bound(self) -> int:
        """Unknown before the frame is read: its user groups are as many as the tasks."""
        return 0

    def held_bound(self, cfg: RunConfig, validation: SplitConfig | None) -> int:
        return 0  # unknown

    def checked(self, spark: SparkSession, cfg: RunConfig, schema: pa.Schema, n_groups: int) -> DataFrame:
        return self.raw.mapInArrow(lambda it: _check_frame(it, cfg, schema, n_groups), from_arrow_schema(schema))


@dataclass
class Grouped:
    """What the per-user step gives for one group of users."""

    train: pa.Table  # user, item, rating, timestamp (and the held rows' flag: HELD when tuning)
    test: pa.Table
    n_clean: int
    dups: list  # local.validate.merge's


HELD = "_held"  # tuning: the training row goes to the validation part (the inner split)


def split_group(
    valid: pa.Table,
    policy: str,
    canonical: tuple[bool, bool],
    split: SplitConfig | None,
    validation: SplitConfig | None,
) -> Grouped:
    """Merge and split the valid rows of a group of users (all of each user's rows). `split` None: the
    input is a given pair, _part 1 is the test part. `validation`: the training rows split again."""
    merged, dups = local_validate.merge(valid, policy, canonical)
    if split is None:
        is_test = pc.equal(merged.column(PART), 1).to_numpy(zero_copy_only=False)
    else:
        is_test = local_split.test_mask(merged, split, whole=False) if merged.num_rows else np.zeros(0, bool)
    merged = merged.drop_columns([PART])
    train, test = merged.filter(pa.array(~is_test)), merged.filter(pa.array(is_test))
    if validation is not None:
        held = local_split.test_mask(train, validation, whole=False) if train.num_rows else np.zeros(0, bool)
        train = train.append_column(HELD, pa.array(held))
    return Grouped(train, test, merged.num_rows, dups)


@dataclass
class Split:
    """The whole input after the per-user step: the front end's result before the fit's indices."""

    counts: dict[str, int]  # validate.Cleaned.counts
    users: IdMap
    items: IdMap
    test: pa.Table | HeldRows  # user, item, rating, timestamp: in this process, or in the tasks' cache
    stats: TrainStats
    train: pa.Table | DataFrame  # user, item, rating, timestamp: in this process, or packed in the tasks' cache
    inner: Split | None = None  # tuning: the training rows split again (its `test` the validation part)


def _stats(r: np.ndarray) -> dict:
    if not r.size:
        return {"n": 0, "sum": 0.0, "lo": None, "hi": None, "nonpositive": 0, "values": []}
    few = value_counts(r)
    return {
        "n": int(r.size),
        "sum": float(r.sum()),
        "lo": float(r.min()),
        "hi": float(r.max()),
        "nonpositive": int(np.sum(r <= 0)),
        "values": None if few is None else [[v, c] for v, c in zip(few[0].tolist(), few[1].tolist())],
    }


def _train_stats(parts: list[dict]) -> TrainStats:
    n = sum(p["n"] for p in parts)
    if not n:
        raise InputError("the training split is empty: nothing to fit")
    lo = min(p["lo"] for p in parts if p["n"])
    hi = max(p["hi"] for p in parts if p["n"])
    values: dict[float, int] | None = {}
    for p in parts:
        if p["values"] is None:
            values = None
            break
        for v, c in p["values"]:
            values[v] = values.get(v, 0) + c
    few = None if values is None or len(values) > FEW_VALUES else tuple(sorted(values.items()))
    return TrainStats(n, sum(p["sum"] for p in parts) / n, lo, hi, sum(p["nonpositive"] for p in parts), few)


def _read_counts(judged: dict) -> dict:
    return {k: judged[k] for k in ("n_read", "n_rejected", "n_dropped")}


def _check_timestamps(split: SplitConfig | None, timestamped: int) -> None:
    if split is not None and split.method == "temporal" and not timestamped:
        raise local_split.no_timestamps()


# ---- in the driver process ---------------------------------------------------------------------------
@dataclass
class InProcess:
    """Every step over the whole input at once, in this process."""

    source: Input
    cfg: RunConfig

    def load(self) -> tuple[dict, pa.Table]:
        raw = pa.concat_tables([self.source.read_file(at) for at in range(len(self.source.files))])
        checked = local_validate.check(raw, self.cfg.data, self.cfg.model.kind)
        counts = _read_counts(local_validate.judge(checked.counts, checked.rejected, self.cfg.data))
        self.checked = checked
        return counts, checked.rejected.select(list(local_validate.REJECTED_COLUMNS))

    def split(self, validation: SplitConfig | None = None) -> Split:
        checked, self.checked = self.checked, None
        split = None if self.source.given else self.cfg.split
        _check_timestamps(split, int(pc.sum(pc.is_valid(checked.valid.column(TIMESTAMP))).as_py() or 0))
        policy = self.cfg.data.duplicates_policy(self.cfg.model.kind)
        g = split_group(checked.valid, policy, checked.canonical, split, validation)
        n_valid = checked.valid.num_rows
        if n_valid > g.n_clean and policy == "error":
            dups = local_validate.first_duplicates(g.dups)
            raise local_validate.duplicate_error(dups, self.source.sources, n_valid - g.n_clean)
        counts = {"n_duplicates_merged": n_valid - g.n_clean, "n_clean": g.n_clean}
        if validation is None:
            return _in_process_split(counts, g.train, g.test)
        held = g.train.column(HELD)
        train = g.train.drop_columns([HELD])
        out = _in_process_split(counts, train, g.test)
        out.inner = _in_process_split(counts, train.filter(pc.invert(held)), train.filter(held))
        return out


def _in_process_split(counts: dict, train: pa.Table, test: pa.Table) -> Split:
    return Split(
        counts,
        sorted_map(pc.unique(train.column(USER)), USER),
        sorted_map(pc.unique(train.column(ITEM)), ITEM),
        test,
        _train_stats([_stats(train.column(RATING).to_numpy())]),
        train,
    )


def held_out(rows: HeldRows, users: IdMap, items: IdMap, limit: int) -> HeldOut:
    """Held-out rows for the driver: all of them up to `limit` (eval.driver_rows), past it those of a seeded
    sample of users (a function of the user ID, so the same sample on any master), with `rows` kept
    for the final metrics. Performance note: one narrow job over the cached pieces; the tasks look
    the IDs up in the maps and count the cold rows, and a task's sample comes back as one piece."""
    fraction = min(1.0, limit / max(rows.n, 1))
    if fraction < 1:
        log.info(
            "%d rows held out, more than eval.driver_rows = %d: the driver keeps those of %.3g of the users "
            "(the per-iteration history, the tune job's validation); the final metrics score every row",
            rows.n,
            limit,
            fraction,
        )
    types = rows.types
    schema = pa.schema([(PACKED, pa.binary()), ("cold", pa.int64())])

    def sample(batches):
        tables = list(typed_pieces(batches, types))
        if not tables:
            return
        t = pa.concat_tables(tables)
        u, i = users.index_of(t.column(USER)), items.index_of(t.column(ITEM))
        cold = int(np.count_nonzero((u < 0) | (i < 0)))
        keep = np.ones(t.num_rows, bool) if fraction >= 1 else _sampled_users(t.column(USER), fraction)
        kept = pa.table(
            {
                USER_IDX: pa.array(u[keep]),
                ITEM_IDX: pa.array(i[keep]),
                RATING: t.column(RATING).filter(pa.array(keep)).cast(pa.float64()),
                TIMESTAMP: pa.array(timestamps(t.column(TIMESTAMP), t.num_rows)[keep]),
            }
        )
        pieces = pack(kept) or [None]
        yield pa.RecordBatch.from_pydict({PACKED: pieces, "cold": [cold] + [0] * (len(pieces) - 1)}, schema)

    got = rows.packed.mapInArrow(sample, from_arrow_schema(schema)).toArrow()
    kept = [t for t in unpack(got.column(PACKED)) if t.num_rows]
    if kept:
        t = pa.concat_tables(kept)
        arrays = [t.column(c).to_numpy() for c in (USER_IDX, ITEM_IDX, RATING, TIMESTAMP)]
    else:
        arrays = [np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float64), np.zeros(0, np.int64)]
    if fraction >= 1:
        return HeldOut(*arrays)
    return HeldOut(*arrays, rest=rows, all_cold=int(pc.sum(got.column("cold")).as_py() or 0))


def frame_held_out(test: DataFrame, users: IdMap, items: IdMap, limit: int) -> HeldOut:
    """The same for held-out rows Spark SQL's stages give (user, item, rating[, timestamp]): collected
    when they number at most `limit`, else packed by user where they are (one shuffle, cached: the
    caller unpersists HeldOut.rest) and sampled by `held_out`. Performance note: a count first."""
    ts = F.col(TIMESTAMP).cast("long") if TIMESTAMP in test.columns else F.lit(None).cast("long")
    test = test.select(USER, ITEM, F.col(RATING).cast("double").alias(RATING), ts.alias(TIMESTAMP))
    n = test.count()
    if n <= limit:
        return heldout_of(test.toArrow(), users, items)
    types = pa.schema([(c, to_arrow_type(test.schema[c].dataType)) for c in (USER, ITEM)])

    def packed(batches):
        rows = [b for b in batches if b.num_rows]
        if rows:
            yield pa.RecordBatch.from_pydict({PACKED: pack(pa.Table.from_batches(rows))})

    rows = test.repartition(USER).mapInArrow(packed, f"{PACKED} binary").cache()
    return held_out(HeldRows(rows, types, n), users, items, limit)


# ---- in executor tasks -------------------------------------------------------------------------------
# What a row of the tasks' output is. The per-file step gives valid and rejected rows and a summary per
# file; the per-user step passes the rejected rows and the summaries on, and gives the training (fit /
# held) and test rows, its distinct training IDs (of the train and the fit part) and a summary of its own.
# Rows of the kinds in _PACKED travel as pieces of rows (ready.pack, the PACKED column), a row each:
# the valid rows with the user group they go to (GROUP), the training and test rows and the IDs.
_K_VALID, _K_REJECTED, _K_FILE = 0, 1, 2
_K_TRAIN, _K_TEST, _K_HELD, _K_USER, _K_ITEM, _K_FIT_USER, _K_FIT_ITEM, _K_GROUP = 3, 4, 5, 6, 7, 8, 9, 10
_ON_DRIVER = (_K_FILE, _K_USER, _K_ITEM, _K_FIT_USER, _K_FIT_ITEM, _K_GROUP)
_REJECTED_FIELDS = (SOURCE, USER, ITEM, RATING, TIMESTAMP, REASON)  # a rejected row's JSON (its META)
_REJECTED_JSON = ", ".join(f"`{c}` string" for c in _REJECTED_FIELDS)
GROUP = "_group"  # the user group (the per-user task) a row goes to


def _key_type(raw: pa.DataType) -> pa.DataType:
    return pa.int64() if pa.types.is_integer(raw) else pa.string()


def _schema(types: dict[str, pa.DataType]) -> pa.Schema:
    """Every task's output: the rows of one kind, the columns others need null."""
    return pa.schema(
        [
            (KIND, pa.int8()),
            (USER, _key_type(types[USER])),
            (ITEM, _key_type(types[ITEM])),
            (RATING, pa.float64()),
            (TIMESTAMP, pa.int64()),
            (PART, pa.int32()),
            (FILE, pa.int32()),
            (ROW, pa.int64()),
            (META, pa.string()),
            (GROUP, pa.int32()),
            (PACKED, pa.binary()),
        ]
    )


def _batch(schema: pa.Schema, kind: int, n: int, columns: dict) -> pa.RecordBatch:
    """Rows of one kind in the tasks' schema (the columns not given are null)."""
    cols = [pa.array(np.full(n, kind, np.int8))]
    for f in list(schema)[1:]:
        got = columns.get(f.name)
        if got is None:
            got = pa.nulls(n, f.type)
        elif isinstance(got, (pa.Array, pa.ChunkedArray)):
            got = got.cast(f.type)
        else:
            got = pa.array(got, f.type)
        cols.append(got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got)
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _summary(schema: pa.Schema, kind: int, summary: dict) -> pa.RecordBatch:
    return _batch(schema, kind, 1, {META: [json.dumps(summary)]})


def _rows_of(schema: pa.Schema, names) -> pa.Schema:
    return pa.schema([schema.field(c) for c in names])


def _packed(schema: pa.Schema, kind: int, table: pa.Table, group: int | None = None):
    """`table`'s rows (the tasks' types) as packed pieces of one kind, a row each."""
    table = table.cast(_rows_of(schema, table.column_names))
    for piece in pack(table):
        yield _batch(schema, kind, 1, {PACKED: [piece], GROUP: None if group is None else [group]})


def _unpacked(schema: pa.Schema, rows: pa.Table, names) -> pa.Table:
    """The packed pieces among `rows` as one table of the columns `names` (empty when none)."""
    tables = unpack(rows.column(PACKED))
    return pa.concat_tables(tables) if tables else _rows_of(schema, names).empty_table()


def _sampled_users(users: pa.ChunkedArray, fraction: float) -> np.ndarray:
    """(n,) bool: the rows of a share `fraction` of the users, a function of the user ID alone."""
    return local_split.uniform_hash(1, users, users) < fraction


def user_groups(users: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """Each row's user group in [0, n): a function of the user ID as read alone, so that a user's rows
    meet in one per-user task whichever file and task they were read in."""
    if n == 1:
        return np.zeros(len(users), np.int32)
    if pa.types.is_integer(users.type):
        mixed = np.asarray(users.to_numpy(), np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((mixed >> np.uint64(32)) % np.uint64(n)).astype(np.int32)
    h = local_split.uniform_hash(0, users, users)
    return np.minimum((h * n).astype(np.int32), n - 1)


_VALID_COLUMNS = (USER, ITEM, RATING, TIMESTAMP, PART, FILE, ROW)
_ROW_COLUMNS = (USER, ITEM, RATING, TIMESTAMP)  # the training and test rows'


def _checked_rows(checked: local_validate.Checked, schema: pa.Schema, summary: dict, n_groups: int):
    """One piece's checked rows in the tasks' schema: valid (packed by user group), rejected (their
    fields as JSON; placed by file), summary."""
    v, r = checked.valid, checked.rejected
    if v.num_rows:
        v = v.select(list(_VALID_COLUMNS))
        groups = user_groups(v.column(USER), n_groups)
        order = np.argsort(groups, kind="stable")
        bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
        for g in range(n_groups):
            if bounds[g + 1] > bounds[g]:
                yield from _packed(schema, _K_VALID, v.take(order[bounds[g] : bounds[g + 1]]), g)
    place = summary["file"] % n_groups
    if r.num_rows:
        texts = [json.dumps(x) for x in r.select(list(_REJECTED_FIELDS)).to_pylist()]
        columns = {PART: r[PART], FILE: r[FILE], ROW: r[ROW], META: texts, GROUP: np.full(r.num_rows, place, np.int32)}
        yield _batch(schema, _K_REJECTED, r.num_rows, columns)
    first = [
        r.filter(pc.equal(r.column(PART), p)).slice(0, spark_rules.SHOWN).to_pylist() for p in sorted(checked.counts)
    ]
    summary |= {
        "counts": {str(p): c for p, c in checked.counts.items()},
        "canonical": checked.canonical,
        "timestamped": int(pc.sum(pc.is_valid(v.column(TIMESTAMP))).as_py() or 0),
        "first_rejected": [row for rows in first for row in rows],
    }
    yield _batch(schema, _K_FILE, 1, {META: [json.dumps(summary)], GROUP: [place]})


def _check_files(batches, source: Input, pieces: list, cfg: RunConfig, schema: pa.Schema, n_groups: int):
    """The per-file step in a task: each piece given (by position in `pieces`) read and checked alone."""
    for b in batches:
        for piece in b.column(0).to_pylist():
            at, groups, first = pieces[piece]
            try:
                checked = local_validate.check(source.read_file(at, groups, first), cfg.data, cfg.model.kind)
            except Unreadable as e:
                yield _summary(schema, _K_FILE, {"file": at, "first": first, "unreadable": str(e)})
                continue
            yield from _checked_rows(checked, schema, {"file": at, "first": first}, n_groups)


def _check_frame(batches, cfg: RunConfig, schema: pa.Schema, n_groups: int):
    """The same step over a DataFrame's rows (prepare.raw_frame's layout): each batch checked alone."""
    for b in batches:
        raw = pa.Table.from_batches([b])
        first = int(pc.min(raw.column(ROW)).as_py() or 0) if raw.num_rows else 0
        try:
            checked = local_validate.check(raw, cfg.data, cfg.model.kind)
        except Unreadable as e:
            yield _summary(schema, _K_FILE, {"file": 0, "first": first, "unreadable": str(e)})
            continue
        yield from _checked_rows(checked, schema, {"file": 0, "first": first}, n_groups)


def _split_users(batches, schema: pa.Schema, policy: str, split, validation):
    """The per-user step in a task: its group's users merged and split (the IDs as read: whether
    they are all canonical longs is known once every file is checked), the rest passed on."""
    rows = pa.Table.from_batches(list(batches), schema)
    kinds = rows.column(KIND).to_numpy()
    for kind in (_K_REJECTED, _K_FILE):
        passed = rows.filter(pa.array(kinds == kind))
        if passed.num_rows:
            yield from passed.to_batches()
    valid = _unpacked(schema, rows.filter(pa.array(kinds == _K_VALID)), _VALID_COLUMNS)
    del rows
    g = split_group(valid, policy, (False, False), split, validation)
    train = g.train
    summary = {"n_valid": valid.num_rows, "n_clean": g.n_clean, "dups": g.dups, "n_test": g.test.num_rows}
    sides = [(train, _K_USER, _K_ITEM, "train")]
    if validation is not None:
        held = train.column(HELD)
        summary["n_held"] = pc.sum(held).as_py() or 0
        yield from _packed(schema, _K_HELD, train.filter(held).select(list(_ROW_COLUMNS)))
        train = train.filter(pc.invert(held))
        sides.append((train, _K_FIT_USER, _K_FIT_ITEM, "fit"))
    yield from _packed(schema, _K_TRAIN, train.select(list(_ROW_COLUMNS)))
    yield from _packed(schema, _K_TEST, g.test.select(list(_ROW_COLUMNS)))
    for side, user_kind, item_kind, name in sides:
        yield from _packed(schema, user_kind, pa.table({USER: pc.unique(side.column(USER))}))
        yield from _packed(schema, item_kind, pa.table({ITEM: pc.unique(side.column(ITEM))}))
        summary[name] = _stats(side.column(RATING).to_numpy())
    yield _summary(schema, _K_GROUP, summary)


# At most about this many rows a user group (a quarter with text IDs, up to ~100 bytes a row): a group's
# packed training and test rows make one batch of Spark's in-memory cache (10,000 rows a batch, a piece
# a row), whose buffers cannot grow past 1 GB.
GROUP_ROWS = 10_000_000

# Rows a task reads and checks at a time: a Parquet file of several row groups is cut so that the
# executors share a large file (text files are read whole).
PIECE_ROWS = 1 << 20


def _summed(summaries: list[dict]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}
    for s in summaries:
        for p, c in s["counts"].items():
            mine = counts.setdefault(int(p), dict.fromkeys(c, 0))
            for k, v in c.items():
                mine[k] += v
    return counts


def _first_rejected(summaries: list[dict]) -> pa.Table:
    rows = [r for s in sorted(summaries, key=lambda s: (s["file"], s["first"])) for r in s["first_rejected"]]
    if rows:
        return pa.Table.from_pylist(rows)
    empty = {c: pa.array([], pa.string()) for c in local_validate.REJECTED_COLUMNS}
    return pa.table({**empty, PART: pa.array([], pa.int32())})


class Tasks:
    """Every step in executor tasks, in one Spark job: a task per file, then (one shuffle by user
    group) a task per group of users (n_groups of them); what the driver needs comes back from that
    job, and the training rows stay in the tasks' cache, packed."""

    def __init__(self, spark: SparkSession, source: Input | Frame, cfg: RunConfig, n_groups: int):
        self.spark, self.source, self.cfg, self.n_groups = spark, source, cfg, max(1, n_groups)
        self._cached: list[DataFrame] = []

    def _cache(self, df: DataFrame) -> DataFrame:
        self._cached.append(df.cache())
        return df

    def release(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()

    def load(self, validation: SplitConfig | None = None) -> tuple[dict, DataFrame]:
        """Run the job; (counts, the rejected rows). Unreadable when a file is one only Spark's reader
        reads as Spark would; InputError as local.validate.judge."""
        src, cfg = self.source, self.cfg
        self.validation = validation
        split = None if src.given else cfg.split
        policy = cfg.data.duplicates_policy(cfg.model.kind)
        self.schema = schema = _schema(src.raw_types())
        per_group = GROUP_ROWS if all(schema.field(c).type == pa.int64() for c in (USER, ITEM)) else GROUP_ROWS // 4
        self.n_groups = max(self.n_groups, -(-src.rows_bound() // per_group))
        checked = src.checked(self.spark, cfg, schema, self.n_groups)
        self.rows = self._cache(
            checked.repartitionById(self.n_groups, F.col(GROUP)).mapInArrow(
                lambda it: _split_users(it, schema, policy, split, validation), from_arrow_schema(schema)
            )
        )
        # Held-out parts that cannot exceed eval.driver_rows come with the rest of what the driver
        # needs, without a job of their own (held_out).
        bound = src.held_bound(cfg, validation)
        self.held_here = 0 < bound <= cfg.eval.driver_rows
        wanted = [*_ON_DRIVER, *((_K_TEST, _K_HELD) if self.held_here else ())]
        small = self.rows.where(F.col(KIND).isin(wanted)).select(KIND, META, PACKED).toArrow()
        kinds = small.column(KIND).to_numpy()
        self.of = lambda k: small.filter(pa.array(kinds == k))
        files = self._summaries(_K_FILE)
        odd = [s for s in files if "unreadable" in s]
        if odd:
            self.release()
            raise Unreadable(min(odd, key=lambda s: (s["file"], s["first"]))["unreadable"])
        counts = _read_counts(local_validate.judge(_summed(files), _first_rejected(files), cfg.data))
        _check_timestamps(split, sum(s["timestamped"] for s in files))
        canonical = [all(s["canonical"][k] for s in files) for k in (0, 1)]
        # The IDs' types in the maps: int64 where every ID is a canonical long (the tasks keep them as read).
        self.types = pa.schema(
            [(c, pa.int64() if canonical[k] else schema.field(c).type) for k, c in enumerate((USER, ITEM))]
        )
        rejected = (
            self.rows.where(F.col(KIND) == _K_REJECTED)
            .orderBy(FILE, ROW)
            .select(F.from_json(META, _REJECTED_JSON).alias("_r"), ROW)
            .select(
                F.col(f"_r.{SOURCE}").alias(SOURCE), ROW, *[F.col(f"_r.{c}").alias(c) for c in _REJECTED_FIELDS[1:]]
            )
        )
        return counts, rejected

    def _summaries(self, kind: int) -> list[dict]:
        return [json.loads(t) for t in self.of(kind).column(META).to_pylist()]

    def _ids(self, kind: int, col: str) -> IdMap:
        ids = pc.unique(_unpacked(self.schema, self.of(kind), [col]).column(col))
        return sorted_map(ids.cast(self.types.field(col).type), col)

    def split(self, validation: SplitConfig | None = None) -> Split:
        """The job's result for the driver; the training rows stay in the tasks' cache (Split.train,
        a DataFrame: `keyed` gives them with their maps). A `validation` other than `load`'s runs the job
        again."""
        if validation != self.validation:
            self.release()
            self.load(validation)
        policy = self.cfg.data.duplicates_policy(self.cfg.model.kind)
        groups = self._summaries(_K_GROUP)
        n_valid = sum(s["n_valid"] for s in groups)
        n_clean = sum(s["n_clean"] for s in groups)
        if n_valid > n_clean and policy == "error":
            dups = local_validate.first_duplicates([tuple(d) for s in groups for d in s["dups"]])
            raise local_validate.duplicate_error(dups, self.source.sources, n_valid - n_clean)
        counts = {"n_duplicates_merged": n_valid - n_clean, "n_clean": n_clean}
        result = Split(
            counts,
            self._ids(_K_USER, USER),
            self._ids(_K_ITEM, ITEM),
            self._held(_K_TEST, sum(s["n_test"] for s in groups)),
            _train_stats([s["train"] for s in groups]),
            self._in_tasks([_K_TRAIN, _K_HELD]),
        )
        if validation is not None:
            result.inner = Split(
                counts,
                self._ids(_K_FIT_USER, USER),
                self._ids(_K_FIT_ITEM, ITEM),
                self._held(_K_HELD, sum(s["n_held"] for s in groups)),
                _train_stats([s["fit"] for s in groups]),
                self._in_tasks([_K_TRAIN]),
            )
        self.of = None
        return result

    def _held(self, kind: int, n: int) -> pa.Table | HeldRows:
        """Held-out rows of `kind`: collected with the job's result, or where the tasks keep them."""
        if self.held_here:
            return typed(_unpacked(self.schema, self.of(kind), _ROW_COLUMNS), self.types)
        return HeldRows(self._in_tasks([kind]), self.types, n)

    def _in_tasks(self, kinds: list[int]) -> DataFrame:
        """The packed pieces of these kinds, in the tasks' cache."""
        return self.rows.where(F.col(KIND).isin(kinds)).select(PACKED)

    def unpacked(self, packed: DataFrame) -> DataFrame:
        """The rows of packed pieces (`Split.train`) as a DataFrame (user, item, rating, timestamp),
        the IDs typed as the maps."""
        rows = pa.schema([*self.types, *(self.schema.field(c) for c in (RATING, TIMESTAMP))])
        types = self.types

        def read(batches):
            for b in batches:
                for t in unpack(b.column(PACKED)):
                    yield from typed(t, types).to_batches()

        return packed.mapInArrow(read, from_arrow_schema(rows))

    def keyed(self, part: Split) -> Keyed:
        """`part`'s training rows as they stay in the tasks' cache (packed, their IDs as read), with
        the maps; the indexed copy other Spark stages take is made on first use (`_indexed`)."""
        return Keyed(self.unpacked(part.train), part.users, part.items, lambda: self._indexed(part), part.train)

    def _indexed(self, part: Split) -> DataFrame:
        """The training rows with the maps' indices, cached: two broadcast hash joins in the JVM
        (IdMap.encode), which spare the rows a round trip through Python."""
        rows = self.unpacked(part.train)
        encoded = part.items.encode(part.users.encode(rows, USER, USER_IDX), ITEM, ITEM_IDX)
        return self._cache(encoded.select(USER_IDX, ITEM_IDX, RATING, TIMESTAMP))
