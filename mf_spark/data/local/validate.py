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
from mf_spark.core.types import ITEM, PART, RATING, REASON, ROW, SOURCE, TIMESTAMP, USER
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
    return key, _np(pc.match_substring_regex(key, _CANONICAL), False)


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
    integer = _np(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,18}$"), False) & ~missing
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
        nonpositive = (rating <= 0) & r_parsed if kind == "implicit" else np.zeros(rating.size, bool)
    if cfg.nonpositive == "reject":
        conditions.append((spark_rules.NONPOSITIVE, nonpositive))
    reason = np.full(rating.size, -1, np.int8)
    for n, (_, hit) in reversed(list(enumerate(conditions))):
        reason[hit] = n
    rejected = reason >= 0
    return reason, rejected, ~rejected & nonpositive, [text for text, _ in conditions]


def clean(raw: pa.Table, cfg: DataConfig, kind: str) -> Clean:
    """`validate.clean` of `raw` (local.read.table's columns, optionally `_part`). Raises the same
    InputErrors, and Unreadable when only Spark can parse some value."""
    if kind not in spark_rules.KINDS:
        raise ConfigError(f"config key model.kind: got {kind!r}, expected one of {spark_rules.KINDS}")
    n = raw.num_rows
    col = {c: raw.column(c).combine_chunks() for c in (USER, ITEM, RATING, TIMESTAMP)}
    part = _np(raw.column(PART), 0).astype(np.int64, copy=False) if PART in raw.column_names else np.zeros(n, np.int64)
    nulls = tuple(cfg.null_values)
    user, user_int = _id_key(col[USER], nulls)
    item, item_int = _id_key(col[ITEM], nulls)
    r_missing, rating, r_parsed = _parse_double(col[RATING], "rating", nulls)
    r_parsed &= ~r_missing
    t_missing, ts, t_parsed = _timestamp(col[TIMESTAMP], nulls)
    reason, rejected, dropped, texts = _reasons(user, item, r_missing, r_parsed, rating, t_missing, t_parsed, kind, cfg)
    valid = ~rejected & ~dropped
    row = _np(raw.column(ROW))

    def rejected_rows(mask: np.ndarray) -> pa.Table:
        return _rejected_rows(raw, col, row, reason, texts, mask)

    if n == 0:
        raise InputError("the input has no data rows")
    per_part = _part_counts(part, rejected, dropped, valid)
    for p, in_part in sorted(per_part.items()):
        if in_part["n_rejected"] / in_part["n_read"] > cfg.max_bad_fraction:
            raise _too_dirty(rejected_rows(rejected & (part == p)), in_part["n_rejected"], in_part["n_read"], cfg)
    c = {k: sum(pp[k] for pp in per_part.values()) for k in ("n_read", "n_rejected", "n_dropped", "n_valid")}
    if c["n_valid"] == 0 or any(pp["n_valid"] == 0 for pp in per_part.values()):
        raise InputError(
            f"no valid rows left: {c['n_read']} read, {c['n_rejected']} rejected, "
            f"{c['n_dropped']} dropped (ratings <= 0, data.nonpositive = 'drop')"
        )
    if c["n_valid"] == n:  # the usual case: every row is valid, nothing to select
        sources, ids = raw.column(SOURCE), (user, item)
        picked = lambda a: a
    else:
        keep = pa.array(np.flatnonzero(valid))
        sources, ids = raw.column(SOURCE).take(keep), (user.take(keep), item.take(keep))
        picked = lambda a: a[valid]
    merged, n_clean, dup_first = _merge(
        picked(part), *ids, picked(rating), picked(ts), ~picked(t_missing), picked(row), cfg.duplicates_policy(kind)
    )
    n_duplicates = c["n_valid"] - n_clean
    if n_duplicates and cfg.duplicates_policy(kind) == "error":
        raise _duplicate_error(dup_first, sources, n_duplicates)
    for name, canonical in ((USER, picked(user_int).all()), (ITEM, picked(item_int).all())):
        if canonical and merged.schema.field(name).type == pa.string():
            at = merged.column_names.index(name)
            merged = merged.set_column(at, name, merged.column(name).cast(pa.int64()))
    if PART not in raw.column_names:
        merged = merged.drop_columns([PART])
    counts = {
        "n_read": c["n_read"],
        "n_rejected": c["n_rejected"],
        "n_dropped": c["n_dropped"],
        "n_duplicates_merged": n_duplicates,
        "n_clean": n_clean,
    }
    return Clean(merged, rejected_rows(rejected), counts)


def _rejected_rows(raw: pa.Table, col: dict, row: np.ndarray, reason: np.ndarray, texts: list, mask: np.ndarray):
    """The rows of `mask` as validate.clean's rejected table: their source, row, fields as text and
    reason, in read order."""
    at = pa.array(np.flatnonzero(mask))
    order = np.argsort(row[mask], kind="stable")
    timestamps = col[TIMESTAMP]
    t = pa.table(
        {
            SOURCE: raw.column(SOURCE).take(at).cast(pa.string()),
            ROW: raw.column(ROW).take(at),
            USER: as_text(col[USER].take(at)),
            ITEM: as_text(col[ITEM].take(at)),
            RATING: as_text(col[RATING].take(at)),
            TIMESTAMP: (
                as_text(timestamps.take(at))
                if not pa.types.is_null(timestamps.type)
                else pa.nulls(int(mask.sum()), pa.string())
            ),
            REASON: pa.array(np.array(texts, dtype=object)[reason[mask]].tolist() if mask.any() else [], pa.string()),
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


def _merge(part, user, item, rating, ts, has_ts, row, policy):
    """One row per (part, user, item) under the duplicates policy; (table, rows kept, the repeated
    pairs as (user, item, count, first row index into the valid rows) ordered by first row)."""
    u_all, i_all = _codes(user), _codes(item)
    n_u, n_i = int(u_all.max(initial=0)) + 1, int(i_all.max(initial=0)) + 1
    if (int(part.max(initial=0)) + 1) * n_u * n_i < 2**62:  # the usual case: no pair repeats
        key = np.sort((part * n_u + u_all) * n_i + i_all)
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
                int(key.size),
                [],
            )
    order = np.lexsort((row, np.where(has_ts, ts, np.iinfo(np.int64).min), has_ts, i_all, u_all, part))
    u_c, i_c = u_all[order], i_all[order]
    p_s = part[order]
    starts = np.flatnonzero(
        np.concatenate([[True], (p_s[1:] != p_s[:-1]) | (u_c[1:] != u_c[:-1]) | (i_c[1:] != i_c[:-1])])
    )
    sizes = np.diff(np.append(starts, order.size))
    last = starts + sizes - 1
    r_s, t_s, h_s = rating[order], ts[order], has_ts[order]
    if policy == "last":  # sorted by (timestamp, nulls first; row): each group's last wins
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
    first_row = np.minimum.reduceat(row[order], starts)[repeated] if repeated.size else np.zeros(0, np.int64)
    by_first = repeated[np.argsort(first_row, kind="stable")][: spark_rules.SHOWN]
    dup = [
        (user[int(order[starts[g]])].as_py(), item[int(order[starts[g]])].as_py(), int(sizes[g]), int(order[starts[g]]))
        for g in by_first
    ]
    return table, int(starts.size), dup


def _too_dirty(rejected: pa.Table, n_rejected: int, n_read: int, cfg: DataConfig) -> InputError:
    files = rejected.column(SOURCE).unique().to_pylist()
    return spark_rules.too_dirty_error(files, rejected.slice(0, spark_rules.SHOWN).to_pylist(), n_rejected, n_read, cfg)


def _duplicate_error(dup: list, sources: pa.ChunkedArray | pa.Array, n_extra: int) -> InputError:
    return spark_rules.duplicate_error([sources[d[3]].as_py() for d in dup], [d[:3] for d in dup], n_extra)
