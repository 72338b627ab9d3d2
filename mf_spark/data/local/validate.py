"""`validate.clean` on the driver, over the Arrow table of `local.read`: the same rules, reasons, counts,
ID types and merged ratings, and the same errors.

The one thing it cannot decide alone is whether some texts are numbers to Spark (Java's parser takes
"4d", "0x1p3", a tab before a digit, ...): a value that is not plainly a number ([+-]digits[.digits]
[e[+-]digits], or inf / infinity / nan in Spark's spellings) but has a digit raises `Unreadable`, and
the caller validates with Spark instead. A value with no digit is not a number to either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mf_spark.core.config import DataConfig
from mf_spark.core.errors import ConfigError, InputError
from mf_spark.core.types import FILE, ITEM, PART, RATING, REASON, ROW, SOURCE, TIMESTAMP, USER
from mf_spark.data import validate as spark_rules
from mf_spark.data.local.read import Unreadable

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INTEGER = r"^[+-]?[0-9]+$"
_CANONICAL = r"^(0|-?[1-9][0-9]{0,18})$"
_SPECIAL = {
    "inf": np.inf,
    "+inf": np.inf,
    "infinity": np.inf,
    "+infinity": np.inf,
    "-inf": -np.inf,
    "-infinity": -np.inf,
    "nan": np.nan,
}
_INT64 = 2.0**63


@dataclass
class Clean:
    ratings: pa.Table  # user, item (int64 or string), rating float64, timestamp int64 [, _part]
    rejected: pa.Table  # _source, _row, user, item, rating, timestamp (raw texts), reason
    counts: dict[str, int]  # as validate.Cleaned.counts


def _np(a: pa.Array | pa.ChunkedArray, fill=None) -> np.ndarray:
    if fill is not None:
        a = a.fill_null(fill)
    return a.to_numpy(zero_copy_only=False)


def as_text(col: pa.Array) -> pa.Array:
    """Raw values as the text `rejected` keeps (Spark's cast to string for numbers)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    if pa.types.is_floating(col.type):
        return pa.array([None if v is None else _java_double(v) for v in col.to_pylist()], pa.string())
    return col.cast(pa.string())


def _java_double(v: float) -> str:
    """Java's Double.toString, as Spark casts a double to text: 4.0, 0.001, 1.0E7, -2.5E-4, NaN."""
    if v != v:
        return "NaN"
    if np.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0 or 1e-3 <= abs(v) < 1e7:
        return repr(float(v))
    mantissa, exp = np.format_float_scientific(abs(v), unique=True, trim="0").split("e")
    return f"{'-' if v < 0 else ''}{mantissa}E{int(exp)}"


def _absent(text: pa.Array, nulls: tuple[str, ...]) -> pa.Array:
    """Whether each trimmed text means no value: null, empty or one of data.null_values."""
    hit = pc.or_kleene(text.is_null(), pc.equal(text, ""))
    if nulls:
        hit = pc.or_kleene(hit, pc.is_in(text, value_set=pa.array(list(nulls), pa.string())))
    return hit.fill_null(True)


def _id_key(col: pa.Array, nulls: tuple[str, ...]) -> tuple[pa.Array, np.ndarray]:
    """(ID or null when missing, whether each is a canonical long), as validate._id_key."""
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64()), np.ones(len(col), bool)
    text = pc.utf8_trim(col, characters=" ")
    key = pc.if_else(_absent(text, nulls), pa.scalar(None, pa.string()), text)
    canonical = _np(pc.match_substring_regex(key, _CANONICAL), False)
    return key, canonical & _in_int64(key, canonical)


def _in_int64(text: pa.Array, integer: np.ndarray) -> np.ndarray:
    """Whether each text (an integer's digits where `integer`) is in the int64 range: 19 digits may
    be beyond it, and equally long digit strings compare as their numbers do."""
    ok = integer.copy()
    if not integer.any():
        return ok
    where = np.flatnonzero(integer)
    texts = text.take(pa.array(where))
    negative = _np(pc.starts_with(texts, "-"), False)
    digits = pc.utf8_ltrim(texts, characters="+-")
    long = _np(pc.equal(pc.utf8_length(digits), 19), False)
    if long.any():
        limit = np.where(negative, str(2**63), str(2**63 - 1))
        within = _np(pc.less_equal(digits, pa.array(limit)), False)
        ok[where[long & ~within]] = False
    return ok


def _digits(text: pa.Array) -> np.ndarray:
    return _np(pc.match_substring_regex(text, "[0-9]"), False)


def _parse_double(col: pa.Array, what: str, nulls: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(missing, value, parsed) per row: numbers as they are; texts as Spark's try_cast(double) takes
    them (value NaN where not parsed)."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        if pa.types.is_null(col.type):
            return np.ones(len(col), bool), np.full(len(col), np.nan), np.zeros(len(col), bool)
        missing = _np(col.is_null())
        return missing, _np(col.cast(pa.float64()), 0.0), ~missing
    text = pc.utf8_trim(col.cast(pa.string()), characters=" ")
    missing = _np(_absent(text, nulls), True)
    plain = _np(pc.match_substring_regex(text, _NUMBER), False) & ~missing
    value = np.full(len(col), np.nan)
    if plain.any():
        value[plain] = _np(pc.cast(text.filter(pa.array(plain)), pa.float64()))
    odd = ~plain & ~missing
    parsed = plain.copy()
    if odd.any():
        lower = np.array(pc.utf8_lower(text.filter(pa.array(odd))).to_pylist(), dtype=object)
        special = np.array([w in _SPECIAL for w in lower], bool)
        where = np.flatnonzero(odd)
        value[where[special]] = [_SPECIAL[w] for w in lower[special]]
        parsed[where[special]] = True
        rest = where[~special]
        if rest.size and (
            _digits(text.take(pa.array(rest))).any() or any(("nan" in w or "inf" in w) for w in lower[~special])
        ):
            raise Unreadable(
                f"{what} values only Spark can tell are numbers or not, e.g. {text[int(rest[0])].as_py()!r}"
            )
    return missing, value, parsed


def _timestamp(col: pa.Array, nulls: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(missing, epoch value, parsed) as validate._timestamp: integers, or decimals truncated."""
    if pa.types.is_null(col.type):
        n = len(col)
        return np.ones(n, bool), np.zeros(n, np.int64), np.zeros(n, bool)
    if pa.types.is_integer(col.type):
        missing = _np(col.is_null())
        return missing, _np(col.cast(pa.int64()), 0), ~missing
    text = pc.utf8_trim(col.cast(pa.string()), characters=" ")
    missing = _np(_absent(text, nulls), True)
    value = np.zeros(len(col), np.int64)
    parsed = np.zeros(len(col), bool)
    integer = _np(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,19}$"), False) & ~missing
    integer = _in_int64(text, integer)
    if integer.any():
        value[integer] = _np(pc.cast(pc.utf8_ltrim(text.filter(pa.array(integer)), characters="+"), pa.int64()))
        parsed |= integer
    number = _np(pc.match_substring_regex(text, _NUMBER), False) & ~integer & ~missing
    if number.any():
        v = _np(pc.cast(text.filter(pa.array(number)), pa.float64()))
        ok = np.abs(v) < _INT64
        where = np.flatnonzero(number)
        value[where[ok]] = np.trunc(v[ok]).astype(np.int64)
        parsed[where[ok]] = True
    rest = ~missing & ~parsed & ~number
    if rest.any() and _digits(text.filter(pa.array(rest))).any():
        raise Unreadable("timestamps that are not plain numbers (dates are parsed by Spark)")
    return missing, value, parsed


def _reasons(
    user: pa.Array, item: pa.Array, r_missing, r_parsed, rating, t_missing, t_parsed, kind: str, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(reason index or -1, rejected, dropped) per row: the first reason that applies, in
    validate._flag's order; and the reasons' texts."""
    conditions = [
        (spark_rules.MISSING_USER, _np(user.is_null())),
        (spark_rules.MISSING_ITEM, _np(item.is_null())),
        (spark_rules.MISSING_RATING, r_missing),
        (spark_rules.RATING_NOT_NUMBER, ~r_parsed),
        (spark_rules.RATING_NAN, np.isnan(rating)),
        (spark_rules.RATING_INFINITE, np.isinf(rating)),
        (spark_rules.RATING_TOO_LARGE, np.abs(np.nan_to_num(rating)) > spark_rules.FLOAT32_MAX),
    ]
    if kind == "explicit" and cfg.rating_range is not None:
        lo, hi = cfg.rating_range
        with np.errstate(invalid="ignore"):
            conditions.append((f"{spark_rules.RATING_OUT_OF_RANGE} [{lo:g}, {hi:g}]", (rating < lo) | (rating > hi)))
    conditions.append((spark_rules.TIMESTAMP_NOT_NUMBER, ~t_missing & ~t_parsed))
    with np.errstate(invalid="ignore"):
        nonpositive = (rating == 0 if cfg.nonpositive == "negative" else rating <= 0) & r_parsed
        if kind != "implicit":
            nonpositive[:] = False
    if cfg.nonpositive == "reject":
        conditions.append((spark_rules.NONPOSITIVE, nonpositive))
    reason = np.full(rating.size, -1, np.int8)
    for n, (_, hit) in reversed(list(enumerate(conditions))):
        reason[hit] = n
    rejected = reason >= 0
    return reason, rejected, ~rejected & nonpositive, [text for text, _ in conditions]


@dataclass
class Checked:
    """Each row of some raw rows judged alone (`check`): what the merge takes and what is rejected."""

    valid: pa.Table  # user, item (int64 or string keys), rating float64, timestamp int64, _part, _file, _row
    rejected: pa.Table  # REJECTED_COLUMNS plus _part and _file, ordered by (_file, _row)
    counts: dict[int, dict[str, int]]  # per part: n_read, n_rejected, n_dropped, n_valid
    canonical: tuple[bool, bool]  # whether every valid user / item key is a canonical long


REJECTED_COLUMNS = (SOURCE, ROW, USER, ITEM, RATING, TIMESTAMP, REASON)


def check(raw: pa.Table, cfg: DataConfig, kind: str) -> Checked:
    """Every row of `raw` (local.read's columns, optionally _part) judged alone: parsed, rejected
    with the first reason that applies, or dropped. Raises Unreadable when only Spark can parse some
    value. Rows are independent here, so any grouping of an input's rows (a file per task, or all
    of them) gives the same rows."""
    if kind not in spark_rules.KINDS:
        raise ConfigError(f"config key model.kind: got {kind!r}, expected one of {spark_rules.KINDS}")
    n = raw.num_rows
    col = {c: raw.column(c).combine_chunks() for c in (USER, ITEM, RATING, TIMESTAMP)}
    part = _np(raw.column(PART), 0).astype(np.int32, copy=False) if PART in raw.column_names else np.zeros(n, np.int32)
    file = _np(raw.column(FILE), 0).astype(np.int32, copy=False) if FILE in raw.column_names else np.zeros(n, np.int32)
    nulls = tuple(cfg.null_values)
    user, user_int = _id_key(col[USER], nulls)
    item, item_int = _id_key(col[ITEM], nulls)
    r_missing, rating, r_parsed = _parse_double(col[RATING], "rating", nulls)
    r_parsed &= ~r_missing
    t_missing, ts, t_parsed = _timestamp(col[TIMESTAMP], nulls)
    reason, rejected, dropped, texts = _reasons(user, item, r_missing, r_parsed, rating, t_missing, t_parsed, kind, cfg)
    valid = ~rejected & ~dropped
    row = _np(raw.column(ROW))
    keep = None if valid.all() else pa.array(np.flatnonzero(valid))
    picked = (lambda a: a) if keep is None else (lambda a: a.take(keep) if isinstance(a, pa.Array) else a[valid])
    rows = pa.table(
        {
            USER: picked(user),
            ITEM: picked(item),
            RATING: pa.array(picked(rating), pa.float64()),
            TIMESTAMP: pa.array(picked(ts), pa.int64(), mask=picked(t_missing)),
            PART: pa.array(picked(part), pa.int32()),
            FILE: pa.array(picked(file), pa.int32()),
            ROW: pa.array(picked(row), pa.int64()),
        }
    )
    canonical = (bool(picked(user_int).all()), bool(picked(item_int).all()))
    bad = _rejected_rows(raw, col, part, file, row, reason, texts, rejected)
    return Checked(rows, bad, _part_counts(part, rejected, dropped, valid), canonical)


def judge(counts: dict[int, dict[str, int]], rejected: pa.Table, cfg: DataConfig) -> dict[str, int]:
    """The input's counts, once every part's rows were checked; raises InputError when a part has
    too many rejected rows or no valid ones. `rejected`: Checked.rejected, whole or, per file, its
    first spark_rules.SHOWN rows (all an error shows), ordered by (_file, _row)."""
    if not counts or sum(c["n_read"] for c in counts.values()) == 0:
        raise InputError("the input has no data rows")
    for p, in_part in sorted(counts.items()):
        if in_part["n_rejected"] / in_part["n_read"] > cfg.max_bad_fraction:
            mine = rejected.filter(pc.equal(rejected.column(PART), p))
            raise _too_dirty(mine, in_part["n_rejected"], in_part["n_read"], cfg)
    c = {k: sum(pp[k] for pp in counts.values()) for k in ("n_read", "n_rejected", "n_dropped", "n_valid")}
    if c["n_valid"] == 0 or any(pp["n_valid"] == 0 for pp in counts.values()):
        raise InputError(
            f"no valid rows left: {c['n_read']} read, {c['n_rejected']} rejected, "
            f"{c['n_dropped']} dropped (ratings <= 0, data.nonpositive = 'drop')"
        )
    return c


def merge(valid: pa.Table, policy: str, canonical: tuple[bool, bool]) -> tuple[pa.Table, list]:
    """One row per (part, user, item) of Checked.valid rows under the duplicates policy, the IDs
    made int64 where every one is a canonical long; and the repeated pairs as (user, item, count,
    file, row of the first), ordered by first row, at most spark_rules.SHOWN. Every row of a pair
    must be in `valid` (a grouping by user keeps them together)."""
    cols = {c: valid.column(c).combine_chunks() for c in valid.column_names}
    merged, dups = _merge(
        _np(cols[PART]),
        cols[USER],
        cols[ITEM],
        _np(cols[RATING]),
        _np(cols[TIMESTAMP], 0),
        _np(cols[TIMESTAMP].is_valid()),
        _np(cols[FILE]),
        _np(cols[ROW]),
        policy,
    )
    for name, whole in ((USER, canonical[0]), (ITEM, canonical[1])):
        if whole and merged.schema.field(name).type == pa.string():
            at = merged.column_names.index(name)
            merged = merged.set_column(at, name, merged.column(name).cast(pa.int64()))
    return merged, dups


def first_duplicates(dups: list) -> list:
    """The first spark_rules.SHOWN repeated pairs of several `merge`s, by first row."""
    return sorted(dups, key=lambda d: (d[3], d[4]))[: spark_rules.SHOWN]


def clean(raw: pa.Table, cfg: DataConfig, kind: str) -> Clean:
    """`validate.clean` of `raw` (local.read's columns, optionally `_part`): check, judge, merge.
    Raises the same InputErrors, and Unreadable when only Spark can parse some value."""
    checked = check(raw, cfg, kind)
    c = judge(checked.counts, checked.rejected, cfg)
    policy = cfg.duplicates_policy(kind)
    merged, dups = merge(checked.valid, policy, checked.canonical)
    n_duplicates = c["n_valid"] - merged.num_rows
    if n_duplicates and policy == "error":
        raise duplicate_error(first_duplicates(dups), _sources(raw), n_duplicates)
    if PART not in raw.column_names:
        merged = merged.drop_columns([PART])
    counts = {
        "n_read": c["n_read"],
        "n_rejected": c["n_rejected"],
        "n_dropped": c["n_dropped"],
        "n_duplicates_merged": n_duplicates,
        "n_clean": merged.num_rows,
    }
    return Clean(merged, checked.rejected.select(list(REJECTED_COLUMNS)), counts)


def _sources(raw: pa.Table) -> dict[int, str]:
    """File position -> its _source, of raw rows."""
    if FILE not in raw.column_names:
        return {0: raw.column(SOURCE)[0].as_py() if raw.num_rows else ""}
    firsts = np.unique(_np(raw.column(FILE)), return_index=True)
    return {int(f): raw.column(SOURCE)[int(at)].as_py() for f, at in zip(*firsts)}


def _rejected_rows(raw: pa.Table, col: dict, part, file, row, reason: np.ndarray, texts: list, mask: np.ndarray):
    """The rows of `mask` as validate.clean's rejected table (plus _part and _file): their source,
    row, fields as text and reason, ordered by (_file, _row)."""
    at = pa.array(np.flatnonzero(mask))
    order = np.lexsort((row[mask], file[mask]))
    timestamps = col[TIMESTAMP]
    t = pa.table(
        {
            SOURCE: raw.column(SOURCE).take(at).cast(pa.string()),
            ROW: raw.column(ROW).take(at).cast(pa.int64()),
            USER: as_text(col[USER].take(at)),
            ITEM: as_text(col[ITEM].take(at)),
            RATING: as_text(col[RATING].take(at)),
            TIMESTAMP: (
                as_text(timestamps.take(at))
                if not pa.types.is_null(timestamps.type)
                else pa.nulls(int(mask.sum()), pa.string())
            ),
            REASON: pa.array(np.array(texts, dtype=object)[reason[mask]].tolist() if mask.any() else [], pa.string()),
            PART: pa.array(part[mask], pa.int32()),
            FILE: pa.array(file[mask], pa.int32()),
        }
    )
    return t.take(pa.array(order))


def _part_counts(part: np.ndarray, rejected: np.ndarray, dropped: np.ndarray, valid: np.ndarray) -> dict:
    """Per input part (the train and test files of a given split, else one): rows read, rejected,
    dropped and valid."""
    out = {}
    for p in np.unique(part):
        in_p = part == p
        out[int(p)] = {
            "n_read": int(in_p.sum()),
            "n_rejected": int((rejected & in_p).sum()),
            "n_dropped": int((dropped & in_p).sum()),
            "n_valid": int((valid & in_p).sum()),
        }
    return out


def _codes(key: pa.Array) -> np.ndarray:
    return _np(pc.dictionary_encode(key).indices).astype(np.int64, copy=False)


def _merge(part, user, item, rating, ts, has_ts, file, row, policy):
    """(one row per (part, user, item) under the duplicates policy, the repeated pairs as (user,
    item, count, file, row of the first), ordered by first row, at most spark_rules.SHOWN)."""
    u_all, i_all = _codes(user), _codes(item)
    n_u, n_i = int(u_all.max(initial=0)) + 1, int(i_all.max(initial=0)) + 1
    if (int(part.max(initial=0)) + 1) * n_u * n_i < 2**62:  # the usual case: no pair repeats
        key = np.sort((part.astype(np.int64) * n_u + u_all) * n_i + i_all)
        if not (key[1:] == key[:-1]).any():
            return (
                pa.table(
                    {
                        USER: user,
                        ITEM: item,
                        RATING: pa.array(rating, pa.float64()),
                        TIMESTAMP: pa.array(ts, pa.int64(), mask=~has_ts),
                        PART: pa.array(part, pa.int32()),
                    }
                ),
                [],
            )
    # Read order is (file, row): "last" takes the latest timestamp, then the last read.
    order = np.lexsort((row, file, np.where(has_ts, ts, np.iinfo(np.int64).min), has_ts, i_all, u_all, part))
    u_c, i_c = u_all[order], i_all[order]
    p_s = part[order]
    starts = np.flatnonzero(
        np.concatenate([[True], (p_s[1:] != p_s[:-1]) | (u_c[1:] != u_c[:-1]) | (i_c[1:] != i_c[:-1])])
    )
    sizes = np.diff(np.append(starts, order.size))
    last = starts + sizes - 1
    r_s, t_s, h_s = rating[order], ts[order], has_ts[order]
    if policy == "last":  # sorted by (timestamp, nulls first; file, row): each group's last wins
        value, stamp, stamped = r_s[last], t_s[last], h_s[last]
    else:
        sums = np.add.reduceat(r_s, starts)
        value = sums if policy == "sum" else sums / sizes
        stamped = np.logical_or.reduceat(h_s, starts)
        stamp = np.maximum.reduceat(np.where(h_s, t_s, np.iinfo(np.int64).min), starts)
    firsts = pa.array(order[starts])
    table = pa.table(
        {
            USER: user.take(firsts),
            ITEM: item.take(firsts),
            RATING: pa.array(value, pa.float64()),
            TIMESTAMP: pa.array(stamp, pa.int64(), mask=~stamped),
            PART: pa.array(p_s[starts], pa.int32()),
        }
    )
    repeated = np.flatnonzero(sizes > 1)
    dup = []
    if repeated.size:  # each pair's first read row: the least (file, row) of its group
        read_key = file.astype(np.int64)[order] * 2**40 + row[order]
        first = np.minimum.reduceat(read_key, starts)[repeated]
        for g in repeated[np.argsort(first, kind="stable")][: spark_rules.SHOWN]:
            at = int(order[starts[g]])
            first_at = starts[g] + int(np.argmin(read_key[starts[g] : starts[g] + sizes[g]]))
            dup.append(
                (
                    user[at].as_py(),
                    item[at].as_py(),
                    int(sizes[g]),
                    int(file[order[first_at]]),
                    int(row[order[first_at]]),
                )
            )
    return table, dup


def _too_dirty(rejected: pa.Table, n_rejected: int, n_read: int, cfg: DataConfig) -> InputError:
    files = rejected.column(SOURCE).unique().to_pylist()
    first = rejected.slice(0, spark_rules.SHOWN).select(list(REJECTED_COLUMNS)).to_pylist()
    return spark_rules.too_dirty_error(files, first, n_rejected, n_read, cfg)


def duplicate_error(dups: list, sources: dict[int, str], n_extra: int) -> InputError:
    """The error for repeated pairs under data.duplicates = 'error' (first_duplicates' pairs)."""
    return spark_rules.duplicate_error([sources[d[3]] for d in dups], [d[:3] for d in dups], n_extra)
