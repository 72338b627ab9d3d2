"""fs.write_bytes: local files written by Python, other file systems through Hadoop in chunks."""
from __future__ import annotations

import pyarrow as pa
import pytest

from mf_spark import fs


@pytest.mark.parametrize("through_hadoop", [False, True])
def test_write_bytes_creates_parents_and_replaces(spark, tmp_path, monkeypatch, through_hadoop):
    if through_hadoop:           # what an hdfs:// or s3a:// path takes: the Hadoop stream, 5 bytes a call
        monkeypatch.setattr(fs, "_local_path", lambda spark, path: None)
        monkeypatch.setattr(fs, "_CHUNK", 5)
    path = tmp_path / "a" / "b" / "part.bin"
    data = bytes(range(256)) * 3
    fs.write_bytes(spark, str(path), data)
    assert path.read_bytes() == data
    fs.write_bytes(spark, "file:" + str(path), pa.py_buffer(b"short"))   # a pyarrow Buffer, replacing
    assert path.read_bytes() == b"short"
