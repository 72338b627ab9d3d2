"""File-system operations through Hadoop's FileSystem API, so local paths, HDFS and object stores
behave alike (the same API Spark itself writes with). Every function takes the active SparkSession; on
a Spark Connect session, which has no JVM in this process, the same operations run in a task on the
cluster (core.fs_tasks).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import time
import uuid
from functools import wraps
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

from mf_spark.core import fs_tasks
from mf_spark.core.session import is_connect


def _anywhere(fn):
    """`fn` on a classic session; on a Spark Connect session, fs_tasks' operation of the same name."""

    paths = 2 if fn.__name__ == "rename" else 1

    @wraps(fn)
    def routed(spark, *args):
        if is_connect(spark):
            args = (*(server_path(spark, p) for p in args[:paths]), *args[paths:])
            return fs_tasks.run(spark, fn.__name__, *args)
        return fn(spark, *args)

    return routed


_SERVER_DIRS: dict[str, str] = {}


def server_path(spark: SparkSession, path: str) -> str:
    """`path` as Spark's own file system calls read it: a relative local path is relative to the
    driver's working directory. The same in this process on a classic session; for a Spark Connect
    client, whose tasks run elsewhere, it is joined here to the server's (Java's user.dir; this
    process's when the server refuses SQL's reflect)."""
    if not is_connect(spark) or urlparse(path).scheme or os.path.isabs(path):
        return path
    key = spark.session_id
    if key not in _SERVER_DIRS:
        try:
            _SERVER_DIRS[key] = spark.sql("SELECT reflect('java.lang.System', 'getProperty', 'user.dir')").first()[0]
        except Exception:  # noqa: BLE001 - reflect may be disabled: the client's directory is the next guess
            _SERVER_DIRS[key] = os.getcwd()
    return os.path.normpath(os.path.join(_SERVER_DIRS[key], path))


def _fs_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), p


@_anywhere
def qualify(spark: SparkSession, path: str) -> str:
    """Absolute, scheme-qualified form of `path` (file:/..., hdfs://...)."""
    fs, p = _fs_path(spark, path)
    return str(fs.makeQualified(p).toString())


@_anywhere
def exists(spark: SparkSession, path: str) -> bool:
    fs, p = _fs_path(spark, path)
    return bool(fs.exists(p))


@_anywhere
def is_dir(spark: SparkSession, path: str) -> bool:
    fs, p = _fs_path(spark, path)
    return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())


@_anywhere
def delete(spark: SparkSession, path: str) -> None:
    fs, p = _fs_path(spark, path)
    if fs.exists(p):
        fs.delete(p, True)


@_anywhere
def mkdirs(spark: SparkSession, path: str) -> None:
    fs, p = _fs_path(spark, path)
    fs.mkdirs(p)


@_anywhere
def rename(spark: SparkSession, src: str, dst: str) -> bool:
    """Move src to dst (dst must not exist); True on success. Atomic on HDFS and local disks."""
    fs, s = _fs_path(spark, src)
    _, d = _fs_path(spark, dst)
    return bool(fs.rename(s, d))


@_anywhere
def list_names(spark: SparkSession, path: str) -> list[str]:
    fs, p = _fs_path(spark, path)
    if not fs.exists(p):
        return []
    return sorted(str(st.getPath().getName()) for st in fs.listStatus(p))


@_anywhere
def data_files(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """(path, bytes, modification time in ms) of every file Spark would read under `path` (a file
    or a folder, recursively; names starting with "." or "_" are skipped, as Spark skips them)."""
    fs, p = _fs_path(spark, path)
    out = []
    it = fs.listFiles(p, True)
    while it.hasNext():
        st = it.next()
        rel = str(st.getPath().toUri().getPath())[len(str(p.toUri().getPath())) :]
        if any(part.startswith((".", "_")) and "=" not in part for part in rel.split("/") if part):
            continue
        out.append((str(st.getPath().toString()), int(st.getLen()), int(st.getModificationTime())))
    return sorted(out)


def sibling(output: str, tag: str) -> str:
    """`.<name>_<tag>` beside `output`: how a publish names its lease (run), its staging folder and
    the previous output it moves aside (old-<token>) while it swaps the new one in."""
    return posixpath.join(posixpath.dirname(output), f".{posixpath.basename(output)}_{tag}")


def set_aside(spark: SparkSession, output: str) -> str | None:
    """The previous complete version of `output` (with _SUCCESS) that a publish moved aside, when
    `output` itself is missing: for the moment between the swap's two renames (or after a run killed
    there, until the next run restores it). None otherwise."""
    output = output.rstrip("/")
    if exists(spark, output):
        return None
    prefix = posixpath.basename(sibling(output, "old-"))
    for name in list_names(spark, posixpath.dirname(output) or "."):
        folder = posixpath.join(posixpath.dirname(output), name)
        if name.startswith(prefix) and exists(spark, posixpath.join(folder, "_SUCCESS")):
            return folder
    return None


def _private_copy(local: str, text: str) -> str:
    """Write `text` to a new uniquely named file beside `local` (to be linked or renamed into place)."""
    os.makedirs(os.path.dirname(local), exist_ok=True)
    private = f"{local}.{uuid.uuid4().hex}.tmp"
    with open(private, "w", encoding="utf-8") as fh:
        fh.write(text)
    return private


@_anywhere
def create_new(spark: SparkSession, path: str, text: str = "") -> bool:
    """Create `path` holding `text` only if nothing is there; False when it already exists. Serves as
    a lock: of several callers, exactly one gets True, and the file never appears without its text.

    Hadoop's local file system checks for the file and then creates it, which two processes can both
    pass; so local paths are written to a private file and hard-linked into place (link(2) fails when
    the name exists). On HDFS, create without overwrite is decided by the NameNode.
    """
    local = _local_path(spark, path)
    if local is not None:
        private = _private_copy(local, text)
        try:
            os.link(private, local)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(private)
    fs, p = _fs_path(spark, path)
    try:
        out = fs.create(p, False)
    except Exception:
        if fs.exists(p):
            return False
        raise
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    return True


@_anywhere
def age_seconds(spark: SparkSession, path: str) -> float | None:
    """Seconds since `path` was last modified, or None when it does not exist."""
    fs, p = _fs_path(spark, path)
    if not fs.exists(p):
        return None
    return time.time() - fs.getFileStatus(p).getModificationTime() / 1000.0


@_anywhere
def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Create or replace a small text file (no .crc side file on local disks). On local disks the
    replacement is atomic, so a reader sees the old text or the new, never a truncated file."""
    local = _local_path(spark, path)
    if local is not None:
        private = _private_copy(local, text)
        os.replace(private, local)
        return
    fs, p = _fs_path(spark, path)
    fs.setWriteChecksum(False)
    out = fs.create(p, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


_CHUNK = 8 << 20  # bytes per py4j call when writing through Hadoop


def write_bytes(spark: SparkSession, path: str, data) -> None:
    """Create or replace a file with `data` (bytes or a pyarrow Buffer), parent folders included.

    Local paths are written by Python directly; others go through the Hadoop FileSystem in chunks
    (py4j copies every byte, so this suits files of tens of MB, such as a checkpoint's factors)."""
    view = memoryview(data)
    if is_connect(spark):
        fs_tasks.run(spark, "write_bytes", server_path(spark, path), data=view)
        return
    local = _local_path(spark, path)
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as fh:
            fh.write(view)
        return
    fs, p = _fs_path(spark, path)
    out = fs.create(p, True)
    try:
        for at in range(0, len(view), _CHUNK):
            out.write(bytearray(view[at : at + _CHUNK]))
    finally:
        out.close()


def strict_json(obj):
    """`obj` with every NaN or infinite float replaced by None (JSON has no such numbers: a reader
    that follows the standard rejects a file holding them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(spark: SparkSession, path: str, obj, indent: int = 2) -> None:
    """Write `obj` as strict JSON (NaN and infinities as null)."""
    write_text(spark, path, json.dumps(strict_json(obj), indent=indent, allow_nan=False))


def write_parquet(spark: SparkSession, folder: str, data) -> None:
    """Write `data` (a DataFrame, or a pyarrow Table the driver holds) as the Parquet folder `folder`.

    A driver table bound for the local file system is written by pyarrow as one part file (no Spark
    job: in a fresh application the first SQL write costs seconds of planning and class loading);
    Spark writes everything else, with its output committers. Either way Spark reads the folder back
    with the same schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(data, pa.Table):
        local = _local_path(spark, folder)
        if local is not None:
            os.makedirs(local, exist_ok=True)
            pq.write_table(data, os.path.join(local, "part-00000.parquet"))
            open(os.path.join(local, "_SUCCESS"), "wb").close()
            return
        data = spark.createDataFrame(data)
    data.write.parquet(folder)


def read_parquet(spark: SparkSession, folder: str):
    """The Parquet folder `folder` as a pyarrow Table on the driver. Local folders are read by
    pyarrow (no Spark job, as write_parquet writes them; files whose names start with "_" or "." are
    not data); others by Spark."""
    import pyarrow.parquet as pq

    local = _local_path(spark, folder)
    if local is not None:
        if not os.path.isdir(local):
            raise FileNotFoundError(f"{folder} is not a folder")
        return pq.read_table(local)
    return spark.read.parquet(folder).toArrow()


def _local_path(spark: SparkSession, path: str) -> str | None:
    """The OS path of a path on the local file system (file: or no scheme), else None (always None for
    a Spark Connect client: the cluster's disks are not its own)."""
    if is_connect(spark):
        return None
    qualified = urlparse(qualify(spark, path))
    return unquote(qualified.path) if qualified.scheme == "file" else None


@_anywhere
def checksum(spark: SparkSession, path: str) -> str:
    """SHA-256 of a file's bytes, hex: local files hashed here, others streamed through Hadoop into
    commons-codec's digest in the JVM (no byte crosses py4j)."""
    local = _local_path(spark, path)
    if local is not None:
        return fs_tasks.sha256_of(local)
    fs, p = _fs_path(spark, path)
    stream = fs.open(p)
    try:
        return str(spark.sparkContext._jvm.org.apache.commons.codec.digest.DigestUtils.sha256Hex(stream))
    finally:
        stream.close()


@_anywhere
def read_text(spark: SparkSession, path: str) -> str:
    fs, p = _fs_path(spark, path)
    if not fs.exists(p):
        raise FileNotFoundError(f"{path} does not exist")
    stream = fs.open(p)
    try:
        jvm = spark.sparkContext._jvm
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data).decode("utf-8")
