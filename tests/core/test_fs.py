"""fs.write_bytes: local files written by Python, other file systems through Hadoop in chunks;
fs.write_parquet: driver tables written by pyarrow locally, by Spark otherwise, read back alike."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mf_spark.core import fs


@pytest.mark.parametrize("through_hadoop", [False, True])
def test_write_bytes_creates_parents_and_replaces(spark, tmp_path, monkeypatch, through_hadoop):
    if through_hadoop:  # what an hdfs:// or s3a:// path takes: the Hadoop stream, 5 bytes a call
        monkeypatch.setattr(fs, "_local_path", lambda spark, path: None)
        monkeypatch.setattr(fs, "_CHUNK", 5)
    path = tmp_path / "a" / "b" / "part.bin"
    data = bytes(range(256)) * 3
    fs.write_bytes(spark, str(path), data)
    assert path.read_bytes() == data
    fs.write_bytes(spark, "file:" + str(path), pa.py_buffer(b"short"))  # a pyarrow Buffer, replacing
    assert path.read_bytes() == b"short"


@pytest.mark.parametrize("through_spark", [False, True])
def test_write_parquet_of_a_driver_table_reads_back_as_spark_wrote_it(spark, tmp_path, monkeypatch, through_spark):
    import numpy as np

    if through_spark:
        monkeypatch.setattr(fs, "_local_path", lambda spark, path: None)
    table = pa.table(
        {
            "id": pa.array(["a", "b"]),
            "bias": pa.array([0.5, -1.0], pa.float32()),
            "factors": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())),
        }
    )
    fs.write_parquet(spark, str(tmp_path / "t"), table)
    back = spark.read.parquet(str(tmp_path / "t"))
    assert back.schema.simpleString() == "struct<id:string,bias:float,factors:array<float>>"
    assert sorted(r["id"] for r in back.collect()) == ["a", "b"]
    assert np.allclose(back.orderBy("id").toArrow().column("bias").to_numpy(), [0.5, -1.0])


@pytest.mark.parametrize("route", ["hadoop", "task"])
def test_every_operation_answers_alike_through_hadoop_and_through_a_task(spark, tmp_path, monkeypatch, route):
    """ "task" is the Spark Connect route (fs_tasks: pyarrow.fs in a one-task job), taken here on the
    classic session: the same answers, the same errors."""
    from mf_spark.core import session

    if route == "task":
        monkeypatch.setattr(fs, "is_connect", lambda spark: True)
        monkeypatch.setattr(session, "_CHUNK", 7)  # a file's contents travel in several chunks
    root = str(tmp_path / "root")
    assert fs.qualify(spark, root) == "file:" + root
    assert not fs.exists(spark, root) and fs.list_names(spark, root) == []
    fs.mkdirs(spark, root + "/sub")
    assert fs.is_dir(spark, root) and not fs.is_dir(spark, root + "/none")
    fs.write_text(spark, root + "/a.txt", "héllo")
    assert fs.read_text(spark, root + "/a.txt") == "héllo" and 0 <= fs.age_seconds(spark, root + "/a.txt") < 60
    assert fs.age_seconds(spark, root + "/none") is None
    assert fs.create_new(spark, root + "/lease", "me") and not fs.create_new(spark, root + "/lease", "you")
    assert fs.read_text(spark, root + "/lease") == "me"
    assert fs.rename(spark, root + "/a.txt", root + "/b.txt") and not fs.rename(spark, root + "/b.txt", root + "/lease")
    data = bytes(range(256)) * 3
    fs.write_bytes(spark, root + "/sub/part.bin", data)
    assert (tmp_path / "root" / "sub" / "part.bin").read_bytes() == data
    fs.write_text(spark, root + "/_SUCCESS", "")
    fs.write_text(spark, root + "/.hidden", "x")
    assert fs.list_names(spark, root) == [".hidden", "_SUCCESS", "b.txt", "lease", "sub"]
    files = fs.data_files(spark, root)
    assert [(p.rsplit("/", 1)[1], n) for p, n, _ in files] == [("b.txt", 6), ("lease", 2), ("part.bin", 768)]
    assert all(p.startswith("file:/") and t > 0 for p, _, t in files)
    with pytest.raises(FileNotFoundError):
        fs.read_text(spark, root + "/none")
    fs.delete(spark, root)
    assert not fs.exists(spark, root)
