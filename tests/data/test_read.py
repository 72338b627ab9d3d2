"""Readers, format detection, column selection and the errors that name what went wrong."""

from __future__ import annotations

import datetime as dt
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from mf_spark.core.config import DataConfig
from mf_spark.core.errors import InputError
from mf_spark.data import read

RAW = "user string, item string, rating string, timestamp string"
from conftest import frame  # noqa: E402


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


def data_of(df):
    """The four data columns, without _source/_row."""
    return df.select("user", "item", "rating", "timestamp")


def expect(spark, rows, schema=RAW):
    return frame(spark, rows, schema)


@pytest.mark.parametrize(
    "name, text, fmt",
    [
        ("r.csv", "a;b;c\n", "csv"),  # the extension wins over the content
        ("r.tsv", "1,2,3\n", "tsv"),
        ("r.csv.gz", None, "csv"),
        ("r.dat", "1::2::5::9\n", "movielens"),
        ("r.txt", "1::2::5\n", "movielens"),
        ("u.data", "1\t2\t5\n", "tsv"),
        ("r.txt", "1 2  5\n", "tsv"),
        ("ratings", "u1,i1,5\n", "csv"),
        ("r.txt", '"u1";"i1";"5"\n', "csv"),
        ("r.txt", "u1|i1|5\n", "csv"),
        ("r.jsonl", "1,2,3\n", "json"),
        ("events", '{"user": 1, "item": 2}\n', "json"),
    ],
)
def test_detect_format_by_name_then_first_line(tmp_path, name, text, fmt):
    path = tmp_path / name
    if text is None:
        import gzip

        with gzip.open(path, "wt") as fh:
            fh.write("user,item,rating\n1,2,3\n")
    else:
        path.write_text(text)
    assert read.detect_format(str(path)) == fmt


def test_detect_format_parquet_file_folder_and_magic(tmp_path):
    table = pa.table({"user": [1, 2], "item": [3, 4], "rating": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "r.parquet")
    (tmp_path / "dir").mkdir()
    pq.write_table(table, tmp_path / "dir" / "part-0")  # no extension: PAR1 magic
    (tmp_path / "dir" / "_SUCCESS").write_text("")
    assert read.detect_format(str(tmp_path / "r.parquet")) == "parquet"
    assert read.detect_format(str(tmp_path / "dir")) == "parquet"


def test_detect_format_folder_of_text_parts(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    write(folder, "part-00000", "1::2::3\n")
    write(folder, ".part-00000.crc", "x")
    assert read.detect_format(str(folder)) == "movielens"


def test_detect_format_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="nope.csv does not exist"):
        read.detect_format(missing)
    empty = write(tmp_path, "empty.txt", "")
    with pytest.raises(InputError, match="empty.txt is empty"):
        read.detect_format(empty)
    blank = write(tmp_path, "blank.txt", "\n  \n")
    with pytest.raises(InputError, match="blank.txt is empty"):
        read.detect_format(blank)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="nothing is empty"):
        read.detect_format(str(tmp_path / "nothing"))


def test_csv_with_header_auto_columns(spark, tmp_path):
    path = write(tmp_path, "ratings.csv", "movieId,extra,userId,rating,timestamp\n10,x,1,4.5,100\n20,y,2,abc,\n")
    df = read.ratings(spark, path, "auto", DataConfig())
    assert df.columns == ["user", "item", "rating", "timestamp", "_source", "_row", "_malformed"]
    want = expect(spark, [("1", "10", "4.5", "100"), ("2", "20", "abc", None)])
    assert_df_equality(data_of(df), want, ignore_nullable=True)
    meta = df.select("_source", "_row").collect()
    assert all(r._source.endswith("ratings.csv") for r in meta)
    assert meta[0]._row < meta[1]._row


def test_csv_columns_from_config_names_and_positions(spark, tmp_path):
    path = write(tmp_path, "r.csv", "Who,What,Stars,When\nu1,i1,3,7\n")
    by_name = DataConfig(user_col="who", item_col="What", rating_col="Stars", timestamp_col="When")
    by_pos = DataConfig(user_col="1", item_col="0", rating_col="2")
    assert_df_equality(
        data_of(read.ratings(spark, path, "csv", by_name)),
        expect(spark, [("u1", "i1", "3", "7")]),
        ignore_nullable=True,
    )
    assert_df_equality(
        data_of(read.ratings(spark, path, "csv", by_pos)),
        expect(spark, [("i1", "u1", "3", None)]),
        ignore_nullable=True,
    )


def test_tsv_without_header_positions_and_short_rows(spark, tmp_path):
    path = write(tmp_path, "r.tsv", "1\t10\t4\t99\n2\t20\n3\t\t5\t98\n")
    df = read.ratings(spark, path, "auto", DataConfig())
    want = [("1", "10", "4", "99"), ("2", "20", None, None), ("3", "", "5", "98")]
    assert_df_equality(data_of(df), expect(spark, want), ignore_nullable=True)
    swapped = read.ratings(spark, path, "tsv", DataConfig(user_col="1", item_col="0"))
    assert swapped.select("user").first().user == "10"


def test_tsv_with_header_line(spark, tmp_path):
    path = write(tmp_path, "r.tsv", "user_id\titem_id\tscore\n1\t10\t4\n")
    df = read.ratings(spark, path, "tsv", DataConfig())
    assert_df_equality(data_of(df), expect(spark, [("1", "10", "4", None)]), ignore_nullable=True)


def test_whitespace_separated(spark, tmp_path):
    path = write(tmp_path, "r.txt", "\ufeff  1   10 4\n\n2 20\t5  \n")  # with a byte order mark
    df = read.ratings(spark, path, "auto", DataConfig())
    assert_df_equality(
        data_of(df), expect(spark, [("1", "10", "4", None), ("2", "20", "5", None)]), ignore_nullable=True
    )


def test_movielens_double_colon(spark, tmp_path):
    path = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661\n")
    df = read.ratings(spark, path, "auto", DataConfig())
    want = [("1", "1193", "5", "978300760"), ("1", "661", None, None)]
    assert_df_equality(data_of(df), expect(spark, want), ignore_nullable=True)


def test_folder_of_csv_files_with_headers(spark, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder, "a.csv", "user,item,rating\n1,2,3\n")
    write(folder, "b.csv", "user,item,rating\n4,5,6\n")
    df = read.ratings(spark, str(folder), "auto", DataConfig())
    rows = sorted((r.user, os.path.basename(r._source)) for r in df.collect())
    assert rows == [("1", "a.csv"), ("4", "b.csv")]


def test_parquet_keeps_native_types_and_converts_timestamps(spark, tmp_path):
    when = [dt.datetime(2020, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2)]
    table = pa.table(
        {
            "user_id": pa.array([1, 3_000_000_000], pa.int64()),
            "item": ["a", "b"],
            "rating": pa.array([4.0, 1.5]),
            "ts": pa.array(when, pa.timestamp("us", "UTC")),
        }
    )
    path = str(tmp_path / "r.parquet")
    pq.write_table(table, path)
    df = read.ratings(spark, path, "auto", DataConfig())
    want = expect(
        spark,
        [(1, "a", 4.0, 1577836800), (3_000_000_000, "b", 1.5, 1577923200)],
        "user long, item string, rating double, timestamp long",
    )
    assert_df_equality(data_of(df), want, ignore_nullable=True)


def test_whole_ids_of_a_float_column_are_integers_as_mllib_reads_them(spark, tmp_path):
    """pandas writes integer IDs as doubles where one is missing: 7.0 is ID 7, as in MLlib; a
    fractional one stays its text; JSON's inferred doubles alike."""
    table = pa.table({"user": pa.array([7.0, None, 2.5]), "item": pa.array([1, 2, 3]), "rating": [4.0, 3.0, 5.0]})
    path = str(tmp_path / "r.parquet")
    pq.write_table(table, path)
    got = [(r.user, r.item) for r in data_of(read.ratings(spark, path, "auto", DataConfig())).collect()]
    assert got == [("7", 1), (None, 2), ("2.5", 3)]
    lines = '{"user": 7.0, "item": 1, "rating": 4}\n{"user": 3, "item": 2, "rating": 3}\n'
    got = [
        r.user for r in data_of(read.ratings(spark, write(tmp_path, "r.json", lines), "auto", DataConfig())).collect()
    ]
    assert got == ["7", "3"]


def test_parquet_string_ids_without_timestamp(spark, tmp_path):
    table = pa.table({"customer_id": ["c1"], "product_id": ["p9"], "count": pa.array([3], pa.int32())})
    path = str(tmp_path / "r.parquet")
    pq.write_table(table, path)
    df = read.ratings(spark, path, "parquet", DataConfig())
    want = expect(spark, [("c1", "p9", 3, None)], "user string, item string, rating int, timestamp string")
    assert_df_equality(data_of(df), want, ignore_nullable=True)


def test_bundled_sample(spark):
    path = read.sample_path()
    assert path.endswith(os.path.join("als", "sample_movielens_ratings.txt"))
    assert os.path.isfile(path)
    df = read.ratings(spark, path, "auto", DataConfig())
    assert df.count() == 1501
    first = df.orderBy("_row").first()
    assert (first.user, first.item, first.rating, first.timestamp) == ("0", "2", "3", "1424380312")


def test_missing_column_names_file_key_and_columns(spark, tmp_path):
    path = write(tmp_path, "r.csv", "user,item,stars_given\n1,2,3\n")
    with pytest.raises(InputError) as err:
        read.ratings(spark, path, "auto", DataConfig())
    msg = str(err.value)
    assert "r.csv" in msg and "data.rating_col" in msg and "'stars_given'" in msg
    with pytest.raises(InputError, match=r"column 'score' \(data.rating_col\) not found.*'user'"):
        read.ratings(spark, path, "auto", DataConfig(rating_col="score"))


def test_position_beyond_fields_and_name_without_header(spark, tmp_path):
    path = write(tmp_path, "r.tsv", "1\t2\t3\n")
    with pytest.raises(InputError, match=r"r.tsv: data.timestamp_col = '5' is beyond the 3 fields"):
        read.ratings(spark, path, "auto", DataConfig(timestamp_col="5"))
    with pytest.raises(InputError, match="data.user_col = 'userId' names a column, but this file"):
        read.ratings(spark, path, "auto", DataConfig(user_col="userId"))


def test_empty_and_header_only(spark, tmp_path):
    with pytest.raises(InputError, match="e.csv is empty: no data rows"):
        read.ratings(spark, write(tmp_path, "e.csv", ""), "auto", DataConfig())
    with pytest.raises(InputError, match="h.csv: header only, no data rows"):
        read.ratings(spark, write(tmp_path, "h.csv", "user,item,rating\n\n"), "auto", DataConfig())
    with pytest.raises(InputError, match="no data rows"):
        read.ratings(spark, write(tmp_path, "h.tsv", "user\titem\trating\n"), "tsv", DataConfig())
    empty = pa.table(
        {"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64()), "rating": pa.array([], pa.float64())}
    )
    pq.write_table(empty, tmp_path / "e.parquet")
    with pytest.raises(InputError, match="no data rows"):
        read.ratings(spark, str(tmp_path / "e.parquet"), "auto", DataConfig())


def test_wrong_delimiter_names_columns_and_suggests_format(spark, tmp_path):
    path = write(tmp_path, "r.csv", "user::item::rating\n1::2::3\n")
    with pytest.raises(InputError) as err:
        read.ratings(spark, path, "auto", DataConfig())
    msg = str(err.value)
    assert "r.csv" in msg and "'user::item::rating'" in msg and "--format" in msg and "'::'" in msg
    with pytest.raises(InputError, match=r"1 column.*','.*--format"):
        read.ratings(spark, write(tmp_path, "c.txt", "1,2,3\n"), "tsv", DataConfig())


@pytest.mark.parametrize("sep", [";", "|"])
def test_csv_split_by_semicolons_or_bars_with_quotes(spark, tmp_path, sep):
    """As Book-Crossing's ratings are written: every field quoted, `;` between them, a column named
    Book-Rating (a common name at its end), a separator inside a quoted field."""
    text = sep.join(['"User-ID"', '"ISBN"', '"Book-Rating"']) + "\n"
    text += sep.join(['"276725"', f'"0345{sep}41X"', '"0"']) + "\n" + sep.join(["276726", "155061224", "5"]) + "\n"
    df = read.ratings(spark, write(tmp_path, "BX-Book-Ratings.csv", text), "auto", DataConfig())
    want = [("276725", f"0345{sep}41X", "0", None), ("276726", "155061224", "5", None)]
    assert_df_equality(data_of(df), expect(spark, want), ignore_nullable=True)


def test_json_lines_keep_native_types_and_flag_lines_that_are_not_objects(spark, tmp_path):
    """Yelp's reviews as written: one object per line, nested fields beside the used ones, dates as
    text (validation parses them); a line that is not an object is kept, flagged, for validation
    to reject with its reason. A chosen column holding a struct is refused by name."""
    lines = [
        '{"user_id": "u1", "business_id": "b1", "stars": 4.0, "date": "2016-03-09 00:00:00", "attributes": {"a": 1}}',
        "not json",
        '{"user_id": "u2", "business_id": "b2", "stars": 2, "date": "2017-01-02 10:00:00"}',
        "[1, 2]",
    ]
    path = write(tmp_path, "review.json", "\n".join(lines) + "\n")
    df = read.ratings(spark, path, "auto", DataConfig())
    got = [(r.user, r.item, r.rating, r.timestamp, r._malformed) for r in df.orderBy("_row").collect()]
    flagged = (None, None, None, None, read.NOT_A_JSON_OBJECT)
    assert got == [
        ("u1", "b1", 4.0, "2016-03-09 00:00:00", None),
        flagged,
        ("u2", "b2", 2.0, "2017-01-02 10:00:00", None),
        flagged,
    ]
    with pytest.raises(InputError, match=r"'attributes' \(item_col\) holds struct<a:bigint>"):
        read.ratings(spark, path, "json", DataConfig(item_col="attributes"))
    with pytest.raises(InputError, match="no object with fields"):
        read.ratings(spark, write(tmp_path, "e.jsonl", "1\n[2]\n"), "auto", DataConfig())
    pretty = '[\n  {"user_id": "u1", "business_id": "b1", "stars": 4.5},\n  {"user_id": "u2", "business_id": 2}\n]\n'
    df = read.ratings(spark, write(tmp_path, "array.json", pretty), "auto", DataConfig())
    assert [tuple(r) for r in data_of(df).collect()] == [("u1", "b1", 4.5, None), ("u2", "2", None, None)]
    with pytest.raises(InputError, match="not one array of objects that parses"):
        read.ratings(spark, write(tmp_path, "broken.json", pretty[:-3]), "auto", DataConfig())


def test_a_column_ending_in_a_common_name_serves_unless_two_do(spark, tmp_path):
    path = write(tmp_path, "r.csv", "reviewer,song_item,user_rating\nu1,s1,3\n")
    df = read.ratings(spark, path, "csv", DataConfig(user_col="reviewer"))
    assert [tuple(r) for r in data_of(df).collect()] == [("u1", "s1", "3", None)]
    path = write(tmp_path, "two.csv", "user,item,book_rating,avg_rating\nu1,s1,3,4\n")
    with pytest.raises(InputError, match=r"'book_rating', 'avg_rating' could each be the rating column"):
        read.ratings(spark, path, "csv", DataConfig())


def test_without_a_rating_column_implicit_rows_are_events_of_strength_one(spark, tmp_path, caplog):
    headerless = write(tmp_path, "plays.tsv", "u1\ta\nu1\ta\n")
    df = read.ratings(spark, headerless, "auto", DataConfig(), events=True)
    assert [tuple(r) for r in data_of(df).collect()] == [("u1", "a", "1", None)] * 2
    with pytest.raises(InputError, match="header only"):  # explicit: a row without a number is a header
        read.ratings(spark, headerless, "auto", DataConfig())
    plays = "".join(f"u{u}\t2009-05-04T23:08:57Z\tf1b1cf71-bd35\tDeep Dish\n" for u in (1, 2))  # Last.fm 1K's rows
    lastfm = write(tmp_path, "lastfm.tsv", plays)
    cfg = DataConfig(rating_col=read.NO_RATING, item_col="2", timestamp_col="1")
    got = read.ratings(spark, lastfm, "auto", cfg, events=True)
    want = [(f"u{u}", "f1b1cf71-bd35", "1", "2009-05-04T23:08:57Z") for u in (1, 2)]
    assert [tuple(r) for r in data_of(got).collect()] == want
    with pytest.raises(InputError, match="for implicit data only"):
        read.ratings(spark, lastfm, "auto", cfg)
    unknown = write(tmp_path, "clicks.csv", "customer_key,sku\nc1,s1\nc2,s2\n")  # names no reader knows
    cfg = DataConfig(user_col="customer_key", item_col="sku")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mf_spark"):
        got = read.ratings(spark, unknown, "auto", cfg, events=True)
    assert [tuple(r) for r in data_of(got).collect()] == [("c1", "s1", "1", None), ("c2", "s2", "1", None)]
    assert sum("no rating column" in r.getMessage() for r in caplog.records) == 1  # said once, header or not
    named = write(tmp_path, "log.jsonl", '{"user_id": "u1", "item_id": 7, "ts": 5}\n')
    df = read.ratings(spark, named, "auto", DataConfig(), events=True)
    assert [tuple(r) for r in data_of(df).collect()] == [("u1", 7, "1", 5)]


def test_unknown_format_and_parquet_read_as_text(spark, tmp_path):
    pq.write_table(pa.table({"user": [1], "item": [2], "rating": [3.0]}), tmp_path / "r.parquet")
    with pytest.raises(InputError, match="unknown input format 'xlsx'"):
        read.ratings(spark, str(tmp_path / "r.parquet"), "xlsx", DataConfig())
    with pytest.raises(InputError, match="is Parquet, but --format csv"):
        read.ratings(spark, str(tmp_path / "r.parquet"), "csv", DataConfig())
