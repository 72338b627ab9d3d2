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
