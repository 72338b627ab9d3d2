"""The input files straight into one Arrow table on the driver, exactly as `read.ratings` reads them.

Output columns, as `read.ratings` (the raw rows validation takes):
    user, item, rating, timestamp   text formats: strings, as Spark's readers give them (null where
                                    Spark's CSV reader gives null); Parquet: native types, timestamps
                                    as epoch seconds
    _source                         the file's URI;  _file  int32, the file's position in the input's
                                    sorted file list;  _row  int64, the row's position in its file

Strict: whatever this reader could read differently from Spark's (a row with another number of fields,
quotes or escapes in a value, invalid UTF-8, a whitespace-separated file, partition folders, files
whose schemas differ, a column type validation would treat as text) raises `Unreadable`, and the
caller reads the input with Spark instead, which reports every such row as Spark always has. So the
rows, and every row's values, are those `read.ratings` gives.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from mf_spark.core.config import DataConfig
from mf_spark.core.types import FILE, ITEM, RATING, ROW, SOURCE, TIMESTAMP, USER
from mf_spark.data import read

COLUMNS = (USER, ITEM, RATING, TIMESTAMP)
_ID_TYPES = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string)
_BLOCK = 64 << 20  # bytes of a file pyarrow parses at a time


class Unreadable(Exception):
    """Why the driver cannot read this input exactly as Spark would (Spark reads it then)."""


def files_of(path: str) -> list[str]:
    """The data files of a local path (a file, or a folder as Spark lists it); Unreadable when the
    path is not on the local file system."""
    if not read.is_local(path):
        raise Unreadable(f"{path} is not on the driver's file system")
    local = os.path.abspath(read.local_path(path))  # tasks run in folders of their own
    names = read.data_files(local) if os.path.isdir(local) else [local]
    if any("=" in part for n in names for part in Path(os.path.relpath(n, local)).parts[:-1]):
        raise Unreadable("partition folders (key=value) add columns only Spark's reader knows")
    return names


def input_bytes(path: str) -> int:
    return sum(os.path.getsize(n) for n in files_of(path))


def table(path: str, fmt: str, cfg: DataConfig) -> pa.Table:
    """Raw ratings of `path` (see the module docstring). `fmt` as for `read.ratings`.

    Raises Unreadable (with the reason) for anything Spark's reader should read instead, including
    every input `read.ratings` would reject: its InputError then comes from there, word for word.
    """
    how = plan(path, fmt, cfg)
    return with_meta([(name, how.read(name)) for name in how.files])


TEXT_ROW_BYTES = 12  # about the shortest line a rating takes ("123,4567,5\n")


@dataclass(frozen=True)
class Plan:
    """How to read each file of one input: what the driver learned from the first file (format,
    header, which fields hold which column). `read` takes one file alone, so the files of an input
    can be read by different tasks, each checking its file against the plan."""

    files: tuple[str, ...]
    fmt: str  # parquet | csv | tsv | movielens
    first_file: str
    positions: tuple  # per column of COLUMNS: a Parquet column name or a field position (None: absent)
    first_line: str = ""  # text formats: the first line (the header, when there is one)
    header: bool = False
    schema: pa.Schema | None = None  # Parquet: the first file's schema, every file's

    def raw_types(self) -> dict[str, pa.DataType]:
        """Each column's Arrow type as `read` gives it, known before a row is read."""
        if self.fmt != "parquet":
            return {key: pa.string() for key in COLUMNS}
        out = {}
        for key, c in zip(COLUMNS, self.positions):
            if c is None:
                out[key] = pa.string() if key == RATING else pa.int64()  # an event log's "1", no timestamp
                continue
            kind = self.schema.field(c).type
            if key != RATING and pa.types.is_integer(kind) or pa.types.is_timestamp(kind):
                kind = pa.int64()
            elif key in (USER, ITEM):
                kind = pa.string()
            out[key] = kind
        return out

    def rows_bound(self, name: str) -> int:
        """About as many rows as file `name` has, or more: a Parquet footer's count, a text file's
        size over TEXT_ROW_BYTES."""
        if self.fmt != "parquet":
            return os.path.getsize(name) // TEXT_ROW_BYTES
        try:
            return pq.ParquetFile(name).metadata.num_rows
        except (OSError, ValueError) as e:
            raise Unreadable(f"{name}: {e}") from None

    def read(self, name: str, groups: tuple[int, int] | None = None) -> pa.Table:
        """One file's rows (Parquet: only row groups [first, last) with `groups`): the COLUMNS only, no
        _source/_file/_row. Unreadable as `table`."""
        if self.fmt == "parquet":
            return _parquet_file(name, self, groups)
        return _text_file(name, self)

    def pieces(self, name: str, rows: int) -> list[tuple[tuple[int, int] | None, int]]:
        """A file cut into pieces of about `rows` rows that `read` takes alone: (row groups, the
        piece's first row); a text file, or a Parquet file of one row group, is one piece."""
        if self.fmt != "parquet":
            return [(None, 0)]
        try:
            meta = pq.ParquetFile(name).metadata
        except (OSError, ValueError) as e:
            raise Unreadable(f"{name}: {e}") from None
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if len(sizes) < 2:
            return [(None, 0)]
        out, start, first, n = [], 0, 0, 0
        for g, size in enumerate(sizes):
            n += size
            if n >= rows or g == len(sizes) - 1:
                out.append(((start, g + 1), first))
                start, first, n = g + 1, first + n, 0
        return out


def plan(path: str, fmt: str, cfg: DataConfig, events: bool = False) -> Plan:
    """The Plan for `path` (its files listed, its first file peeked); Unreadable as `table`. `events`:
    as read.ratings reads implicit data, a file without a rating column is an event log, each row 1."""
    names = files_of(path)
    try:
        peek = read.peek_input(path)
        fmt = read.detect(peek, path) if fmt == "auto" else fmt
    except Exception as e:  # noqa: BLE001 - read.ratings raises the same error, with Spark's reading
        raise Unreadable(str(e)) from None
    if fmt == "parquet" and peek.parquet:
        return _parquet_plan(names, cfg, peek.first_file, events)
    if fmt in ("csv", "tsv", "movielens") and not peek.parquet and len(peek.lines) == 2:
        return _text_plan(names, fmt, peek.lines[0], cfg, peek.first_file, events)
    raise Unreadable(f"format {fmt} of {path} is read by Spark")


def uri(name: str) -> str:
    """The file's URI as Spark's _metadata.file_path gives it: file:/a/b%20c.csv (non-ASCII kept)."""
    return "file:" + "".join(
        c if ord(c) > 127 else quote(c, safe="/:@!$&'()*+,;=-._~") for c in str(Path(name).absolute())
    )


def with_meta(parts: list[tuple[str, pa.Table]], first_file: int = 0, first_row: int = 0) -> pa.Table:
    """The files' rows in order, with _source (dictionary-encoded: one string per file), _file (the
    file's position, counted from `first_file`) and _row (the row's position in its file; the
    first part's rows counted from `first_row`, when it is a piece of its file)."""
    tables = []
    for at, (name, t) in enumerate(parts, first_file):
        n = t.num_rows
        source = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([uri(name)]))
        tables.append(
            t.append_column(SOURCE, source)
            .append_column(FILE, pa.array(np.full(n, at, np.int32)))
            .append_column(ROW, pa.array(np.arange(n, dtype=np.int64) + (first_row if at == first_file else 0)))
        )
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as e:
        raise Unreadable(f"the files' columns differ: {e}") from None


# ---- Parquet -----------------------------------------------------------------------------------------
def _parquet_column(t: pa.Table, key: str, name: str | None, source: str) -> pa.Array:
    if name is None:
        return _absent(t.num_rows, key, pa.int64())
    col = t.column(name).combine_chunks()
    kind = col.type
    if key in (USER, ITEM):
        if not any(f(kind) for f in _ID_TYPES) or pa.types.is_uint64(kind):
            raise Unreadable(f"{source}: {key} column {name!r} of type {kind}")
        return col.cast(pa.int64()) if pa.types.is_integer(kind) else col.cast(pa.string())
    if key == RATING:
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        ) or pa.types.is_uint64(kind):
            raise Unreadable(f"{source}: rating column {name!r} of type {kind}")
        return col
    if pa.types.is_integer(kind) and not pa.types.is_uint64(kind):
        return col.cast(pa.int64())
    if pa.types.is_timestamp(kind) and kind.tz is not None:  # Spark's TimestampType: unix_seconds
        ticks = col.cast(pa.int64())  # in the column's own unit (s, ms, us or ns): floored to seconds
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        seconds = np.floor_divide(ticks.fill_null(0).to_numpy(zero_copy_only=False), per_second)
        return pa.array(seconds, pa.int64(), mask=ticks.is_null().to_numpy(zero_copy_only=False))
    raise Unreadable(f"{source}: timestamp column {name!r} of type {kind}")


def _parquet_plan(names: list[str], cfg: DataConfig, source: str, events: bool) -> Plan:
    try:
        schema = pq.read_schema(names[0])
    except (OSError, ValueError) as e:
        raise Unreadable(f"{names[0]}: {e}") from None
    cols = [f.name for f in schema]
    if len(set(c.lower() for c in cols)) != len(cols):
        raise Unreadable(f"{source}: column names that differ only in case")
    try:
        pos = read.choose_columns(cols, cfg, True, source, events)
    except Exception as e:  # noqa: BLE001 - Spark's reader raises it
        raise Unreadable(str(e)) from None
    chosen = tuple(None if p is None else cols[p] for p in pos.values())
    return Plan(tuple(names), "parquet", source, chosen, schema=schema)


def _parquet_file(name: str, how: Plan, groups: tuple[int, int] | None) -> pa.Table:
    try:
        f = pq.ParquetFile(name)
    except (OSError, ValueError) as e:
        raise Unreadable(f"{name}: {e}") from None
    if not f.schema_arrow.equals(how.schema):
        raise Unreadable(f"{name}: its schema differs from {how.files[0]}'s")
    columns = sorted({c for c in how.positions if c is not None})
    t = f.read(columns=columns) if groups is None else f.read_row_groups(range(*groups), columns=columns)
    return pa.table({key: _parquet_column(t, key, c, name) for key, c in zip(COLUMNS, how.positions)})


# ---- CSV, TSV, MovieLens ::  -------------------------------------------------------------------------
def _separator(fmt: str, first_line: str) -> tuple[list[str], str, bool]:
    """(the first line's fields, the separator pyarrow splits on, whether fields may be quoted)."""
    if fmt == "csv":
        sep = read.csv_separator(first_line)
        return next(csv.reader([first_line], delimiter=sep)), sep, True
    if fmt == "movielens":
        return first_line.split("::"), ":", False
    if "\t" in first_line:
        return first_line.split("\t"), "\t", False
    raise Unreadable("whitespace-separated fields are split by Spark")


def _text_plan(names: list[str], fmt: str, first_line: str, cfg: DataConfig, source: str, events: bool) -> Plan:
    fields = _separator(fmt, first_line)[0]
    if len(fields) < 2:
        raise Unreadable(f"{source}: one field per line")
    header = read.looks_like_header(fields, events, cfg)
    try:
        pos = read.choose_columns(fields, cfg, header, source, events)
    except Exception as e:  # noqa: BLE001 - Spark's reader raises it
        raise Unreadable(str(e)) from None
    return Plan(tuple(names), fmt, source, tuple(pos.values()), first_line, header)


def _text_file(name: str, how: Plan) -> pa.Table:
    fmt = how.fmt
    fields, sep, quoted = _separator(fmt, how.first_line)
    width = len(fields) * 2 - 1 if fmt == "movielens" else len(fields)
    t = _read_text(name, sep, quoted, width, how.header, how.first_line)
    if fmt == "movielens":  # "a::b" read with ":" is a, "", b: the odd fields must be empty
        odd = [t.column(j) for j in range(1, width, 2)]
        if any(c.null_count != len(c) and pc.any(pc.not_equal(c, "")).as_py() for c in odd):
            raise Unreadable(f"{name}: a value holds ':'")
        t = t.select(list(range(0, width, 2)))
    at = how.positions[2] if how.positions[2] is not None else how.positions[0]  # an event log: no rating
    if how.header and not quoted and pc.any(pc.equal(t.column(at), fields[at])).as_py():
        raise Unreadable(f"{name}: the header repeats inside the file (Spark's text reader drops it)")
    return pa.table({key: _text_column(t, p, fmt, name, key) for key, p in zip(COLUMNS, how.positions)})


def _read_text(name: str, sep: str, quoted: bool, width: int, header: bool, first_line: str) -> pa.Table:
    with open(name, "rb") as fh:
        if fh.read(3) == b"\xef\xbb\xbf" and not header and quoted:
            raise Unreadable(f"{name}: a byte order mark before the first row")
    if header:
        with read._open_text(name) as fh:
            own = next((line.rstrip("\r\n") for line in fh if line.strip()), None)
        if own != first_line:  # Spark drops each file's header: a file without one differs
            raise Unreadable(f"{name}: its first line is not the header {first_line!r}")
    try:
        t = pcsv.read_csv(
            name,
            read_options=pcsv.ReadOptions(
                skip_rows=1 if header else 0, autogenerate_column_names=True, block_size=_BLOCK
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=sep,
                quote_char='"' if quoted else False,
                double_quote=quoted,
                escape_char=False,
                newlines_in_values=False,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={f"f{j}": pa.string() for j in range(width)},
                strings_can_be_null=quoted,
                quoted_strings_can_be_null=quoted,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{name}: {e}") from None
    if t.num_columns != width:
        raise Unreadable(f"{name}: {t.num_columns} fields per row, expected {width}")
    if quoted:  # Spark's CSV reader escapes with a backslash: any quote or backslash left differs
        for j in range(width):
            col = t.column(j)
            if pc.any(pc.match_substring_regex(col, r'["\\]')).as_py():
                raise Unreadable(f"{name}: quotes or backslashes in values")
    return t


def _absent(n: int, key: str, kind: pa.DataType) -> pa.Array:
    """A column the file lacks, as read.ratings gives it: an event log's rating (read.EVENT each row),
    else nulls (no timestamp)."""
    if key == RATING:
        return pa.array([read.EVENT] * n, pa.string())
    return pa.nulls(n, kind)


def _text_column(t: pa.Table, p: int | None, fmt: str, name: str, key: str) -> pa.Array:
    if p is None:
        return _absent(t.num_rows, key, pa.string())
    col = t.column(p).combine_chunks()
    if fmt == "csv" and pc.any(pc.starts_with(col, "\ufeff")).as_py():
        raise Unreadable(f"{name}: a byte order mark inside the file")
    if fmt != "csv" and p == 0:  # Spark's text path strips a byte order mark off each line
        col = pc.replace_substring_regex(col, "^\ufeff", "")
    return col
