"""Read feedback files into one raw DataFrame: CSV (`,` `;` or `|`), TSV / whitespace, MovieLens `::`,
JSON lines, Parquet.

Output columns, whatever the format (see `ratings`):
    user, item, rating, timestamp   raw values: StringType for text formats (validation parses them
                                    and keeps what it cannot parse), native types for Parquet
    _source                         file the row came from (a URI, as Spark reports it)
    _row                            long, `monotonically_increasing_id()` taken before any shuffle:
                                    orders rows as read ("last" duplicates, first bad rows)
    _malformed                      text formats: why the row's fields cannot be trusted (another
                                    number of fields than the header / first row has, a JSON line
                                    that is not an object), else null

Only format detection touches the data eagerly, and it reads at most the first lines of the first
file on the driver (local paths) or runs one `limit(2)` Spark job (other file systems).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import logging
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DateType,
    FractionalType,
    IntegralType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from mf_spark.core import fs
from mf_spark.core.config import DataConfig
from mf_spark.core.errors import InputError
from mf_spark.core.types import ITEM, MALFORMED, RATING, ROW, SOURCE, TIMESTAMP, USER

log = logging.getLogger("mf_spark")

FORMATS = ("csv", "tsv", "movielens", "json", "parquet")
KEYS = {USER: "user_col", ITEM: "item_col", RATING: "rating_col", TIMESTAMP: "timestamp_col"}
# Header names tried in this order, compared lower-case with "_", "-", " " removed.
COMMON_NAMES = {
    USER: (
        "userid",
        "user",
        "uid",
        "users",
        "customerid",
        "customer",
        "visitorid",
        "memberid",
        "accountid",
        "reviewerid",
        "clientid",
        "listenerid",
    ),
    ITEM: (
        "itemid",
        "item",
        "movieid",
        "iid",
        "productid",
        "product",
        "trackid",
        "track",
        "songid",
        "artistid",
        "bookid",
        "isbn",
        "asin",
        "parentasin",
        "businessid",
        "business",
        "articleid",
        "contentid",
        "movie",
        "song",
        "artist",
        "items",
    ),
    RATING: (
        "rating",
        "score",
        "value",
        "count",
        "plays",
        "playcount",
        "weight",
        "stars",
        "overall",
        "clicks",
        "quantity",
        "listens",
        "views",
        "preference",
    ),
    TIMESTAMP: (
        "timestamp",
        "ts",
        "time",
        "date",
        "datetime",
        "eventtime",
        "createdat",
        "unixtime",
        "unixreviewtime",
        "epoch",
    ),
}
_KNOWN_NAMES = frozenset(n for names in COMMON_NAMES.values() for n in names)
_TEXT_SPLIT = {"movielens": "::", "tab": "\t", "whitespace": r"\s+"}
_CSV_SEPARATORS = (",", ";", "|")
_BY_EXTENSION = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}
NOT_A_JSON_OBJECT = "not a JSON object on one line (JSON lines)"
EVENT = "1"  # the rating of each row of an event log (implicit data without a rating column)
NO_RATING = "-"  # data.rating_col for an event log whose columns auto would misread (no header)
_COMPRESSED = (".gz", ".bz2")


SAMPLE = ("data", "mllib", "als", "sample_movielens_ratings.txt")


def columns_disagree(where: str, first: str, differ: list[str], kind: str) -> InputError:
    """The error of a folder whose files disagree on their columns: `first` says what the first file
    has, `differ` names the others (five at most are listed)."""
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return InputError(
        f"{where}: the files' columns disagree: {first}, but {', '.join(differ[:5])}{more}; "
        f"give files with one {kind}, or read them separately"
    )


def sample_path() -> str:
    """The MovieLens sample (`user::item::rating::timestamp`, 1501 rows) shipped with pyspark.

    Run as `python -m`, pyspark is the installed package; under spark-submit it is imported from
    $SPARK_HOME/python/lib/pyspark.zip, so the file is looked up under SPARK_HOME too.
    Raises InputError when neither has it.
    """
    candidates = [str(files("pyspark").joinpath(*SAMPLE))]
    spark_home = os.environ.get("SPARK_HOME")
    if spark_home:
        candidates.append(os.path.join(spark_home, *SAMPLE))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise InputError(
        "the MovieLens sample shipped with pyspark was not found (looked in "
        + ", ".join(candidates)
        + "); give --input"
    )


@dataclass(frozen=True)
class Peek:
    """What detection learned from the start of the input (no Spark involved for local paths)."""

    first_file: str  # the file whose lines were read ("" when unknown)
    lines: tuple[str, ...]  # first non-blank line, then the next one that differs (see _first_two)
    parquet: bool  # every data file is Parquet (extension or PAR1 magic)


COPYING = "._COPYING_"  # a file `hdfs dfs -put` / `-cp` is still writing


def is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")  # C:\ on Windows


def local_path(path: str) -> str:
    return unquote(urlparse(path).path) if path.startswith("file:") else path


def base_ext(name: str) -> str:
    low = name.lower()
    for suffix in _COMPRESSED:
        if low.endswith(suffix):
            low = low[: -len(suffix)]
    return os.path.splitext(low)[1]


def _open_text(path: str):
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace")
    if low.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace")


def data_files(folder: str) -> list[str]:
    """Files Spark would read in `folder`: hidden (`.x`) and metadata (`_x`) names are skipped."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) or "=" in d)
        out += [os.path.join(root, n) for n in sorted(names) if not n.startswith((".", "_"))]
    return [p for p in out if os.path.getsize(p) > 0]


def _is_parquet(path: str) -> bool:
    ext = base_ext(path)
    if ext in (".parquet", ".dat", ".txt", *_BY_EXTENSION):
        return ext == ".parquet"
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _first_two(names: list[str]) -> tuple[str, ...]:
    """First non-blank line of the first file, then the next non-blank line that differs from it
    (later files of a folder repeat the header, so a header-only first file is not "no data")."""
    lines: list[str] = []
    for name in names:
        with _open_text(name) as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if line.strip() and (not lines or line != lines[0]):
                    lines.append(line)
                    if len(lines) == 2:
                        return tuple(lines)
    return tuple(lines)


def peek_input(path: str) -> Peek:
    """Read the first lines of the input on the driver; raise InputError when there is nothing."""
    if not is_local(path):
        return Peek("", (), base_ext(path.rstrip("/")) == ".parquet")
    local = local_path(path)
    try:
        if not os.path.exists(local):
            raise InputError(f"input {path} does not exist")
        names = data_files(local) if os.path.isdir(local) else [local]
        copying = [n for n in names if n.endswith(COPYING)]
        if copying:
            raise InputError(
                f"input {path}: {copying[0]} is still being copied (a copy writes NAME{COPYING} and renames "
                f"it when done); wait for the copy to finish, or remove the file"
            )
        if not names or (len(names) == 1 and os.path.getsize(names[0]) == 0):
            raise InputError(f"input {path} is empty: no data rows")
        if all(_is_parquet(n) for n in names):
            return Peek(names[0], (), True)
        return Peek(names[0], _first_two(names), False)
    except OSError as exc:
        raise InputError(f"input {path} cannot be read: {exc}") from None


def csv_separator(line: str) -> str:
    """The one of `,` `;` `|` that splits a CSV line into the most fields, quotes respected (`,` on
    a tie, and for a line none of them splits)."""
    return max(_CSV_SEPARATORS, key=lambda sep: len(next(csv.reader([line], delimiter=sep))))


def _format_of_line(line: str) -> str:
    if line.lstrip().startswith("{"):
        return "json"
    if "::" in line:
        return "movielens"
    if "\t" in line:
        return "tsv"
    if len(next(csv.reader([line], delimiter=csv_separator(line)))) > 1:
        return "csv"
    return "tsv"  # whitespace-separated (or one field: the reader then reports the delimiter)


def detect_format(path: str) -> str:
    """csv | tsv | movielens | json | parquet, from the file name, the folder's files, or the first line.

    The first line decides for other names (`.dat`, `.txt`, ...): `{` -> json (lines), `::` ->
    movielens, a tab -> tsv, fields split by `,` `;` or `|` -> csv, else whitespace-separated -> tsv.
    Raises InputError (naming the path) if the path does not exist, cannot be read or has no data.
    Reads at most 2 lines on the driver; no Spark job.
    """
    return detect(peek_input(path), path)


def detect(peek: Peek, path: str) -> str:
    if peek.parquet:
        return "parquet"
    ext = base_ext(peek.first_file or path.rstrip("/"))
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    if not peek.lines:
        if peek.first_file:
            raise InputError(f"input {path} is empty: no data rows")
        raise InputError(
            f"input {path}: cannot detect the format of a non-local path without a "
            f"known extension; pass --format {'|'.join(FORMATS)}"
        )
    return _format_of_line(peek.lines[0])


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


def looks_like_header(fields: list[str], events: bool = False, cfg: DataConfig | None = None) -> bool:
    """A data row always has a numeric rating, a header row has no number at all. An event log's
    rows may have none either (string IDs, no rating): there a header also names a column, as the
    readers know them (COMMON_NAMES) or as `cfg` names it (data.user_col = "customer_key")."""
    if any(_is_number(f) for f in fields if f.strip()):
        return False
    given = [getattr(cfg, a).strip() for a in KEYS.values()] if cfg is not None else []
    named = {v for v in given if v and not v.isdigit() and v != NO_RATING}
    return not events or any(norm(f) in _KNOWN_NAMES or f.strip() in named for f in fields)


def norm(name: str) -> str:
    """A column name as the readers match it: lowercase, without spaces, _ and -."""
    return re.sub(r"[\s_\-]", "", name.lower())


def choose_columns(
    columns: list[str], cfg: DataConfig, header: bool, source: str, events: bool = False, checked: bool = False
) -> dict[str, int | None]:
    """Map user/item/rating/timestamp to column positions (None = no timestamp). `events` (implicit
    data): with data.rating_col "-", or auto and no rating column found, rating None: an event log,
    whose every row is one interaction of strength 1 (`_project`), which is logged unless `checked`
    (the columns are only checked here, and chosen again from the names Spark gives them)."""
    say = (lambda *_: None) if checked else _log_event_log
    if cfg.rating_col.strip() == NO_RATING and not events:
        raise InputError(
            f"{source}: data.rating_col = {NO_RATING!r} reads an event log (every row 1), for implicit data "
            f"only; set model.kind = 'implicit', or name the rating column"
        )
    if len(columns) == 1:
        raise InputError(
            f"{source}: found 1 column {columns!r}: the delimiter is probably not the "
            f"one of this format; pass --format {'|'.join(FORMATS)}, or convert "
            f"the file to comma-, tab- or '::'-separated fields"
        )
    if header:
        shown = "columns " + ", ".join(repr(c) for c in columns)
    else:
        shown = f"{len(columns)} fields per row, positions 0..{len(columns) - 1}"
    chosen: dict[str, int | None] = {}
    for key, attr in KEYS.items():
        want = getattr(cfg, attr).strip()
        if key == RATING and want == NO_RATING:
            say(source, shown)
            chosen[key] = None
        elif want.isdigit():
            pos = int(want)
            if pos >= len(columns):
                raise InputError(f"{source}: data.{attr} = {want!r} is beyond the {shown}")
            chosen[key] = pos
        elif want:
            if not header:
                raise InputError(
                    f"{source}: data.{attr} = {want!r} names a column, but this file "
                    f"has no header ({shown}); give a 0-based position instead"
                )
            hits = [i for i, c in enumerate(columns) if c == want] or [
                i for i, c in enumerate(columns) if c.lower() == want.lower()
            ]
            if not hits:
                raise InputError(f"{source}: column {want!r} (data.{attr}) not found; {shown}")
            if len(hits) > 1:
                raise _twice(source, columns[hits[0]], hits, attr)
            chosen[key] = hits[0]
        elif header:
            used = {p for p in chosen.values() if p is not None}
            normed = [norm(c) for c in columns]
            hit = next(
                (normed.index(n) for n in COMMON_NAMES[key] if n in normed and normed.index(n) not in used), None
            )
            if hit is None and key != TIMESTAMP:
                hit = _ending_in_a_name(columns, normed, used, key, attr, source)
            if hit is None and key == RATING and events:
                say(source, shown)
                chosen[key] = None
                continue
            if hit is None and key != TIMESTAMP:
                tried = ", ".join(COMMON_NAMES[key][:6])
                raise InputError(
                    f"{source}: no {key} column found (data.{attr} is auto; tried "
                    f"{tried}, ...); {shown}; set data.{attr}"
                )
            if hit is not None and normed.count(normed[hit]) > 1:
                raise _twice(source, columns[hit], [i for i, n in enumerate(normed) if n == normed[hit]], attr)
            chosen[key] = hit
        else:
            default = {USER: 0, ITEM: 1, RATING: 2, TIMESTAMP: 3}[key]
            if default >= len(columns) and key == RATING and events:
                say(source, shown)
                chosen[key] = None
                continue
            if default >= len(columns) and key != TIMESTAMP:
                raise InputError(f"{source}: no {key} column (data.{attr} is auto = position {default}); {shown}")
            chosen[key] = default if default < len(columns) else None
    return chosen


def _log_event_log(source: str, shown: str) -> None:
    log.info(
        "%s: no rating column (%s): each row is one interaction of strength 1, and repeated (user, item) "
        "rows add up as data.duplicates says (sum by default)",
        source,
        shown,
    )


def _ending_in_a_name(columns: list[str], normed: list[str], used: set, key: str, attr: str, source: str) -> int | None:
    """The one column left whose name ends in a common name of `key` ("Book-Rating", "song_rating"),
    the names tried in their order; InputError when two end in the same one. Timestamps are never
    guessed so ("runtime")."""
    for name in COMMON_NAMES[key]:
        ends = [j for j, c in enumerate(normed) if c.endswith(name) and j not in used]
        if len(ends) > 1:
            named = ", ".join(repr(columns[j]) for j in ends)
            raise InputError(f"{source}: columns {named} could each be the {key} column; set data.{attr}")
        if ends:
            return ends[0]
    return None


def _twice(source: str, name: str, at: list[int], attr: str) -> InputError:
    return InputError(
        f"{source}: the header names column {name!r} more than once (positions "
        f"{', '.join(map(str, at))}); set data.{attr} to the position of the one to use"
    )


def _quoted(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def _with_meta(df: DataFrame) -> DataFrame:
    """Attach _source and _row straight after the read, while the file metadata is still there."""
    return df.select("*", F.col("_metadata.file_path").alias(SOURCE), F.monotonically_increasing_id().alias(ROW))


def _project(df: DataFrame, cols: list[Column | None], malformed: Column | None = None) -> DataFrame:
    """The raw layout. No timestamp column gives null; no rating column (an event log, see
    choose_columns) gives "1", read by validation as any rating's text."""
    named = [
        (c if c is not None else F.lit(EVENT if n == RATING else None).cast("string")).alias(n)
        for c, n in zip(cols, (USER, ITEM, RATING, TIMESTAMP))
    ]
    bad = malformed if malformed is not None else F.lit(None).cast("string")
    return df.select(*named, SOURCE, ROW, bad.alias(MALFORMED))


def field_count_reason(width: int, header: bool) -> str:
    """The rejection reason of a row whose number of fields is not `width`."""
    return f"the row does not have the {width} fields {'the header' if header else 'the first row'} has"


def check_same_columns(names: list[str], first_line: str, what: str) -> None:
    """InputError naming the files of a folder whose first line (the header) is not `first_line`:
    their columns would be read by the first file's names."""
    differ = []
    for name in names:
        with _open_text(name) as fh:
            own = next((line.rstrip("\r\n") for line in fh if line.strip()), None)
        if own is not None and own != first_line:
            differ.append(f"{os.path.basename(name)} ({own[:80]!r})")
    if differ:
        raise columns_disagree(
            what, f"{os.path.basename(names[0])} has the header {first_line[:80]!r}", differ, "header"
        )


def _stripped(col: str | Column) -> Column:
    # F.trim strips spaces only; tabs and a UTF-8 byte order mark must go too.
    return F.regexp_replace(col, r"^[\s\x{FEFF}]+|\s+$", "")


def _load(path: str, reader) -> DataFrame:
    try:
        return reader(path)
    except AnalysisException as exc:
        raise InputError(f"input {path} cannot be read: {exc}") from None


def _first_lines(spark: SparkSession, path: str, peek: Peek) -> tuple[str, ...]:
    if peek.lines or peek.first_file:
        return peek.lines
    # Non-local path: one small Spark job.
    text = _load(path, spark.read.text)
    rows = text.where(_stripped("value") != "").limit(2).collect()
    return tuple(r.value.lstrip("\ufeff") for r in rows)


def _read_csv(
    spark: SparkSession, path: str, lines: tuple[str, ...], cfg: DataConfig, source: str, events: bool
) -> DataFrame:
    sep = csv_separator(lines[0])
    first = next(csv.reader([lines[0]], delimiter=sep))
    found = re.search(r"::|\t", lines[0])
    if len(first) == 1 and found:
        raise InputError(
            f"{source}: read as csv it has 1 column {first!r}; the fields seem to be "
            f"separated by {found.group(0)!r}: pass --format tsv (tab) or movielens "
            f"('::'), or convert the file to comma-separated"
        )
    header = looks_like_header(first, events, cfg)
    if header and len(lines) < 2:
        raise InputError(f"{source}: header only, no data rows")
    if header:  # the header as written: Spark renames repeated names (rating -> rating2, rating3)
        choose_columns(first, cfg, header, source, events, checked=True)
    names = _load(path, lambda p: spark.read.csv(p, sep=sep, header=header, inferSchema=False)).columns
    pos = choose_columns(names, cfg, header, source, events)
    # Read again with the corrupt-record column: a row with more or fewer fields than the header is
    # flagged there instead of being truncated or padded into shifted values.
    corrupt = "_mf_corrupt_record"
    schema = StructType([StructField(n, StringType()) for n in names] + [StructField(corrupt, StringType())])
    df = _with_meta(
        _load(
            path,
            lambda p: spark.read.csv(p, sep=sep, header=header, schema=schema, columnNameOfCorruptRecord=corrupt),
        )
    )
    return _project(
        df,
        [None if p is None else _quoted(names[p]) for p in pos.values()],
        F.when(F.col(corrupt).isNotNull(), F.lit(field_count_reason(len(names), header))),
    )


def _read_delimited(
    spark: SparkSession, path: str, fmt: str, lines: tuple[str, ...], cfg: DataConfig, source: str, events: bool
) -> DataFrame:
    kind = "movielens" if fmt == "movielens" else ("tab" if "\t" in lines[0] else "whitespace")
    sep = _TEXT_SPLIT[kind]
    first = re.split(sep, lines[0].strip() if kind == "whitespace" else lines[0])
    if len(first) == 1 and kind != "movielens":
        found = re.search(r"::|[;,|]", lines[0])
        hint = f" (the line contains {found.group(0)!r})" if found else ""
        raise InputError(
            f"{source}: read as {fmt} it has 1 column {first!r}{hint}; pass --format "
            f"{'|'.join(FORMATS)} matching the delimiter"
        )
    header = looks_like_header(first, events, cfg)
    if header and len(lines) < 2:
        raise InputError(f"{source}: header only, no data rows")
    pos = choose_columns(first, cfg, header, source, events)
    raw = _with_meta(_load(path, spark.read.text))
    line = _stripped("value") if kind == "whitespace" else F.regexp_replace("value", "^\ufeff", "")
    raw = raw.where(_stripped("value") != "")
    if header:  # every file of a folder starts with the same header line
        raw = raw.where(line != (lines[0].strip() if kind == "whitespace" else lines[0]))
    parts = F.split(line, sep)
    return _project(
        raw,
        [None if p is None else F.get(parts, p) for p in pos.values()],
        F.when(F.size(parts) != len(first), F.lit(field_count_reason(len(first), header))),
    )


def _epoch_seconds(df: DataFrame, name: str) -> Column:
    dtype = df.schema[name].dataType
    col = _quoted(name)
    if isinstance(dtype, TimestampType):
        return F.unix_seconds(col)
    if isinstance(dtype, (TimestampNTZType, DateType)):
        return F.unix_seconds(col.cast("timestamp"))
    return col


def id_column(col: Column, dtype: DataType) -> Column:
    """An ID column as validation reads it: integers and strings as they are; whole numbers of a
    fractional type as the integer's text (a StringIndexer's doubles; pandas writes integer IDs as
    doubles where one is missing), so they are integer IDs, as MLlib reads them; any other value as
    its text."""
    if isinstance(dtype, (IntegralType, StringType)):
        return col
    if isinstance(dtype, FractionalType):
        d = col.cast("double")
        whole = ~F.isnan(d) & (F.abs(d) < 2.0**63) & (d == F.floor(d))
        return F.when(whole, d.cast("bigint").cast("string")).otherwise(col.cast("string"))
    return col.cast("string")


def _native_columns(df: DataFrame, cfg: DataConfig, source: str, events: bool) -> list[Column | None]:
    """The four data columns of a self-describing format (Parquet, JSON): chosen by name, native
    types kept (IDs as `id_column`), timestamps as epoch seconds. InputError for a chosen column that holds no value
    (a struct, list or map)."""
    names = [n for n in df.columns if n not in (SOURCE, ROW)]
    pos = choose_columns(names, cfg, True, source, events)
    cols: list[Column | None] = []
    for key, p in pos.items():
        if p is None:
            cols.append(None)
            continue
        dtype = df.schema[names[p]].dataType
        if isinstance(dtype, (StructType, ArrayType, MapType)):
            raise InputError(
                f"{source}: column {names[p]!r} ({KEYS[key]}) holds {dtype.simpleString()}, not a value; "
                f"set data.{KEYS[key]} to a column of numbers or strings"
            )
        if key == TIMESTAMP:
            cols.append(_epoch_seconds(df, names[p]))
        else:
            cols.append(id_column(_quoted(names[p]), dtype) if key in (USER, ITEM) else _quoted(names[p]))
    return cols


def _read_json(
    spark: SparkSession, path: str, first_line: str, cfg: DataConfig, source: str, events: bool
) -> DataFrame:
    """JSON lines: one object per line, its fields' types inferred by Spark (one pass over the
    input). A line that is not an object is kept, flagged NOT_A_JSON_OBJECT, for validation to
    reject with that reason. A file that starts with `[` is one array of objects (each file read
    whole)."""
    corrupt = "_mf_corrupt_record"
    whole = first_line.lstrip().startswith("[")
    df = _load(
        path, lambda p: spark.read.json(p, mode="PERMISSIVE", columnNameOfCorruptRecord=corrupt, multiLine=whole)
    )
    if not [n for n in df.columns if n != corrupt]:
        why = "it starts with '[' but is not one array of objects that parses" if whole else NOT_A_JSON_OBJECT
        raise InputError(f"{source}: {why}: no object with fields in it")
    malformed = F.when(F.col(corrupt).isNotNull(), F.lit(NOT_A_JSON_OBJECT)) if corrupt in df.columns else None
    df = _with_meta(df)
    return _project(df, _native_columns(df.drop(corrupt), cfg, source, events), malformed)


def _read_parquet(spark: SparkSession, path: str, cfg: DataConfig, source: str, events: bool) -> DataFrame:
    # Local files are checked with pyarrow first: Spark reads a damaged footer only in a task, where
    # the failure surfaces as a JVM stack trace instead of a message naming the file.
    if is_local(path):
        import pyarrow.parquet as pq

        local = local_path(path)
        names = data_files(local) if os.path.isdir(local) else [local]
        try:
            metas = [pq.ParquetFile(n) for n in names]
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{source}: not a readable Parquet file: {exc}") from None
        if sum(m.metadata.num_rows for m in metas) == 0:
            raise InputError(f"{source}: no data rows")
        columns = [m.schema_arrow.names for m in metas]
        differ = [f"{os.path.basename(n)} ({', '.join(c)})" for n, c in zip(names, columns) if c != columns[0]]
        if differ:
            raise columns_disagree(path, f"{os.path.basename(names[0])} has {', '.join(columns[0])}", differ, "schema")
    df = _with_meta(_load(path, spark.read.parquet))
    return _project(df, _native_columns(df, cfg, source, events))


def ratings(spark: SparkSession, path: str, fmt: str, cfg: DataConfig, events: bool = False) -> DataFrame:
    """Raw ratings of `path` (a file or a folder): user, item, rating, timestamp, _source, _row.

    `fmt` is one of csv | tsv | movielens | json | parquet, or "auto" (see `detect_format`). Columns
    come from `cfg.user_col` ... `cfg.timestamp_col`: a header name, a 0-based position, or "" for
    auto. Delimited text keeps every value as a string; JSON and Parquet keep native types, with
    timestamps turned into epoch seconds. `events` (implicit data): a file without a rating column
    is an event log, each row rated 1 (choose_columns). Raises InputError for a missing, empty or
    header-only input, a missing column (naming the file, the config key and the columns found) or
    a delimiter that splits nothing.

    Performance note: lazy. Detection reads the first lines of the first file on the driver (one
    `limit(2)` job for non-local paths); no shuffle. `_row` is assigned right after the scan.
    """
    if fmt not in (*FORMATS, "auto"):
        raise InputError(f"unknown input format {fmt!r}; expected auto, " + ", ".join(FORMATS))
    peek = peek_input(path)
    source = peek.first_file or path
    if fmt == "auto" and (peek.first_file or peek.parquet or base_ext(path) in _BY_EXTENSION):
        fmt = detect(peek, path)
    if fmt == "parquet":
        return _read_parquet(spark, path, cfg, source, events)
    if peek.parquet and peek.first_file:
        raise InputError(f"{source}: is Parquet, but --format {fmt} was given")
    lines = _first_lines(spark, path, peek)
    if not lines:
        raise InputError(f"{source}: no data rows (the input is empty)")
    if fmt == "auto":  # non-local path without a telling extension
        fmt = _format_of_line(lines[0])
    if fmt == "json":
        return _read_json(spark, path, lines[0], cfg, source, events)
    if (
        peek.first_file
        and os.path.isdir(local_path(path))
        and looks_like_header(_fields_of(lines[0], fmt), events, cfg)
    ):
        check_same_columns(data_files(local_path(path)), lines[0], path)
    if fmt == "csv":
        return _read_csv(spark, path, lines, cfg, source, events)
    return _read_delimited(spark, path, fmt, lines, cfg, source, events)


def _fields_of(line: str, fmt: str) -> list[str]:
    if fmt == "csv":
        return next(csv.reader([line], delimiter=csv_separator(line)))
    if fmt == "movielens":
        return line.split("::")
    return re.split(r"\t" if "\t" in line else r"\s+", line.strip())


def id_list(spark: SparkSession, path: str, col: str, id_type: str, flag: str, out: str = USER) -> DataFrame:
    """DataFrame[`out`] of the IDs listed in `path`, typed like the model's IDs (`id_type` "int64":
    integers; else strings). `path` is a text file with one ID per line (a first line equal to
    `col` is a header), a CSV with a header holding `col`, or Parquet with that column. InputError
    names the flag (e.g. --users) and the file."""
    if not fs.exists(spark, path):
        raise InputError(f"{flag} {path}: does not exist")
    if path.endswith(".parquet") or detect_format(path) == "parquet":
        df = spark.read.parquet(path)
        if col not in df.columns:
            raise InputError(f"{flag} {path}: no column {col!r}; columns are {df.columns}")
        ids = df.select(F.col(col).cast("string").alias(out))
    else:
        lines = spark.read.text(path).select(F.trim(F.col("value")).alias("line"))
        first = lines.first()
        header = first is not None and "," in first["line"]
        if header:
            names = [c.strip() for c in first["line"].split(",")]
            if col not in names:
                raise InputError(f"{flag} {path}: header has no column {col!r}; columns are {names}")
            df = spark.read.csv(path, header=True)
            ids = df.select(F.trim(F.col(col)).alias(out))
        else:
            ids = lines.where(F.col("line") != col).select(F.col("line").alias(out))
    ids = ids.where(F.col(out).isNotNull() & (F.col(out) != ""))
    if id_type == "int64":
        bad = ids.where(F.col(out).try_cast("long").isNull()).limit(3).collect()
        if bad:
            raise InputError(
                f"{flag} {path}: the model's IDs are integers, got " + ", ".join(repr(r[out]) for r in bad)
            )
        ids = ids.select(F.col(out).cast("long").alias(out))
    return ids


def feature_table(spark: SparkSession, path: str, flag: str) -> pa.Table:
    """A feature table (CSV with a header, types inferred, or Parquet) on the driver: catalogs of
    users or items are small. InputError naming `flag` when it is missing or unreadable."""
    if not fs.exists(spark, path):
        raise InputError(f"{flag} {path}: does not exist")
    try:
        parquet = (
            path.rstrip("/").endswith(".parquet")
            or fs.is_dir(spark, path)
            and any(n.endswith(".parquet") for n in fs.list_names(spark, path))
        )
        reader = spark.read if parquet else spark.read.option("header", True).option("inferSchema", True)
        table = (reader.parquet(path) if parquet else reader.csv(path)).toArrow()
    except Exception as exc:  # noqa: BLE001 - Spark's reader errors, classic or Connect
        raise InputError(
            f"{flag} {path}: cannot read it as CSV with a header or Parquet ({str(exc).splitlines()[0]})"
        ) from None
    if table.num_columns < 2:
        raise InputError(f"{flag} {path}: expected an ID column and feature columns, found {table.column_names}")
    return table
